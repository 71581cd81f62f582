"""Heterogeneous adapter ranks: clients train NanoAdapters of rank r_k <= R, the global rank.

Method: nested sub-adapters, aggregated per hidden unit (HeteroFL, Diao et al. 2021;
the rank-slice averaging of HeteroLoRA / FlexLoRA's zero-padding baseline).

Why this and not product-space merging. A NanoAdapter's branch is

    scale * (up.weight @ act(down.weight @ h + down.bias) + up.bias)
      = scale * (sum_i up.weight[:, i] * act(down.weight[i] . h + down.bias[i]) + up.bias)

with ``act`` element-wise, so it is a *sum over r independent hidden units*, unit i being
(``down.weight[i]``, ``down.bias[i]``, ``up.weight[:, i]``). A rank-r client holding the
first r units of the global adapter is exactly a sub-network of it, and

- truncation (what ``configure_train`` sends a rank-r node) is exact: the client's adapter
  computes precisely the global adapter's first r units;
- aggregation averages each unit (each rank slice) over the clients that hold it, weighted
  by ``num-examples``: that is FedAvg on that unit's parameters, and with equal ranks the
  whole strategy *is* FedAvg. A slice no client holds this round keeps its global value.

Units are ordered (as in FjORD's ordered dropout): low-index units are trained by every
client, high-index ones only by the high-rank clients.

Product-space merging (sum_k w_k up_k @ down_k, re-factorised by SVD, as FlexLoRA does for
LoRA) assumes the adapter is the linear map ``up @ down``. With ``act`` in between it is not:
``up @ down`` is not the function the adapter computes, so merging products and
re-factorising changes the function even when every client sends the same weights.

Scale. NanoAdapter multiplies its branch by ``alpha / rank`` with a run-wide ``alpha``, so
the same unit weighs ``R / r_k`` times more in a rank-r_k client than in the rank-R global
adapter. With ``scale_by_rank`` (the default) a client's ``up.*`` is rescaled by ``R / r_k``
into the global convention before averaging, and by ``r_k / R`` back into the client's when
sent; set it False when clients keep ``alpha / rank`` constant (alpha proportional to rank).

Where a node's rank comes from, first match wins: the ``adapter-rank`` its node config sets
(reported in its QUERY answer, see :meth:`HeteroRankFedAvg.set_node_info`); ``partition_ranks``
(simulated nodes all share one node config, so a simulation declares budgets per partition:
partition p gets ``partition_ranks[p % len]``); ``node_ranks``; what its replies show (metric
``adapter-rank``, else the shape of its ``down.weight``); else ``default_rank`` (None: the
full global rank). The rank sent is also put in the node's config as ``adapter-rank``, in
training and in evaluation, and the client builds its NanoEdge at that rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError

from anther.core import protocol
from anther.strategies.array_utils import (
    NDArray,
    array_record,
    metric_value,
    numpy_arrays,
    reply_metrics,
    source_node,
    weighted_mean,
)
from anther.strategies.merging_fedavg import MergingFedAvg
from anther.strategies.node_info import NodeInfo

# Which axis of each NanoAdapter parameter is the rank (hidden-unit) axis; up.bias has none.
RANK_AXES = {"down.weight": 0, "down.bias": 0, "up.weight": 1}
# Parameters inside ``scale * up(...)``: rescaled between rank conventions.
SCALED = ("up.weight", "up.bias")


def _split(name: str) -> tuple[str, str] | None:
    """(adapter prefix, parameter suffix) for a NanoAdapter parameter, e.g. ('image.', 'up.weight')."""
    for suffix in (*RANK_AXES, "up.bias"):
        if name == suffix or name.endswith("." + suffix):
            return name[: len(name) - len(suffix)], suffix
    return None


def adapter_ranks(arrays: Mapping[str, NDArray]) -> dict[str, int]:
    """Rank of every adapter in ``arrays``, by prefix, read off ``down.weight``'s first axis."""
    ranks: dict[str, int] = {}
    for name, value in arrays.items():
        split = _split(name)
        if split is not None and split[1] == "down.weight":
            ranks[split[0]] = int(value.shape[0])
    return ranks


def _rescale(suffix: str, value: NDArray, factor: float, scale_by_rank: bool) -> NDArray:
    return value * factor if scale_by_rank and suffix in SCALED else value


