"""One federated run: rounds of sample -> train -> aggregate -> evaluate -> checkpoint.

anther drives the rounds itself (rather than ``Strategy.start``) so that it can
sample clients deterministically by partition id, account traffic, print the
per-round table, evaluate on the server's held-out set and checkpoint every round.
Aggregation is entirely the strategy's: any ``flwr.serverapp.strategy.Strategy``. Its
``configure_train`` and ``configure_evaluate`` build the messages (so it decides what each
node receives: the adapters at the node's rank, keys asking for a Fisher...), offered only
the nodes this round sampled; a strategy that implements
:class:`anther.strategies.node_info.NodeAware` is first told every node's QUERY answer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from omegaconf import DictConfig, OmegaConf

from anther.client.dp import EPSILON_METRIC
from anther.client.metrics import summarise_clients
from anther.server.checkpoint import save_checkpoint
from anther.server.evaluation import ServerEvaluator
from anther.simulations.config import clients_per_round, to_yaml
from anther.simulations.run_folder import RunRecorder
from anther.strategies.node_info import NodeAware
from anther.strategies.registry import build_strategy


class OfferedGrid:
    """The grid as a strategy should see it this round: only the sampled nodes."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._node_ids = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _sum_metric(replies: Iterable[Message], key: str) -> float:
    return float(sum(m.content["metrics"].get(key, 0) for m in replies))


def _array_bytes(messages: Iterable[Message]) -> int:
    """Bytes of every ArrayRecord the messages carry: the adapters and any extra (a Fisher...)."""
    return sum(record.count_bytes() for m in messages for record in m.content.array_records.values())


def _weighted_metric(replies: list[Message], key: str) -> float | None:
    pairs = [(m.content["metrics"][key], m.content["metrics"]["num-examples"])
             for m in replies if key in m.content["metrics"]]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _epsilons(replies: list[Message]) -> dict[str, float]:
    """Max and mean over the replying clients of the epsilon each has spent so far (with DP)."""
    eps = [float(m.content["metrics"][EPSILON_METRIC]) for m in replies if EPSILON_METRIC in m.content["metrics"]]
    return {"dp_epsilon_max": max(eps), "dp_epsilon_mean": sum(eps) / len(eps)} if eps else {}


def _client_traffic(sent: list[Message], replies: list[Message]) -> dict[int, dict[str, float]]:
    """Each replying client's bytes this round, by partition id: adapters each way, activations each way."""
    to_node = {m.metadata.dst_node_id: m for m in sent}
    out = {}
    for r in replies:
        metrics = r.content["metrics"]
        down = to_node.get(r.metadata.src_node_id)
        out[int(metrics["partition-id"])] = {
            "adapter_bytes_down": _array_bytes([down]) if down is not None else 0,
            "adapter_bytes_up": _array_bytes([r]),
            "activation_bytes_up": float(metrics.get("activation_bytes_up", 0)),
            "activation_bytes_down": float(metrics.get("activation_bytes_down", 0)),
        }
    return out


