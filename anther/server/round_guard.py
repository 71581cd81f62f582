"""Guard a round's aggregation: screen the training replies, aggregate only with enough of them.

One bad update can destroy the global adapters: a NaN or an Inf spreads to every
parameter it is averaged into, an array of the wrong shape makes aggregation raise, and a
diverged (or malicious) client with a huge update drags the average wherever it likes. So
the round loop hands the strategy only replies that pass these checks, in this order:

1. the reply is not an error (a ClientApp that raised) and comes from a node this round
   asked;
2. it carries a MetricRecord, with a positive, finite aggregation weight
   (``num-examples``) and only finite numbers;
3. its adapters (the ArrayRecord the strategy reads, ``arrays``) have exactly the names and
   shapes of the global adapters that node was sent (at its own rank, for ``hetero_rank``);
4. every array of every ArrayRecord in it (the adapters, a Fisher...) is finite;
5. its update norm ``||sent - returned||`` is at most ``outlier_factor`` times the median
   update norm of the replies that passed 1-4. A median needs a majority to be honest, so
   this check runs only when at least three replies passed (with two, neither can be told
   from the other), and only when the median is above zero.

Each rejection names the partition id and says why; the round aggregates the rest.
Nodes that were asked but did not reply before the round's timeout are reported as
failed, like those whose reply is an error. :func:`aggregate_guarded` then aggregates
only when at least ``federation.min_replies`` updates passed, and turns a strategy's
refusal (``AggregationError``) into a skipped round: the global adapters stay as they were
and the run goes on, rather than one bad round ending it. The aggregate keeps the global
adapters' dtypes: an array the strategy returns in another (QFedAvg computes in float64) is
cast back, with a warning naming it, so checkpoints and the bytes sent stay as they were.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.common.logger import LOGGER_NAME, log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy

from anther.core import protocol

ARRAYS_KEY, WEIGHT_KEY = protocol.ARRAYS, protocol.NUM_EXAMPLES


@dataclass(frozen=True)
class Problem:
    """One client whose update the round goes on without, and why."""

    partition_id: int | None  # None: a node the round loop does not know
    node_id: int
    reason: str
    status: str | None = None  # a client that declined: "refused" or "budget-exhausted"

    def record(self) -> dict[str, Any]:
        out = {"partition_id": self.partition_id, "node_id": self.node_id, "reason": self.reason}
        return out if self.status is None else {**out, "status": self.status}


@dataclass
class Screened:
    """A round's replies sorted into the accepted ones and the problems."""

    accepted: list[Message] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)  # replied, but the update is unusable
    failed: list[Problem] = field(default_factory=list)  # an error reply, or no reply in time
    declined: list[Problem] = field(default_factory=list)  # said no: its privacy policy or budget (status)


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


# Metrics that may honestly be +inf: the epsilon of DP-SGD without noise (privacy.noise_multiplier=0,
# clipping alone) is unbounded. NaN and -inf are refused for these too.
UNBOUNDED_METRICS = frozenset({protocol.DP_EPSILON})


def _metrics_problem(reply: Message, weight_key: str) -> str | None:
    metrics = reply.content.metric_records
    if len(metrics) != 1:
        return f"carries {len(metrics)} MetricRecords, expected one"
    (record,) = metrics.values()
    for key, value in record.items():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(v) or (key in UNBOUNDED_METRICS and v == math.inf) for v in values):
            return f"metric {key!r} is not finite ({value})"
    weight = record.get(weight_key)
    if not isinstance(weight, int | float) or weight <= 0:
        return f"aggregation weight {weight_key!r} must be a positive number, got {weight}"
    return None


def _arrays_problem(reply: Message, sent: dict[str, np.ndarray] | None, arrays_key: str) -> str | None:
    records = reply.content.array_records
    if arrays_key not in records:
        return f"has no ArrayRecord {arrays_key!r} (has {sorted(records)})"
    got = _numpy(records[arrays_key])
    if sent is not None:
        if set(got) != set(sent):
            missing, extra = sorted(set(sent) - set(got)), sorted(set(got) - set(sent))
            return f"adapter names differ from those sent (missing {missing}, unexpected {extra})"
        for name, value in got.items():
            if value.shape != sent[name].shape:
                return f"{name!r} has shape {tuple(value.shape)}, the node was sent {tuple(sent[name].shape)}"
    for key, record in records.items():
        for name, value in _numpy(record).items():
            if not np.issubdtype(value.dtype, np.number):
                return f"{key}/{name!r} has non-numeric dtype {value.dtype}"
            if not np.isfinite(value).all():
                bad = "NaN" if np.isnan(value).any() else "Inf"
                return f"{key}/{name!r} contains {bad}"
    return None