def truncate_to_rank(arrays: Mapping[str, NDArray], rank: int,
                     scale_by_rank: bool = True) -> dict[str, NDArray]:
    """The global adapters as a rank-``rank`` client holds them: first ``rank`` units, client scale.

    Adapters whose rank is already <= ``rank`` are sent whole; other arrays pass through.
    """
    global_ranks = adapter_ranks(arrays)
    out: dict[str, NDArray] = {}
    for name, value in arrays.items():
        split = _split(name)
        if split is None or split[0] not in global_ranks:
            out[name] = value
            continue
        prefix, suffix = split
        r, big_r = min(rank, global_ranks[prefix]), global_ranks[prefix]
        sliced = np.take(value, range(r), axis=RANK_AXES[suffix]) if suffix in RANK_AXES else value
        out[name] = _rescale(suffix, np.asarray(sliced, dtype=np.float64), r / big_r, scale_by_rank).astype(
            value.dtype)
    return out


def _merge_slices(values: list[NDArray], weights: list[float], axis: int, current: NDArray) -> NDArray:
    """Average each index along ``axis`` over the clients whose array reaches it; else keep ``current``."""
    num = np.zeros(current.shape, dtype=np.float64)
    den = np.zeros(current.shape[axis], dtype=np.float64)
    for value, weight in zip(values, weights, strict=True):
        r = value.shape[axis]
        index = [slice(None)] * current.ndim
        index[axis] = slice(0, r)
        num[tuple(index)] += weight * np.asarray(value, dtype=np.float64)
        den[:r] += weight
    shape = [1] * current.ndim
    shape[axis] = -1
    den = den.reshape(shape)
    held = np.broadcast_to(den > 0, current.shape)
    return np.where(held, num / np.where(den > 0, den, 1.0), np.asarray(current, dtype=np.float64))


def hetero_rank_average(clients: list[dict[str, NDArray]], weights: list[float],
                        current: Mapping[str, NDArray] | None,
                        scale_by_rank: bool = True) -> dict[str, NDArray]:
    """Per-unit FedAvg of heterogeneous-rank adapters into the global rank (see the module docstring)."""
    client_ranks = [adapter_ranks(c) for c in clients]
    merged: dict[str, NDArray] = {}
    for name in clients[0]:
        values = [c[name] for c in clients]
        split = _split(name)
        if split is None or split[0] not in client_ranks[0]:
            merged[name] = weighted_mean(values, weights)  # not part of a NanoAdapter: plain FedAvg
            continue
        prefix, suffix = split
        ranks = [r[prefix] for r in client_ranks]
        big_r = _global_rank(prefix, ranks, current)
        values = [_rescale(suffix, np.asarray(v, dtype=np.float64), big_r / r, scale_by_rank)
                  for v, r in zip(values, ranks, strict=True)]
        if suffix not in RANK_AXES:
            merged[name] = weighted_mean(values, weights)
            continue
        # Before any global is known the largest client holds every slice; the base is then unused.
        base = current[name] if current is not None and name in current else np.zeros_like(
            values[ranks.index(big_r)])
        merged[name] = _merge_slices(values, weights, RANK_AXES[suffix], base)
    return merged


def _global_rank(prefix: str, ranks: list[int], current: Mapping[str, NDArray] | None) -> int:
    """R: the current global adapter's rank, or (before any global is known) the largest client rank."""
    big_r = adapter_ranks(current).get(prefix) if current is not None else None
    if big_r is None:
        return max(ranks)
    if max(ranks) > big_r:
        raise AggregationError(reason=f"a client sent a rank-{max(ranks)} {prefix!r} adapter; the global "
                                      f"rank is {big_r} (clients may only use ranks <= the global rank)")
    return big_r


