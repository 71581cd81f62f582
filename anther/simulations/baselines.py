"""The three baselines every benchmark compares federated training against (``baseline=NAME``).

All three run in one process with the same pieces as a federated run -- the runtime (NanoEdge
+ backbone), :func:`anther.client.training_round.train_round`, the server's evaluator and each
client's own-split scoring, the scenario's partitions from :func:`client_data` -- and write the
same run folder and ``result.json`` (:class:`RunRecorder`), so the benchmark reads them like any
strategy. No adapters travel, so adapter traffic is zero; activation traffic to the backbone is
counted as in a federated run.

- ``zero_shot``: the run's fresh round-0 adapters (an adapter starts as the identity), scored
  on the server's test set (round 0) and by every client on its own test split.
- ``local_only``: every client trains alone, each round the ``train.local_steps`` steps a
  federated client takes (same seed, fresh optimiser each round) from its own adapters of the
  round before, never averaged, so it spends ``rounds * local_steps`` steps in all. A round's
  server-set metrics are the mean over the clients' adapters, with the worst client's
  (``acc_mc_worst``) and each client's (``per_client``); at the end each client scores its own
  adapters on its own test split.
- ``centralised``: one trainer on all partitions pooled (after the scenario's modality drops),
  with the federated run's total step budget: each round ``local_steps`` times the number of
  clients a round trains. Scored like the global adapters of a federated run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import RecordDict
from omegaconf import DictConfig

from anther.client.dp import spend
from anther.client.metrics import summarise_clients
from anther.client.trainer import TrainReport
from anther.client.training_round import dp_for, own_split_metrics, round_seed, train_round
from anther.core import protocol
from anther.core.config import clients_per_round
from anther.core.sample import Sample
from anther.data.client_data import client_data
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import NanoEdge, initial_adapter_state
from anther.server.checkpoint import save_checkpoint
from anther.server.evaluation import ServerEvaluator
from anther.server.run_folder import RunRecorder

Adapters = dict[str, torch.Tensor]


def initial_adapters(cfg: DictConfig, edge: NanoEdge) -> Adapters:
    """The run's round-0 global adapters (seeded by ``seed``), as the ServerApp sends them: fresh
    NanoAdapters, or in ``mode=whole_model`` fresh LoRA for ``edge``'s decoder."""
    if cfg.mode == "whole_model":
        return {f"lora.{k}": v for k, v in edge.adapters["lora"].initial_state(cfg.seed).items()}
    a = cfg.adapter
    dim = edge.embed_tokens.embedding_dim
    return initial_adapter_state(dim, NanoAdapterConfig(a.rank, float(a.alpha), a.activation), cfg.seed)


def _snapshot(state: Adapters) -> Adapters:
    return {k: v.detach().clone() for k, v in state.items()}


