"""One federated run: rounds of sample -> train -> aggregate -> evaluate -> checkpoint.

anther drives the rounds itself (rather than ``Strategy.start``) so that it can
sample clients deterministically by partition id, account traffic, print the
per-round table, evaluate on the server's held-out set and checkpoint every round.
Aggregation is entirely the strategy's: any ``flwr.serverapp.strategy.Strategy``. Its
``configure_train`` and ``configure_evaluate`` build the messages (so it decides what each
node receives: the adapters at the node's rank, keys asking for a Fisher...), offered only
the nodes this round sampled; a strategy that implements
:class:`anther.strategies.node_info.NodeAware` is first told every node's QUERY answer.
Replies are screened before aggregation (:mod:`anther.server.round_guard`: bad updates and
failed clients are recorded and left out; too few usable updates skip the round), and each
round's checkpoint holds everything a resumed run needs to continue exactly
(:mod:`anther.server.run_state`, docs/reliability.md).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable
from logging import WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.serverapp import Grid
from omegaconf import DictConfig, OmegaConf

from anther.client.metrics import summarise_clients
from anther.core import protocol
from anther.core.config import clients_per_round, to_yaml
from anther.core.exchange import send_and_receive
from anther.data.partition_report import reported_partitions
from anther.server.checkpoint import latest_checkpoint, save_checkpoint
from anther.server.evaluation import ServerEvaluator
from anther.server.round_guard import (
    Problem,
    aggregate_guarded,
    hide_flowers_count,
    log_round,
    replies_are_masked,
    screen_replies,
    split_failures,
)
from anther.server.run_folder import RunRecorder
from anther.server.run_state import load_strategy_state, restore_rng, rng_state, strategy_state
from anther.strategies.node_info import NodeAware
from anther.strategies.privacy import with_privacy
from anther.strategies.privacy.client_dp import CLIENT_EPSILON_METRIC
from anther.strategies.registry import build_strategy


class OfferedGrid:
    """The grid as a strategy should see it this round: only the sampled nodes."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._node_ids = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _one_node_per_partition(info: dict[int, ConfigRecord]) -> dict[int, int]:
    """Partition id -> node id from the nodes' QUERY answers, sorted by partition id; two nodes
    that claim one partition id are refused, by node id (sites with their own ``data-path`` need
    a partition id of their own too: it seeds and names them)."""
    claims: dict[int, list[int]] = {}
    for node, answer in info.items():
        claims.setdefault(int(answer[protocol.PARTITION_ID]), []).append(node)
    shared = {pid: nodes for pid, nodes in claims.items() if len(nodes) > 1}
    if shared:
        pid, nodes = min(shared.items())
        raise ValueError(f"nodes {', '.join(map(str, sorted(nodes)))} all have partition-id {pid}: give each "
                         "SuperNode its own partition-id in its --node-config (a site with its own data-path "
                         "too)" + (f"; {len(shared) - 1} more partition ids are shared" if len(shared) > 1 else ""))
    return {pid: nodes[0] for pid, nodes in sorted(claims.items())}


def _sum_metric(replies: Iterable[Message], key: str) -> float:
    return float(sum(m.content[protocol.METRICS].get(key, 0) for m in replies))


# anther's own records, not the strategy's: the round config down; timing and privacy notes up; and
# SecAgg+'s protocol messages, which its wrapper counts itself (secagg_bytes_up / _down).
_BOOKKEEPING = frozenset({protocol.CONFIG, protocol.TIMING, protocol.PRIVACY, protocol.DECLINED, RECORD_KEY_CONFIGS})


def _record_bytes(messages: Iterable[Message]) -> int:
    """Bytes of what the strategy and its client half exchange in ``messages``: every ArrayRecord (the
    adapters, a Fisher, a control variate) and every ConfigRecord besides anther's bookkeeping."""
    return sum(record.count_bytes() for m in messages for name, record in m.content.items()
               if name in m.content.array_records or (name in m.content.config_records and name not in _BOOKKEEPING))


