"""Clients that keep a backbone service busy: what the perf bench's batching cell and its
trainstep section both measure throughput with."""

from __future__ import annotations

import threading
import time

import torch

from anther.client.backbone_client import RemoteBackbone

TrainStepInputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # embeddings, mask, labels


def send_train_steps(port: int, requests: list[TrainStepInputs], seconds: float,
                     wire_dtype: str = "float32") -> tuple[list[int], float]:
    """One thread and connection per request on 127.0.0.1:``port``, each sending its TrainStep
    again and again for ``seconds`` (after one untimed step that warms connection and kernels):
    how many each sent, and the seconds they ran."""
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

        began = time.perf_counter()
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return counts, time.perf_counter() - began
    finally:
        for remote in remotes:
            remote.close()