def _mean_over_clients(per_client: dict[int, dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the clients that have it, and ``acc_mc_worst``."""
    keys = sorted({k for m in per_client.values() for k in m})
    out = {k: sum(m[k] for m in per_client.values() if k in m) / sum(k in m for m in per_client.values())
           for k in keys}
    accs = [m["acc_mc"] for m in per_client.values() if "acc_mc" in m]
    return out | ({"acc_mc_worst": min(accs)} if accs else {})


class BaselineRun:
    """Shared state of a baseline: config, runtime, clients' data and the run folder."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        folder = Path(cfg.data.path)
        self.evaluator = ServerEvaluator(cfg, folder)
        self.runtime = self.evaluator.runtime  # one NanoEdge + backbone for every client in turn
        n = cfg.federation.num_clients
        self.clients: dict[int, tuple[list[Sample], list[Sample]]] = {
            pid: client_data(cfg, folder, pid, n) for pid in range(n)}
        self.recorder = RunRecorder(cfg, folder)
        self.initial = initial_adapters(cfg, self.runtime.edge)
        self.dp_state: dict[int, RecordDict] = {}  # a trainer's opacus accountant across rounds, by trainer id

    @property
    def run_dir(self) -> Path:
        return self.recorder.dir

    def server_metrics(self, adapters: Adapters) -> dict[str, float]:
        return self.evaluator(adapters)

    def client_metrics(self, adapters_of: Callable[[int], Adapters]) -> dict[str, Any]:
        """Every client scores ``adapters_of(its id)`` on its own test split; with the summary."""
        per_client = {}
        for pid, (_, test) in self.clients.items():
            self.runtime.edge.load_adapter_state(adapters_of(pid))
            per_client[pid] = own_split_metrics(self.cfg, self.runtime, test, pid)
        return {"summary": summarise_clients(per_client), "per_client": per_client}

    def train(self, start: Adapters, samples: list[Sample], server_round: int, trainer_id: int,
              steps: int, total_steps: int) -> tuple[Adapters, TrainReport, dict[str, float]]:
        """One round of ``steps`` local steps from ``start``; the new adapters, the report and,
        with DP, the epsilon this trainer has spent so far."""
        self.runtime.edge.load_adapter_state(start)
        dp = dp_for(self.cfg, len(samples), total_steps)
        report = train_round(self.cfg, self.runtime, samples, round_seed(self.cfg.seed, server_round, trainer_id),
                             steps=steps, dp=dp)
        eps = {}
        if dp is not None:
            state = self.dp_state.setdefault(trainer_id, RecordDict())
            eps = {protocol.DP_EPSILON: spend(state, self.cfg.privacy, dp, report.steps)}
        return _snapshot(self.runtime.edge.adapter_state()), report, eps

    def round_zero(self) -> None:
        t0 = time.time()
        self.recorder.add_round({"round": 0, "clients": 0, **self.server_metrics(self.initial),
                                 "seconds": time.time() - t0})


def _traffic(reports: dict[int, TrainReport]) -> dict[str, float]:
    return {"adapter_bytes_down": 0, "adapter_bytes_up": 0,
            "activation_bytes_up": sum(r.activation_bytes_up for r in reports.values()),
            "activation_bytes_down": sum(r.activation_bytes_down for r in reports.values())}


def _epsilons(eps: list[dict[str, float]]) -> dict[str, float]:
    values = [e[protocol.DP_EPSILON] for e in eps if protocol.DP_EPSILON in e]
    return {"dp_epsilon_max": max(values), "dp_epsilon_mean": sum(values) / len(values)} if values else {}


def zero_shot(run: BaselineRun) -> None:
    run.round_zero()
    run.recorder.finish(run.client_metrics(lambda _: run.initial))


def local_only(run: BaselineRun) -> None:
    cfg = run.cfg
    run.round_zero()
    own = {pid: run.initial for pid in run.clients}
    total = cfg.federation.rounds * cfg.train.local_steps
    for server_round in range(1, cfg.federation.rounds + 1):
        t0 = time.time()
        reports, eps, on_server = {}, [], {}
        for pid, (train, _) in run.clients.items():
            own[pid], reports[pid], e = run.train(own[pid], train, server_round, pid, cfg.train.local_steps, total)
            eps.append(e)
            on_server[pid] = run.server_metrics(own[pid])
        save_checkpoint(run.run_dir, server_round,
                        {f"client-{pid}.{k}": v for pid, state in own.items() for k, v in state.items()},
                        {"rounds": run.recorder.rounds})
        examples = {pid: len(train) for pid, (train, _) in run.clients.items()}
        run.recorder.add_round({
            "round": server_round,
            "train_loss": sum(reports[p].loss * examples[p] for p in reports) / sum(examples.values()),
            **_mean_over_clients(on_server),
            "clients": len(reports),
            **_traffic(reports),
            "per_client": {pid: {**on_server[pid], "train_loss": reports[pid].loss} for pid in reports},
            **_epsilons(eps),
            "seconds": time.time() - t0,
        })
    run.recorder.finish(run.client_metrics(lambda pid: own[pid]))


def centralised(run: BaselineRun) -> None:
    cfg = run.cfg
    run.round_zero()
    pooled = [s for train, _ in run.clients.values() for s in train]
    steps = cfg.train.local_steps * clients_per_round(cfg.federation, len(run.clients))
    trainer_id = len(run.clients)  # a seed stream no client uses
    adapters = run.initial
    for server_round in range(1, cfg.federation.rounds + 1):
        t0 = time.time()
        adapters, report, eps = run.train(adapters, pooled, server_round, trainer_id, steps,
                                          steps * cfg.federation.rounds)
        save_checkpoint(run.run_dir, server_round, adapters, {"rounds": run.recorder.rounds})
        run.recorder.add_round({
            "round": server_round, "train_loss": report.loss, **run.server_metrics(adapters),
            "clients": 1, **_traffic({0: report}), **_epsilons([eps]), "seconds": time.time() - t0,
        })
    run.recorder.finish(run.client_metrics(lambda _: adapters))


BASELINE_RUNS: dict[str, Callable[[BaselineRun], None]] = {
    "zero_shot": zero_shot, "local_only": local_only, "centralised": centralised}


def run_baseline(cfg: DictConfig) -> Path:
    """Run ``cfg.baseline`` (its ``model.path`` and ``data.path`` already prepared); the run folder."""
    if cfg.baseline not in BASELINE_RUNS:
        raise ValueError(f"baseline={cfg.baseline!r} is not a baseline; known: {sorted(BASELINE_RUNS)}")
    run = BaselineRun(cfg)
    print(f"anther: baseline {cfg.baseline}, run folder {run.run_dir}", flush=True)
    BASELINE_RUNS[cfg.baseline](run)
    print(f"anther: finished; result.json and plots in {run.run_dir}", flush=True)
    return run.run_dir
