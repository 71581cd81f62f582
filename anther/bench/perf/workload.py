"""What every performance cell trains: the experiment's own clients, data and adapters, run as
rounds of threads in one process, with the frozen model either shared or loaded per client.

A round here is what a round of ``anther simulate`` does on the clients' side, minus Flower:
every client starts from the global adapters, trains ``train.local_steps`` split steps with
:func:`anther.client.trainer.train_adapters` on its own partition, and the server averages
the results (FedAvg). ``concurrency`` clients train at once (Ray's actors in a simulation).

- ``shared``: one frozen model in the process. Clients' NanoEdges share its encoder,
  connector and embeddings (each has its own adapters) and reach its LLM through one
  :class:`BackboneService` on 127.0.0.1 that batches their concurrent requests.
- ``copies``: each client loads its own full model from the checkpoint when it trains and
  runs it in-process, the way FlowerTune's ``client_fn`` and NVFlare's simulator give every
  client its own model.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import torch
from omegaconf import DictConfig
from transformers import AutoConfig

from anther.backbone.in_process import InProcessBackbone
from anther.backbone.interface import Backbone
from anther.backbone.remote import RemoteBackbone
from anther.backbone.service.batching import BatchPolicy
from anther.backbone.service.decode import Limits
from anther.backbone.service.server import start
from anther.backbone.service.servicer import BackboneService
from anther.client.runtime import ClientRuntime
from anther.client.training_round import round_seed, train_round
from anther.core.sample import Sample
from anther.data.client_data import client_data, dataset_dir
from anther.model.families import family_for, load_processor
from anther.model.feature_cache import FeatureCache
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import NanoEdge
from anther.model.sample_encoder import SampleEncoder
from anther.simulations.assets import prepare_assets
from anther.simulations.baselines import initial_adapters
from anther.simulations.experiment import load_config

State = dict[str, torch.Tensor]


def rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryTrace:
    """Resident memory sampled every ``interval_s`` in a background thread while in use: this
    process's, or whatever ``measure`` returns (another process's, say)."""

    def __init__(self, interval_s: float = 0.1, measure: Callable[[], int] = rss_bytes) -> None:
        self.interval_s, self.samples, self.measure = interval_s, [], measure
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.mark()
            self._stop.wait(self.interval_s)

    def mark(self) -> None:
        self.samples.append((round(time.perf_counter() - self._start, 3), self.measure()))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.mark()

    @property
    def peak_bytes(self) -> int:
        return max(b for _, b in self.samples)


@dataclass
class Workload:
    """An experiment config's clients: their training samples, the checkpoint, the adapter shape."""

    cfg: DictConfig
    clients: list[list[Sample]]

    @classmethod
    def load(cls, experiment: str, overrides: list[str], config_dir: str | None = None) -> Workload:
        cfg = prepare_assets(load_config(experiment, overrides, config_dir))
        folder, n = dataset_dir(cfg), cfg.federation.num_clients
        return cls(cfg, [client_data(cfg, folder, pid, n)[0] for pid in range(n)])

    @property
    def model_path(self) -> Path:
        return Path(self.cfg.model.path)

    @property
    def adapter_config(self) -> NanoAdapterConfig:
        a = self.cfg.adapter
        return NanoAdapterConfig(rank=a.rank, alpha=float(a.alpha), activation=a.activation)

    def load_model(self) -> torch.nn.Module:
        """A full copy of the checkpoint (every weight read from disk)."""
        family = family_for(_model_type(self.model_path))
        return family.model_class.from_pretrained(self.model_path, dtype=getattr(torch, self.cfg.model.dtype))

    def initial_state(self, model: torch.nn.Module) -> State:
        return initial_adapters(self.cfg, NanoEdge.from_model(model, self.adapter_config))

    def train(self, encoder: SampleEncoder, backbone: Backbone, client: int, round_: int) -> int:
        """One client's round of local training, the ClientApp's own; returns the samples it
        trained on."""
        runtime = ClientRuntime(encoder, backbone)
        return train_round(self.cfg, runtime, self.clients[client], round_seed(self.cfg.seed, round_, client)).examples


def _model_type(path: Path) -> str:
    return AutoConfig.from_pretrained(path).model_type