def _weighted_metric(replies: list[Message], key: str) -> float | None:
    pairs = [(m.content[protocol.METRICS][key], m.content[protocol.METRICS][protocol.NUM_EXAMPLES])
             for m in replies if key in m.content[protocol.METRICS]]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _client_seconds(replies: list[Message]) -> dict[int, float]:
    """How long each replying client's local training took, by partition id (its ``timing`` record:
    a ConfigRecord, so that no strategy averages it into the round's metrics)."""
    return {int(m.content[protocol.METRICS][protocol.PARTITION_ID]):
            float(m.content.config_records[protocol.TIMING][protocol.TRAIN_SECONDS])
            for m in replies if protocol.TIMING in m.content.config_records}


def _epsilons(replies: list[Message]) -> dict[str, float]:
    """Max and mean over the replying clients of the epsilon each has spent so far (with DP)."""
    eps = [float(m.content[protocol.METRICS][protocol.DP_EPSILON]) for m in replies
           if protocol.DP_EPSILON in m.content[protocol.METRICS]]
    return {"dp_epsilon_max": max(eps), "dp_epsilon_mean": sum(eps) / len(eps)} if eps else {}


def _dp_randomness(replies: list[Message]) -> dict[str, list[str]]:
    """Where the replying clients' DP batches and noise came from (``secret``: the OS's), as they
    said; nothing without sample-level DP."""
    said = {str(m.content.config_records[protocol.PRIVACY][protocol.DP_RANDOMNESS]) for m in replies
            if protocol.PRIVACY in m.content.config_records}
    return {"dp_randomness": sorted(said)} if said else {}


def _client_traffic(sent: list[Message], replies: list[Message]) -> dict[int, dict[str, float]]:
    """Each replying client's bytes this round, by partition id: adapters each way, activations each way."""
    to_node = {m.metadata.dst_node_id: m for m in sent}
    out = {}
    for r in replies:
        metrics = r.content[protocol.METRICS]
        down = to_node.get(r.metadata.src_node_id)
        out[int(metrics[protocol.PARTITION_ID])] = {
            "adapter_bytes_down": _record_bytes([down]) if down is not None else 0,
            "adapter_bytes_up": _record_bytes([r]),
            "activation_bytes_up": float(metrics.get(protocol.ACTIVATION_BYTES_UP, 0)),
            "activation_bytes_down": float(metrics.get(protocol.ACTIVATION_BYTES_DOWN, 0)),
        }
    return out


