"""Backbone service throughput: training samples per second against the number of clients,
with dynamic batching on and off.

Each client is a thread with its own :class:`RemoteBackbone` talking to an in-process
server over loopback (127.0.0.1), calling ``train_step`` on random embeddings in a loop
for a fixed time. A sample is one sequence; a request carries ``--batch-size`` of them.
Server and clients share this process (and its GIL), as the in-process tests do, so the
numbers are a lower bound for a dedicated server; what they show is how much one
batched pass gains over one pass per request as clients are added.

    python -m anther.bench.backbone_throughput [--seconds 3] [--out FILE]

``--out`` defaults to ``$ANTHER_HOME/bench/backbone_throughput/backbone_throughput.json``.
"""

from __future__ import annotations

import argparse
import threading
import time
from functools import partial
from pathlib import Path

import torch

from anther.backbone.in_process import InProcessBackbone
from anther.backbone.remote import RemoteBackbone
from anther.backbone.service.batching import BatchPolicy
from anther.backbone.service.decode import Limits
from anther.backbone.service.server import start
from anther.backbone.service.servicer import BackboneService
from anther.bench.results import results_dir
from anther.bench.service_bench import (
    latency_ms,
    load_backbone,
    random_inputs,
    report,
    run_clients,
    write_report,
)


def _client_loop(client: RemoteBackbone, inputs: tuple[torch.Tensor, ...], start_at: threading.Barrier,
                 stop: threading.Event, latencies: list[float]) -> None:
    start_at.wait()
    while not stop.is_set():
        t0 = time.perf_counter()
        client.train_step(*inputs)
        latencies.append(time.perf_counter() - t0)


def run_cell(backbone: InProcessBackbone, clients: int, window_ms: float | None,
             args: argparse.Namespace) -> dict:
    """Throughput of ``clients`` concurrent clients for ``args.seconds`` seconds.

    ``window_ms`` None: batching off, one pass per request.
    """
    policy = BatchPolicy(window_ms is not None, window_ms or 0.0, args.max_batch)
    service = BackboneService(backbone, policy, Limits(max_calls_per_client=clients))  # one host, many clients
    server, port = start(service)
    remotes = [RemoteBackbone(f"127.0.0.1:{port}", wire_dtype=args.wire_dtype) for _ in range(clients)]
    inputs = [random_inputs(backbone, args.batch_size, args.seq_len, seed=i) for i in range(clients)]
    for remote, x in zip(remotes, inputs):
        remote.train_step(*x)  # warm up connections and kernels
    warm = service.batcher.stats.batches, service.batcher.stats.requests
    latencies: list[list[float]] = [[] for _ in range(clients)]
    elapsed, _ = run_clients(
        [partial(_client_loop, r, x, latencies=lat) for r, x, lat in zip(remotes, inputs, latencies)], args.seconds
    )
    for r in remotes:
        r.close()
    server.stop(None)
    service.close()
    requests = sum(len(lat) for lat in latencies)
    batches = service.batcher.stats.batches - warm[0]
    return {
        "clients": clients, "batching": window_ms is not None, "window_ms": window_ms,
        "seconds": round(elapsed, 3), "requests": requests,
        "samples_per_s": round(requests * args.batch_size / elapsed, 2),
        **latency_ms([x for lat in latencies for x in lat]),
        "mean_requests_per_batch": round(requests / max(1, batches), 2),
    }


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, help="checkpoint; default: a fresh tiny LLaVA (no pretraining)")
    p.add_argument("--clients", default="1,2,4,8", help="comma-separated client counts")
    p.add_argument("--seconds", type=float, default=3.0, help="measured time per cell")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per request")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--windows-ms", default="0,5", help="batching windows to try, comma-separated")
    p.add_argument("--max-batch", type=int, default=32, help="sequences per batched pass")
    p.add_argument("--wire-dtype", default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (keep the box usable)")
    p.add_argument("--out", type=Path, default=results_dir("backbone_throughput") / "backbone_throughput.json")
    return p.parse_args()


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model_dir)
    results = []
    windows = [None, *(float(w) for w in args.windows_ms.split(","))]
    print(f"{'clients':>7} {'batching':>12} {'samples/s':>10} {'p50 ms':>8} {'req/batch':>9}")
    for clients in (int(c) for c in args.clients.split(",")):
        for window_ms in windows:
            cell = run_cell(backbone, clients, window_ms, args)
            results.append(cell)
            mode = "off" if window_ms is None else f"on {window_ms:g} ms"
            print(f"{clients:>7} {mode:>12} {cell['samples_per_s']:>10.1f} "
                  f"{cell['p50_latency_ms']:>8.1f} {cell['mean_requests_per_batch']:>9.2f}", flush=True)
    write_report(args.out, report("backbone_throughput", backbone, args, results))


if __name__ == "__main__":
    main()
