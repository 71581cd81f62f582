"""What the backbone benchmarks share: a backbone to serve, clients' inputs, latency statistics
and the JSON report. The benchmarks run a real :class:`BackboneService` on 127.0.0.1 in their
own process and drive it with :class:`RemoteBackbone` clients in threads."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from anther.backbone.in_process import InProcessBackbone


def load_backbone(model_dir: Path | None) -> InProcessBackbone:
    """The checkpoint at ``model_dir``, or a fresh tiny LLaVA (random weights, no pretraining:
    speed does not depend on what the weights have learnt)."""
    if model_dir is not None:
        return InProcessBackbone.from_pretrained(model_dir)
    from anther.model.tiny_model import init_tiny

    with tempfile.TemporaryDirectory() as tmp:
        return InProcessBackbone.from_pretrained(init_tiny(Path(tmp) / "tiny", pretrain_steps=0))


def random_inputs(backbone: InProcessBackbone, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    """One client's train-step inputs: random embeddings, full mask, the second half labelled."""
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, length, backbone.info.hidden_size, generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    labels = torch.randint(0, backbone.info.vocab_size, (batch, length), generator=g)
    labels[:, : length // 2] = -100
    return embeds, mask, labels


def run_clients(targets: Sequence[Callable[[threading.Barrier, threading.Event], None]], seconds: float,
                join_timeout_s: float | None = None) -> tuple[float, int]:
    """Run one thread per client target, released together by a barrier and told to stop
    after ``seconds``; the seconds they ran and how many threads were still alive after
    ``join_timeout_s`` (None: wait for each)."""
    start_at, stop = threading.Barrier(len(targets) + 1), threading.Event()
    threads = [threading.Thread(target=t, args=(start_at, stop), daemon=True) for t in targets]
    for t in threads:
        t.start()
    start_at.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=join_timeout_s)
    return time.perf_counter() - began, sum(t.is_alive() for t in threads)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 100]) of already sorted values; None if empty."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def latency_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    """Mean, p50, p99 and max of request latencies, in milliseconds."""
    ordered = sorted(latencies_s)

    def ms(x: float | None) -> float | None:
        return None if x is None else round(1000 * x, 2)

    return {"mean_latency_ms": ms(sum(ordered) / len(ordered)) if ordered else None,
            "p50_latency_ms": ms(percentile(ordered, 50)), "p99_latency_ms": ms(percentile(ordered, 99)),
            "max_latency_ms": ms(ordered[-1] if ordered else None)}


def report(name: str, backbone: InProcessBackbone, args: argparse.Namespace, results: object) -> dict:
    """The JSON every benchmark writes: what ran, on what, and its results."""
    return {
        "benchmark": name,
        "model": {"fingerprint": backbone.info.fingerprint, "hidden_size": backbone.info.hidden_size,
                  "vocab_size": backbone.info.vocab_size, "dtype": backbone.info.dtype},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "machine": platform.machine(), "loadavg_1m": round(os.getloadavg()[0], 2)},
        "results": results,
    }


def write_report(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    print(f"wrote {path}")