class FederatedRun:
    def __init__(self, cfg: DictConfig, grid: Grid, data_folder: Path) -> None:
        self.cfg, self.grid = cfg, grid
        self.strategy = build_strategy(OmegaConf.to_container(cfg.strategy, resolve=True))
        self.rng = random.Random(cfg.seed)
        self.evaluator = ServerEvaluator(cfg, data_folder)
        self.recorder = RunRecorder(cfg, data_folder)  # config.yaml and the partition report, before training
        self.run_dir = self.recorder.dir

    # -- nodes ---------------------------------------------------------------------------
    def _discover(self) -> dict[int, int]:
        """Wait for the federation's nodes, ask each about itself (partition id, adapter rank),
        tell a node-aware strategy the answers, and map partition id -> node id."""
        want = self.cfg.federation.num_clients
        deadline = time.monotonic() + self.cfg.federation.round_timeout_s
        node_ids = list(self.grid.get_node_ids())
        while len(node_ids) < want and time.monotonic() < deadline:
            time.sleep(1.0)
            node_ids = list(self.grid.get_node_ids())
        queries = [Message(RecordDict({"config": self._config(0)}), dst_node_id=n,
                           message_type=MessageType.QUERY) for n in node_ids]
        replies = self.grid.send_and_receive(queries, timeout=self.cfg.federation.round_timeout_s)
        info = {r.metadata.src_node_id: r.content["info"] for r in replies if not r.has_error()}
        if len(info) < self.cfg.federation.min_train_clients:
            raise RuntimeError(f"only {len(info)} clients answered; need "
                               f"federation.min_train_clients={self.cfg.federation.min_train_clients}")
        if isinstance(self.strategy, NodeAware):
            self.strategy.set_node_info(info)
        return dict(sorted((int(answer["partition-id"]), node) for node, answer in info.items()))

    def _sample(self, partitions: dict[int, int]) -> list[int]:
        k = clients_per_round(self.cfg.federation, len(partitions))
        chosen = sorted(self.rng.sample(sorted(partitions), k))
        return [partitions[p] for p in chosen]

    # -- messages ------------------------------------------------------------------------
    def _config(self, server_round: int) -> ConfigRecord:
        return ConfigRecord({"experiment": to_yaml(self.cfg), "server-round": server_round})

    def _exchange(self, strategy_messages: Iterable[Message]) -> list[Message]:
        replies = self.grid.send_and_receive(list(strategy_messages),
                                             timeout=self.cfg.federation.round_timeout_s)
        ok = [m for m in replies if not m.has_error()]
        return sorted(ok, key=lambda m: int(m.content["metrics"]["partition-id"]))

    # -- the run -------------------------------------------------------------------------
    def _evaluate_server(self, arrays: ArrayRecord) -> dict[str, float]:
        return self.evaluator(arrays.to_torch_state_dict())

    def execute(self, initial: ArrayRecord) -> ArrayRecord:
        partitions = self._discover()
        arrays = initial
        t0 = time.time()
        self.recorder.add_round({"round": 0, "clients": 0, **self._evaluate_server(arrays),
                                 "seconds": time.time() - t0})
        for server_round in range(1, self.cfg.federation.rounds + 1):
            t0 = time.time()
            sampled = self._sample(partitions)
            config = self._config(server_round)
            messages = list(self.strategy.configure_train(server_round, arrays, config,
                                                          OfferedGrid(self.grid, sampled)))
            replies = self._exchange(messages)
            new_arrays, train_metrics = self.strategy.aggregate_train(server_round, replies)
            if new_arrays is not None:
                arrays = new_arrays
            save_checkpoint(self.run_dir, server_round, arrays.to_torch_state_dict(),
                            {"rounds": self.recorder.rounds})
            self.recorder.add_round({
                "round": server_round,
                "train_loss": _weighted_metric(replies, "train_loss"),
                **self._evaluate_server(arrays),
                "clients": len(replies),
                "adapter_bytes_down": _array_bytes(messages),
                "adapter_bytes_up": _array_bytes(replies),
                "activation_bytes_up": _sum_metric(replies, "activation_bytes_up"),
                "activation_bytes_down": _sum_metric(replies, "activation_bytes_down"),
                "per_client": _client_traffic(messages, replies),
                "train_metrics": dict(train_metrics or {}),  # as the strategy aggregated them
                **_epsilons(replies),
                "seconds": time.time() - t0,
            })
        self.recorder.finish(self._evaluate_clients(arrays, partitions))
        return arrays

    def _evaluate_clients(self, arrays: ArrayRecord, partitions: dict[int, int]) -> dict[str, Any]:
        """Each client scores the final global adapters on its own test split, with the messages
        the strategy builds (at the node's rank; with its local adapter, when personalised)."""
        last = self.cfg.federation.rounds
        messages = self.strategy.configure_evaluate(last, arrays, self._config(last),
                                                    OfferedGrid(self.grid, list(partitions.values())))
        replies = self._exchange(messages)
        per_client = {int(m.content["metrics"]["partition-id"]): dict(m.content["metrics"]) for m in replies}
        return {"summary": summarise_clients(per_client), "per_client": per_client}