class HeteroRankFedAvg(MergingFedAvg):
    """FedAvg for clients of different adapter ranks: per-unit averaging, per-node truncation.

    Parameters
    ----------
    node_ranks:
        ``{node_id: rank}`` known up front (also settable with :meth:`set_node_ranks`).
    partition_ranks:
        Ranks by partition id, cycled: partition p trains ``partition_ranks[p % len]``. For
        simulations, whose nodes cannot have node configs of their own.
    default_rank:
        Rank sent to a node whose rank is not known yet; None sends the full global rank.
    scale_by_rank:
        Clients' adapters scale their branch by ``alpha / rank`` (NanoAdapter) -- rescale
        ``up.*`` between conventions. False when the scale does not depend on the rank.
    **fedavg_kwargs:
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, *, node_ranks: Mapping[int, int] | None = None,
                 partition_ranks: Sequence[int] | None = None, default_rank: int | None = None,
                 scale_by_rank: bool = True, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.node_ranks: dict[int, int] = {}
        self.set_node_ranks(node_ranks or {})
        self.partition_ranks = [_valid_rank(f"partition_ranks[{i}]", r) for i, r in enumerate(partition_ranks or [])]
        self.default_rank = default_rank
        self.scale_by_rank = scale_by_rank

    def set_node_ranks(self, ranks: Mapping[int, int]) -> None:
        """Declare nodes' adapter ranks (keys may be strings, as they come from a YAML config)."""
        for node, rank in ranks.items():
            self.node_ranks[int(node)] = _valid_rank(f"node {node}", rank)

    def set_node_info(self, info: NodeInfo) -> None:
        """Each node's rank from its QUERY answer: its node config's ``adapter-rank``, else its
        partition's entry of ``partition_ranks`` (see :mod:`anther.strategies.node_info`)."""
        for node, answer in info.items():
            if protocol.ADAPTER_RANK in answer:
                self.node_ranks[int(node)] = _valid_rank(f"node {node}", answer[protocol.ADAPTER_RANK])
            elif self.partition_ranks and protocol.PARTITION_ID in answer:
                pid = int(answer[protocol.PARTITION_ID])
                self.node_ranks[int(node)] = self.partition_ranks[pid % len(self.partition_ranks)]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's messages, each carrying the global adapters truncated to its node's rank."""
        messages = super().configure_train(server_round, arrays, config, grid)
        return self._per_node(messages, self.current_arrays, config)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Evaluation too sends each node the global adapters at its own rank."""
        messages = super().configure_evaluate(server_round, arrays, config, grid)
        return self._per_node(messages, numpy_arrays(arrays), config)

    def _per_node(self, messages: Iterable[Message], global_arrays: dict[str, NDArray],
                  config: ConfigRecord) -> list[Message]:
        messages = list(messages)
        for message in messages:  # FedAvg shares one RecordDict between all messages: give each its own
            message.content = self._content_for(int(message.metadata.dst_node_id), global_arrays, config)
        return messages

    def _content_for(self, node_id: int, global_arrays: dict[str, NDArray],
                     config: ConfigRecord) -> RecordDict:
        full = max(adapter_ranks(global_arrays).values(), default=0)
        requested = self.node_ranks.get(node_id, self.default_rank)
        rank = full if requested is None else min(requested, full)
        arrays = truncate_to_rank(global_arrays, rank, self.scale_by_rank)
        node_config = ConfigRecord({**dict(config), protocol.ADAPTER_RANK: rank})
        return RecordDict({self.arrayrecord_key: array_record(arrays), self.configrecord_key: node_config})

    def merge(self, replies: list[Message], clients: list[dict[str, NDArray]]) -> dict[str, NDArray]:
        self._learn_ranks(replies, clients)
        weights = [metric_value(m.content, self.weighted_by_key) for m in replies]
        return hetero_rank_average(clients, weights, self.current_arrays, self.scale_by_rank)

    def _learn_ranks(self, replies: list[Message], clients: list[dict[str, NDArray]]) -> None:
        """Remember each replying node's rank: its ``adapter-rank`` metric, else its arrays' shapes."""
        for message, arrays in zip(replies, clients, strict=True):
            metrics = reply_metrics(message.content)
            shapes = adapter_ranks(arrays)
            rank = (
                int(metrics[protocol.ADAPTER_RANK])
                if protocol.ADAPTER_RANK in metrics
                else max(shapes.values(), default=0)
            )
            if rank > 0:
                self.node_ranks[source_node(message)] = rank


def _valid_rank(what: str, rank: Any) -> int:
    if int(rank) < 1:
        raise ValueError(f"{what}: adapter rank must be >= 1, got {rank}")
    return int(rank)