def _masked_problem(reply: Message) -> str | None:
    """A SecAgg+ collect-stage reply must carry its masked vector (the server cannot see more)."""
    record = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    if record is None or Key.MASKED_PARAMETERS not in record:
        return "sent no SecAgg+ masked vector in a secure-aggregation round"
    return None


def update_norm(returned: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]) -> float:
    """L2 norm of (returned - sent) over all adapter arrays, in float64."""
    total = sum(float(np.sum((np.asarray(v, np.float64) - np.asarray(sent[k], np.float64)) ** 2))
                for k, v in returned.items())
    return math.sqrt(total)


def replies_are_masked(strategy: object) -> bool:
    """Whether ``strategy``, or a strategy it wraps (``.strategy``), receives masked vectors
    rather than adapters (secure aggregation declares ``masked_replies = True``): those cannot
    be screened one by one, only their errors and metrics."""
    while strategy is not None:
        if getattr(strategy, "masked_replies", False):
            return True
        strategy = getattr(strategy, "strategy", None)
    return False


def split_failures(sent: Sequence[Message], replies: Sequence[Message],
                   partition_of: Mapping[int, int]) -> tuple[list[tuple[int, Message]], list[Problem]]:
    """The replies that are not errors, each with the node it answers, and one :class:`Problem` for
    every node asked that sent an error or nothing before the timeout. Error replies the SuperLink
    makes itself (a node that stopped sending heartbeats) come from the SuperLink's own node id:
    the message they answer says which node it was."""
    asked = {m.metadata.message_id: m.metadata.dst_node_id for m in sent if m.metadata.message_id}
    ok: list[tuple[int, Message]] = []
    failed: list[Problem] = []
    answered = set()
    for reply in replies:
        node = asked.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        if reply.has_error() and reply.metadata.reply_to_message_id not in asked:
            continue  # answers nothing this exchange sent: no client of it failed
        answered.add(node)
        if reply.has_error():
            failed.append(Problem(partition_of.get(node), node,
                                  f"client error (code {reply.error.code}): {reply.error.reason}"))
        else:
            ok.append((node, reply))
    for node in dict.fromkeys(m.metadata.dst_node_id for m in sent):
        if node not in answered:
            failed.append(Problem(partition_of.get(node), node, "no reply before the round's timeout"))
    return ok, failed


def screen_replies(sent: Sequence[Message], replies: Sequence[Message], partition_of: Mapping[int, int],
                   outlier_factor: float | None = 10.0, arrays_key: str = ARRAYS_KEY,
                   weight_key: str = WEIGHT_KEY, check_arrays: bool = True) -> Screened:
    """Sort ``replies`` to the ``sent`` training messages into accepted, rejected and failed.
    With ``check_arrays`` False (masked replies) only checks 1 and 2 apply.

    ``partition_of`` maps node id -> partition id (what each node said at discovery), so
    problems are named by partition even when a reply's own metrics are missing or wrong.
    Accepted replies come back sorted by partition id, so aggregation order is deterministic.
    """
    sent_arrays = {m.metadata.dst_node_id: (_numpy(m.content.array_records[arrays_key])
                                            if arrays_key in m.content.array_records else None) for m in sent}

    def problem(node: int, reason: str) -> Problem:
        return Problem(partition_of.get(node), node, reason)

    masked = {m.metadata.dst_node_id for m in sent if RECORD_KEY_CONFIGS in m.content.config_records}
    answers, failed = split_failures(sent, replies, partition_of)
    out = Screened(failed=failed)
    candidates: list[tuple[Message, float | None]] = []
    for node, reply in answers:
        if node not in sent_arrays:
            out.rejected.append(problem(node, "replied though this round did not ask it"))
            continue
        if protocol.DECLINED in reply.content.config_records:  # the client's own policy said no
            said = reply.content.config_records[protocol.DECLINED]
            out.declined.append(Problem(partition_of.get(node), node, str(said.get(protocol.DECLINE_REASON, "")),
                                        str(said.get(protocol.DECLINE_STATUS, protocol.REFUSED))))
            continue
        if node in masked:  # SecAgg+: no adapters to check, only the masked vector (docs/privacy.md)
            reason = _metrics_problem(reply, weight_key) or _masked_problem(reply)
            if reason is None:
                candidates.append((reply, None))
            else:
                out.rejected.append(problem(node, reason))
            continue
        reason = _metrics_problem(reply, weight_key)
        if reason is None and check_arrays:
            reason = _arrays_problem(reply, sent_arrays[node], arrays_key)
        if reason is not None:
            out.rejected.append(problem(node, reason))
            continue
        base = sent_arrays[node] if check_arrays else None
        norm = update_norm(_numpy(reply.content.array_records[arrays_key]), base) if base is not None else None
        candidates.append((reply, norm))
    out.accepted = _drop_outliers(candidates, outlier_factor, out.rejected, problem)
    out.accepted.sort(key=lambda m: (partition_of.get(m.metadata.src_node_id, math.inf), m.metadata.src_node_id))
    out.declined.sort(key=lambda p: (math.inf if p.partition_id is None else p.partition_id, p.node_id))
    return out