class FederatedRun:
    """One run; with ``resume``, the continuation of the run in ``cfg.run_dir`` from its last
    complete checkpoint (docs/reliability.md).

    ``cfg`` is what the run uses, the backbone service's address and credentials for this run
    included; ``recorded`` (default ``cfg``) is what its folder keeps as ``config.yaml``, the
    config a resume starts from: without those one-off values, so a resumed run starts a service
    of its own on a free port with fresh credentials.
    """

    def __init__(self, cfg: DictConfig, grid: Grid, data_folder: Path, resume: bool = False,
                 recorded: DictConfig | None = None) -> None:
        self.cfg, self.grid, self.resume, self.data_folder = cfg, grid, resume, Path(data_folder)
        self.resumed_from: list[int] = []  # rounds this run was resumed after, oldest first
        self.strategy = with_privacy(build_strategy(OmegaConf.to_container(cfg.strategy, resolve=True)), cfg)
        self.rng = random.Random(cfg.seed)
        self.evaluator = ServerEvaluator(cfg, data_folder)
        # config.yaml now; the partition table once the clients have said what they hold (_discover)
        self.recorder = RunRecorder(cfg if recorded is None else recorded, None)
        self.recorder.describe_data(self.data_folder)
        self.run_dir = self.recorder.dir
        self.info: dict[int, ConfigRecord] = {}  # node id -> its QUERY answer
        self.not_joined: dict[int, str] = {}  # node id -> why it could not say who it is, when last asked
        self.exhausted: dict[int, str] = {}  # partition id -> why its privacy budget is spent: not sampled again

    # -- nodes ---------------------------------------------------------------------------
    def _ask(self, node_ids: Iterable[int]) -> dict[int, ConfigRecord]:
        """Node id -> its QUERY answer (partition id, holdings, adapter rank), for those that answered;
        each node that could not (its ClientApp failed, say, on data it cannot read) is warned about
        and kept in ``not_joined`` with the reason, and asked again next round."""
        queries = [Message(RecordDict({protocol.CONFIG: self._config(0)}), dst_node_id=n,
                           message_type=MessageType.QUERY) for n in node_ids]
        answers, failed = split_failures(queries, self._send(queries), {})
        for p in failed:
            log(WARNING, "anther: node %d did not join: %s", p.node_id, p.reason)
        self.not_joined = {p.node_id: p.reason for p in failed}
        return {node: reply.content[protocol.INFO] for node, reply in answers}

    def _discover(self) -> dict[int, int]:
        """Wait for the federation's nodes, ask each about itself (partition id, adapter rank),
        tell a node-aware strategy the answers, and map partition id -> node id."""
        want = self.cfg.federation.num_clients
        deadline = time.monotonic() + self.cfg.federation.round_timeout_s
        node_ids = list(self.grid.get_node_ids())
        while len(node_ids) < want and time.monotonic() < deadline:
            time.sleep(1.0)
            node_ids = list(self.grid.get_node_ids())
        self.info = self._ask(node_ids)
        if len(self.info) < self.cfg.federation.min_train_clients:
            raise RuntimeError(f"only {len(self.info)} clients answered; need "
                               f"federation.min_train_clients={self.cfg.federation.min_train_clients}")
        partitions = _one_node_per_partition(self.info)
        reports = {pid: json.loads(str(self.info[node][protocol.HOLDINGS])) if protocol.HOLDINGS in self.info[node]
                   else None for pid, node in partitions.items()}  # a ClientApp of one's own may not say
        self.recorder.report_partitions(reported_partitions(self.cfg, self.data_folder, reports))
        if isinstance(self.strategy, NodeAware):
            self.strategy.set_node_info(self.info)
        return partitions

    def _connected(self, partitions: dict[int, int]) -> tuple[dict[int, int], list[Problem]]:
        """The partitions whose node is connected now, and one :class:`Problem` for each whose node is
        not (the SuperLink stopped hearing its heartbeats): those are left out of sampling until they
        are back. A node that joined since (a site restarted, with a new node id) is asked who it is
        first and takes its partition back."""
        online = set(self.grid.get_node_ids())
        joined = online - set(partitions.values())
        self.not_joined = {}
        if joined:
            for node, answer in self._ask(sorted(joined)).items():
                pid = int(answer[protocol.PARTITION_ID])
                if partitions.get(pid) in online:
                    log(WARNING, "anther: node %d also claims partition %d, which node %d holds; ignoring it",
                        node, pid, partitions[pid])
                    continue
                log(WARNING, "anther: partition %d is back, as node %d", pid, node)
                partitions[pid], self.info[node] = node, answer
            if isinstance(self.strategy, NodeAware):
                self.strategy.set_node_info(self.info)
        gone = [Problem(pid, node, "its node is not connected; left out until it is back")
                for pid, node in partitions.items() if node not in online]
        return {pid: node for pid, node in partitions.items() if node in online}, gone

    def _sample(self, partitions: dict[int, int]) -> list[int]:
        """Node ids to train this round: a sample of the connected partitions whose clients still
        have privacy budget (a client that said its budget is spent is not asked again)."""
        open_ = sorted(p for p in partitions if p not in self.exhausted)
        k = min(clients_per_round(self.cfg.federation, len(partitions)), len(open_))
        chosen = sorted(self.rng.sample(open_, k))
        return [partitions[p] for p in chosen]

    # -- messages ------------------------------------------------------------------------
    def _config(self, server_round: int) -> ConfigRecord:
        """The round config; ``run-key`` (the run folder's name, the same after a resume) tells
        clients where they keep their state (:mod:`anther.client.state_store`)."""
        return ConfigRecord({protocol.EXPERIMENT: to_yaml(self.cfg), protocol.SERVER_ROUND: server_round,
                             protocol.RUN_KEY: self.run_dir.name})

    def _send(self, messages: Iterable[Message]) -> list[Message]:
        """Every reply that came back within the round's timeout, error replies included."""
        return send_and_receive(self.grid, messages, timeout=self.cfg.federation.round_timeout_s)

    # -- the run -------------------------------------------------------------------------
    def _evaluate_server(self, arrays: ArrayRecord) -> dict[str, float]:
        return self.evaluator(arrays.to_torch_state_dict())

    def _resume_point(self, initial: ArrayRecord) -> tuple[ArrayRecord, int]:
        """The global adapters to start from and the first round to train: ``initial`` and 1, or,
        when resuming, the last complete checkpoint's adapters with the strategy, the RNGs and
        the recorded rounds put back as they were after that round."""
        ckpt = latest_checkpoint(self.run_dir) if self.resume else None
        if ckpt is None:
            if self.resume:
                log(WARNING, "anther: %s holds no complete checkpoint; starting it again from round 1",
                    self.run_dir)
            return initial, 1
        for why in ckpt.skipped:
            log(WARNING, "anther: skipped a damaged checkpoint: %s", why)
        load_strategy_state(self.strategy, ckpt.state["strategy"], ckpt.tensors)
        restore_rng(ckpt.state["rng"], self.rng, ckpt.tensors)
        self.exhausted = {int(pid): why for pid, why in ckpt.state.get("exhausted", {}).items()}
        self.resumed_from = [*ckpt.state.get("resumed_from", []), ckpt.server_round]
        self.recorder.restore(ckpt.state["rounds"], self.resumed_from)
        print(f"anther: resuming {self.run_dir} after round {ckpt.server_round}", flush=True)
        return ArrayRecord(ckpt.adapters), ckpt.server_round + 1

    def _checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        """Everything a resumed run needs to go on exactly as this one would (docs/reliability.md)."""
        tensors: dict[str, torch.Tensor] = {}
        state = {"rounds": self.recorder.rounds, "resumed_from": self.resumed_from,
                 "exhausted": {str(pid): why for pid, why in self.exhausted.items()},
                 "strategy": strategy_state(self.strategy, "strategy", tensors),
                 "rng": rng_state(self.rng, tensors)}
        save_checkpoint(self.run_dir, server_round, arrays.to_torch_state_dict(), state, tensors)

    def execute(self, initial: ArrayRecord) -> ArrayRecord:
        hide_flowers_count()  # its strategy sees only accepted replies; log_round gives the count
        arrays, first = self._resume_point(initial)  # before discovery, which tells the strategy its nodes
        partitions = self._discover()
        if first == 1:
            t0 = time.time()
            self.recorder.add_round({"round": 0, "clients": 0, **self._evaluate_server(arrays),
                                     "seconds": time.time() - t0})
        for server_round in range(first, self.cfg.federation.rounds + 1):
            t0 = time.time()
            connected, unavailable = self._connected(partitions)
            partition_of = {node: pid for pid, node in partitions.items()}
            sampled = self._sample(connected)
            config = self._config(server_round)
            dtypes = {name: array.dtype for name, array in arrays.items()}
            # A copy: some strategies consume what they are given (QFedAvg empties it), and a
            # skipped round must still have the global adapters.
            messages = list(self.strategy.configure_train(server_round, ArrayRecord(dict(arrays.items())), config,
                                                          OfferedGrid(self.grid, sampled)))
            received = self._send(messages)
            screened = screen_replies(messages, received, partition_of, self.cfg.federation.outlier_factor,
                                      check_arrays=not replies_are_masked(self.strategy))
            log_round(server_round, len(sampled), screened, unavailable)
            self.exhausted.update({p.partition_id: p.reason for p in screened.declined
                                   if p.status == protocol.BUDGET_EXHAUSTED and p.partition_id is not None})
            replies = screened.accepted
            # Traffic as sent, before the strategy reads (and may consume) the replies.
            traffic = {"adapter_bytes_down": _record_bytes(messages),
                       "adapter_bytes_up": _record_bytes(m for m in received if not m.has_error()),
                       "per_client": _client_traffic(messages, replies)}
            outcome = aggregate_guarded(self.strategy, server_round, replies, self.cfg.federation.min_replies,
                                        dtypes)
            train_metrics = outcome.metrics
            if outcome.arrays is not None:
                arrays = outcome.arrays
            self.recorder.add_round({
                "round": server_round,
                "train_loss": _weighted_metric(replies, protocol.TRAIN_LOSS),
                **self._evaluate_server(arrays),
                "clients": len(replies),
                "sampled": len(sampled),
                "rejected": [p.record() for p in screened.rejected],
                "failed": [p.record() for p in screened.failed],
                "unavailable": [p.record() for p in unavailable],
                "declined": [p.record() for p in screened.declined],
                "exhausted": sorted(self.exhausted),
                "not_joined": [{"node_id": n, "reason": why} for n, why in self.not_joined.items()],
                "skipped": outcome.skipped,
                "adapter_bytes_down": traffic["adapter_bytes_down"],
                "adapter_bytes_up": traffic["adapter_bytes_up"],
                "activation_bytes_up": _sum_metric(replies, protocol.ACTIVATION_BYTES_UP),
                "activation_bytes_down": _sum_metric(replies, protocol.ACTIVATION_BYTES_DOWN),
                "per_client": traffic["per_client"],
                "train_metrics": dict(train_metrics or {}),  # as the strategy aggregated them
                **_epsilons(replies),
                **_dp_randomness(replies),
                **{k: v for k, v in (train_metrics or {}).items() if k == CLIENT_EPSILON_METRIC},
                "seconds": time.time() - t0,
                "client_seconds": _client_seconds(replies),
            })
            self._checkpoint(server_round, arrays)
        self.recorder.finish(self._evaluate_clients(arrays, partitions))
        return arrays

    def _evaluate_clients(self, arrays: ArrayRecord, partitions: dict[int, int]) -> dict[str, Any]:
        """Each client scores the final global adapters on its own test split, with the messages
        the strategy builds (at the node's rank; with its local adapter, when personalised)."""
        last = self.cfg.federation.rounds
        connected, unavailable = self._connected(partitions)
        messages = self.strategy.configure_evaluate(last, ArrayRecord(dict(arrays.items())), self._config(last),
                                                    OfferedGrid(self.grid, list(connected.values())))
        answers, missing = split_failures(messages, self._send(messages), {n: p for p, n in partitions.items()})
        missing += unavailable
        for p in missing:
            log(WARNING, "anther: final evaluation: got nothing from partition %s (node %d): %s", p.partition_id,
                p.node_id, p.reason)
        metrics = [dict(m.content[protocol.METRICS]) for _, m in answers]
        per_client = {int(m[protocol.PARTITION_ID]): m for m in sorted(metrics, key=lambda m: m[protocol.PARTITION_ID])}
        print(f"anther: final evaluation: {len(per_client)} of {len(partitions)} clients answered", flush=True)
        return {"summary": summarise_clients(per_client), "per_client": per_client, "asked": len(partitions),
                "missing": [p.record() for p in missing]}
