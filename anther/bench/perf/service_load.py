"""Clients that keep a backbone service busy: what the perf bench's batching cell and its
trainstep section both measure throughput with."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from anther.backbone.remote import RemoteBackbone
from anther.backbone.service.servicer import BackboneService

TrainStepInputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # embeddings, mask, labels


@dataclass(frozen=True)
class Load:
    requests: int  # train steps the clients completed in the timed window
    seconds: float
    passes: int  # the service's batched passes over them

    @property
    def requests_per_pass(self) -> float:
        return self.requests / max(1, self.passes)


def send_train_steps(service: BackboneService, port: int, requests: list[TrainStepInputs], seconds: float,
                     wire_dtype: str = "float32") -> Load:
    """One thread and connection per request to ``service`` on 127.0.0.1:``port``, each sending its
    TrainStep again and again for ``seconds``, after one untimed step that warms connection and
    kernels."""
    remotes = [RemoteBackbone(f"127.0.0.1:{port}", wire_dtype=wire_dtype) for _ in requests]
    try:
        for remote, inputs in zip(remotes, requests):
            remote.train_step(*inputs)
        counts = [0] * len(requests)
        stop_at = time.perf_counter() + seconds

        def loop(i: int) -> None:
            while time.perf_counter() < stop_at:
                remotes[i].train_step(*requests[i])
                counts[i] += 1

        first_pass = service.batcher.stats.batches
        began = time.perf_counter()
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return Load(sum(counts), time.perf_counter() - began, service.batcher.stats.batches - first_pass)
    finally:
        for remote in remotes:
            remote.close()