def _drop_outliers(candidates: list[tuple[Message, float | None]], factor: float | None,
                   rejected: list[Problem], problem: Callable[[int, str], Problem]) -> list[Message]:
    norms = [n for _, n in candidates if n is not None]
    if factor is None or len(norms) < 3:
        return [m for m, _ in candidates]
    median = float(np.median(norms))
    if median <= 0:
        return [m for m, _ in candidates]
    kept = []
    for message, norm in candidates:
        if norm is not None and norm > factor * median:
            rejected.append(problem(message.metadata.src_node_id,
                                    f"update norm {norm:.4g} is more than {factor:g} x the round's median "
                                    f"{median:.4g}"))
        else:
            kept.append(message)
    return kept


def log_round(server_round: int, sampled: int, screened: Screened, unavailable: Sequence[Problem]) -> None:
    """The round's count of answers, in the same terms as its record, and one warning line per
    client the round goes on without, naming its partition."""
    log(INFO, "anther: round %d: %d of %d sampled clients answered usably, %d rejected, %d failed, "
        "%d declined; %d unavailable", server_round, len(screened.accepted), sampled, len(screened.rejected),
        len(screened.failed), len(screened.declined), len(unavailable))
    for kind, problems in (("rejected the update of ", screened.rejected), ("got nothing from ", screened.failed),
                           ("declined by ", screened.declined), ("", unavailable)):
        for p in problems:
            log(WARNING, "anther: round %d: %spartition %s (node %d): %s", server_round, kind,
                p.partition_id, p.node_id, p.reason)


class WithoutFlowersCount(logging.Filter):
    """Drops Flower's own "Received N results and M failures" line. Its strategies are handed only
    the replies that passed screening, so that line would always say 0 failures while the run's
    records say otherwise; :func:`log_round` gives the count instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != FLOWERS_COUNT


_WITHOUT_FLOWERS_COUNT = WithoutFlowersCount()  # one instance: addFilter keeps a filter once


FLOWERS_COUNT = "%s: Received %s results and %s failures"  # flwr.serverapp.strategy's format string


def hide_flowers_count() -> None:
    """Install :class:`WithoutFlowersCount` on Flower's logger (once, however often called)."""
    logging.getLogger(LOGGER_NAME).addFilter(_WITHOUT_FLOWERS_COUNT)


@dataclass
class Outcome:
    """What a round's aggregation gave."""

    arrays: ArrayRecord | None  # None: the global adapters stay as they were
    metrics: MetricRecord | None
    skipped: str | None = None  # why the round did not aggregate


def keep_dtypes(arrays: ArrayRecord, dtypes: Mapping[str, str], strategy: Strategy) -> ArrayRecord:
    """``arrays`` with every array the global adapters hold in the dtype they had (``dtypes``: name ->
    NumPy dtype string); a change is cast back, with one warning naming the arrays and the strategy."""
    changed = {name: (array.dtype, dtypes[name]) for name, array in arrays.items()
               if name in dtypes and array.dtype != dtypes[name]}
    if not changed:
        return arrays
    name, (got, want) = next(iter(changed.items()))
    log(WARNING, "anther: %s returned %d adapter array(s) as %s instead of %s (first: %s); cast back to the "
        "global adapters' dtype", type(strategy).__name__, len(changed), got, want, name)
    return ArrayRecord({name: Array(array.numpy().astype(dtypes[name])) if name in changed else array
                        for name, array in arrays.items()})


def aggregate_guarded(strategy: Strategy, server_round: int, accepted: list[Message],
                      min_replies: int, dtypes: Mapping[str, str]) -> Outcome:
    """The strategy's aggregate of the ``accepted`` replies (in the global adapters' ``dtypes``), or
    a skipped round (with a warning saying why) when fewer than ``min_replies`` passed or the
    strategy refused."""
    if len(accepted) < min_replies:
        reason = f"only {len(accepted)} usable update(s), federation.min_replies={min_replies}"
    else:
        try:
            arrays, metrics = strategy.aggregate_train(server_round, accepted)
        except (AggregationError, InconsistentMessageReplies) as e:
            reason = f"the strategy could not aggregate: {e}"
        else:
            if arrays is not None:
                return Outcome(keep_dtypes(arrays, dtypes, strategy), metrics)
            reason = "the strategy aggregated nothing"
    log(WARNING, "anther: round %d skipped, global adapters unchanged: %s", server_round, reason)
    return Outcome(None, None, reason)