def fedavg(states: list[tuple[State, int]]) -> State:
    total = sum(n for _, n in states)
    return {k: sum(s[k] * (n / total) for s, n in states) for k in states[0][0]}


@dataclass
class RoundResult:
    seconds: float
    samples: int

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds


class Federation:
    """Rounds of every client, ``concurrency`` at once, then FedAvg; subclasses say how one
    client trains (:meth:`_train_one`)."""

    work: Workload
    concurrency: int
    global_state: State
    cache: FeatureCache | None = None

    def _train_one(self, client: int, round_: int) -> tuple[State, int]:
        raise NotImplementedError

    def round(self, clients: list[int], round_: int) -> RoundResult:
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="client") as pool:
            states = list(pool.map(lambda c: self._train_one(c, round_), clients))
        result = RoundResult(time.perf_counter() - began, sum(n for _, n in states))
        self.global_state = fedavg(states)
        return result

    def close(self) -> None:
        pass


class SharedBackboneFederation(Federation):
    """``shared``: one frozen model, one batching backbone service, one NanoEdge per worker.

    The service computes on ``backbone_threads`` torch threads, as ``anther backbone serve`` in its
    own process does with every core; the clients keep one each. (The setting is the batcher
    thread's own: OpenMP's thread count belongs to the thread that sets it.)"""

    def __init__(self, work: Workload, concurrency: int, policy: BatchPolicy, backbone_threads: int = 1,
                 cache_dir: Path | None = None, cache_max_bytes: int = 1 << 30) -> None:
        self.work, self.concurrency = work, concurrency
        self.model = work.load_model()
        backbone = InProcessBackbone.from_model(self.model, work.model_path)

        def on_batcher_thread() -> InProcessBackbone:
            torch.set_num_threads(backbone_threads)
            return backbone

        self.service = BackboneService(on_batcher_thread, policy, Limits(max_calls_per_client=concurrency))
        self.server, port = start(self.service)
        if cache_dir is not None:
            self.cache = FeatureCache.for_model(cache_dir, work.model_path, work.cfg.model.dtype, cache_max_bytes)
        self._free: list[tuple[SampleEncoder, RemoteBackbone]] = []
        for _ in range(concurrency):  # frozen modules shared; adapters and processor per worker
            edge = NanoEdge.from_model(self.model, work.adapter_config)  # (HF tokenizers are not thread-safe)
            edge.feature_cache = self.cache
            encoder = SampleEncoder(edge, load_processor(work.model_path))
            self._free.append((encoder, RemoteBackbone(f"127.0.0.1:{port}")))
        self._lock = threading.Lock()
        self.global_state = work.initial_state(self.model)

    @contextmanager
    def _worker(self) -> Iterator[tuple[SampleEncoder, RemoteBackbone]]:
        with self._lock:
            worker = self._free.pop()
        try:
            yield worker
        finally:
            with self._lock:
                self._free.append(worker)

    def _train_one(self, client: int, round_: int) -> tuple[State, int]:
        with self._worker() as (encoder, backbone):
            encoder.edge.load_adapter_state(self.global_state)
            n = self.work.train(encoder, backbone, client, round_)
            return encoder.edge.adapter_state(), n

    def close(self) -> None:
        for _, remote in self._free:
            remote.close()
        self.server.stop(None)
        self.service.close()


class ModelPerClientFederation(Federation):
    """``copies``: every client loads and runs its own full model (and processor) for its round.
    ``load_s`` and ``client_s`` add up, over clients, the seconds spent loading and in all."""

    def __init__(self, work: Workload, concurrency: int) -> None:
        self.work, self.concurrency = work, concurrency
        self.global_state = work.initial_state(work.load_model())
        self.load_s = self.client_s = 0.0
        self._lock = threading.Lock()

    def _train_one(self, client: int, round_: int) -> tuple[State, int]:
        began = time.perf_counter()
        model = self.work.load_model()
        loaded = time.perf_counter()
        edge = NanoEdge.from_model(model, self.work.adapter_config)
        edge.load_adapter_state(self.global_state)
        encoder = SampleEncoder(edge, load_processor(self.work.model_path))
        n = self.work.train(encoder, InProcessBackbone.from_model(model, self.work.model_path), client, round_)
        with self._lock:
            self.load_s += loaded - began
            self.client_s += time.perf_counter() - began
        return edge.adapter_state(), n
