"""Secure aggregation as a Strategy wrapper: any weighted-mean strategy, aggregated through SecAgg+.

:class:`SecAggPlusStrategy` wraps a strategy whose aggregate is a weighted mean (FedAvg and
its server-optimiser variants, modality-aware FedAvg...; see ``weighted_mean``). It needs no
change to the round loop that drives it, anther's or Flower's ``Strategy.start``:

- ``configure_train`` lets the inner strategy build its training messages, then runs the
  protocol's setup and key-sharing stages through the grid it was given, and returns the
  training messages with each node's SecAgg+ record attached (stage 3, collect);
- the round loop sends them; each client trains, and Flower's ``secaggplus_mod`` (installed by
  ``anther.strategies.privacy.client_mods``) replies with its masked vector and its metrics, no adapters;
- ``aggregate_train`` runs the unmask stage, rebuilds the sum, turns it into the weighted
  mean (``secure_vector.decode``) and hands the inner strategy one reply per client carrying
  that mean and the client's own metrics. The inner strategy's weighted mean of identical
  arrays is the mean itself, so it aggregates metrics, keeps a modality nobody trained and
  applies its server optimiser (FedAvgM, FedAdam...) exactly as it would without SecAgg+.

The server sees each client's metrics (sample counts, loss) in the clear, as with Flower's
SecAgg+ workflow, but never an individual adapter or update.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.supercore import log

from anther.strategies.array_utils import NDArray, array_record, numpy_arrays
from anther.strategies.privacy.secagg_protocol import SecAggError, SecAggParams, SecAggPlusRound
from anther.strategies.privacy.secure_vector import VectorLayout, decode
from anther.strategies.weighted_mean import describe, is_weighted_mean, weight_keys

SECAGG_BYTES_DOWN, SECAGG_BYTES_UP = "secagg_bytes_down", "secagg_bytes_up"


class SecAggPlusStrategy(Strategy):
    """``strategy``'s weighted mean, computed from SecAgg+ sums only."""

    # replies carry masked vectors: anther.server.round_guard screens only their metrics
    masked_replies = True

    def __init__(self, strategy: Strategy, params: SecAggParams, max_weight: float) -> None:
        super().__init__()
        if not is_weighted_mean(strategy):
            raise ValueError(
                f"privacy.secagg.enabled=true needs a strategy that aggregates by a weighted mean (fedavg, "
                f"fedprox, fedavgm, fedadam, fedadagrad, fedyogi, modality_aware, adaptive_reg, personalised); "
                f"{describe(strategy)} needs each client's own update, which SecAgg+ hides")
        self.strategy, self.params, self.max_weight = strategy, params, max_weight
        self._protocol: SecAggPlusRound | None = None
        self._refusal = ""  # why this round's protocol stopped before training, if it did
        self._layout: VectorLayout | None = None
        self._current: dict[str, NDArray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._protocol, self._refusal = None, ""
        if not messages:
            return []
        self._current = numpy_arrays(arrays)
        names = list(arrays.keys())
        keys = weight_keys(self.strategy, names)
        self._layout = VectorLayout(tuple(names), tuple(keys[n] for n in names), self.max_weight)
        try:
            protocol = SecAggPlusRound(grid, self.params, server_round, [m.metadata.dst_node_id for m in messages])
            protocol.setup()
            protocol.share_keys()
        except SecAggError as err:
            log(WARNING, "round %s: secure aggregation stopped before training: %s", server_round, err)
            self._refusal = str(err)
            return []
        self._protocol = protocol
        return protocol.collect_messages(messages, self._layout.to_config())

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [r for r in replies if not r.has_error()]
        protocol, self._protocol = self._protocol, None
        if protocol is None or self._layout is None or not valid:
            raise AggregationError(self._refusal or "no masked vector to sum")
        try:
            summed = protocol.unmask(valid)
        except SecAggError as err:  # the round is skipped, and says why (anther.server.round_guard)
            raise AggregationError(f"secure aggregation failed, nothing aggregated: {err}") from err
        mean = decode(self._layout, summed, self._current)
        record = array_record(mean, {n: a.dtype for n, a in self._current.items()})
        key = self.strategy.arrayrecord_key if isinstance(self.strategy, FedAvg) else protocol.ARRAYS
        stand_ins = [Message(metadata=r.metadata, content=RecordDict(
            {key: record, **{k: v for k, v in r.content.metric_records.items()}})) for r in valid]
        arrays, metrics = self.strategy.aggregate_train(server_round, stand_ins)
        metrics = MetricRecord(dict(metrics or {}))
        metrics[SECAGG_BYTES_DOWN], metrics[SECAGG_BYTES_UP] = protocol.bytes_down, protocol.bytes_up
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()
