"""Backbone service under load: 32 concurrent clients sending train steps for 60 seconds.

A real :class:`BackboneService` (dynamic batching on) listens on 127.0.0.1; each client is a
thread with its own :class:`RemoteBackbone` and its own inputs, calling ``train_step`` in a loop
until the time is up. A client does not retry (``attempts=1``), so every error counts as a failed
request, and every reply is checked against the loss and gradient the same inputs give in
process: a wrong answer counts as a failure too. The run passes when no request failed.
Server and clients share this process (and its GIL), as in ``backbone_throughput.py``, so the
latencies include the clients' own serialisation.

    python -m anther.bench.backbone_load [--clients 32] [--seconds 60] [--out FILE]

``--out`` defaults to ``$ANTHER_HOME/bench/backbone_load/backbone_load.json``.

Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
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


@dataclass
class ClientLog:
    """What one client saw: a latency per request that succeeded, an error per one that failed."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _expected(backbone: InProcessBackbone, inputs: tuple[torch.Tensor, ...]) -> tuple[float, torch.Tensor]:
    return backbone.train_step(*inputs)


def _check(reply: tuple[float, torch.Tensor], expected: tuple[float, torch.Tensor]) -> str | None:
    """Why a reply is wrong (another client's or a corrupted answer), or None."""
    loss, grad = reply
    want_loss, want_grad = expected
    if abs(loss - want_loss) > 1e-4 * max(1.0, abs(want_loss)):
        return f"loss {loss} instead of {want_loss}"
    if grad.shape != want_grad.shape or not torch.allclose(grad, want_grad, rtol=1e-3, atol=1e-6):
        return "gradient differs from the in-process one"
    return None


def _describe(error: Exception) -> str:
    """A gRPC error as its status code and details, anything else as its type and text."""
    if isinstance(error, grpc.RpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


def _client(client: RemoteBackbone, inputs: tuple[torch.Tensor, ...], expected: tuple[float, torch.Tensor],
            start_at: threading.Barrier, stop: threading.Event, log: ClientLog) -> None:
    start_at.wait()
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            reply = client.train_step(*inputs)
        except Exception as e:  # noqa: BLE001 - a failed request is what this benchmark counts
            log.errors.append(_describe(e))
            continue
        latency = time.perf_counter() - t0
        wrong = _check(reply, expected)
        if wrong:
            log.errors.append(wrong)
        else:
            log.latencies.append(latency)


def run_load(backbone: InProcessBackbone, args: argparse.Namespace) -> dict:
    """``args.clients`` clients for ``args.seconds`` seconds against one service; the summary."""
    service = BackboneService(backbone, BatchPolicy(True, args.window_ms, args.max_batch),
                              Limits(max_calls_per_client=args.clients))  # one host, many clients
    server, port = start(service, max_workers=max(64, 2 * args.clients))
    remotes = [RemoteBackbone(f"127.0.0.1:{port}", wire_dtype=args.wire_dtype, attempts=1,
                              timeout_s=args.timeout_s) for _ in range(args.clients)]
    inputs = [random_inputs(backbone, args.batch_size, args.seq_len, seed=i) for i in range(args.clients)]
    expected = [_expected(backbone, x) for x in inputs]
    try:
        for remote, x in zip(remotes, inputs):
            remote.train_step(*x)  # warm up connections and kernels
        warm = service.batcher.stats.batches, service.batcher.stats.requests
        logs = [ClientLog() for _ in remotes]
        targets = [partial(_client, r, x, e, log=log) for r, x, e, log in zip(remotes, inputs, expected, logs)]
        # a request in flight finishes within the call timeout
        elapsed, hung = run_clients(targets, args.seconds, join_timeout_s=args.timeout_s + 5)
    finally:
        for r in remotes:
            r.close()
        server.stop(None)
        service.close()
    ok = sum(len(log.latencies) for log in logs)
    failed = sum(len(log.errors) for log in logs) + hung
    batches = service.batcher.stats.batches - warm[0]
    per_client = [len(log.latencies) for log in logs]
    return {
        "clients": args.clients, "seconds": round(elapsed, 3),
        "requests": ok + failed, "failed_requests": failed, "zero_failures": failed == 0,
        "errors": sorted({e for log in logs for e in log.errors})[:10] + (["client thread hung"] if hung else []),
        "requests_per_s": round(ok / elapsed, 2), "samples_per_s": round(ok * args.batch_size / elapsed, 2),
        **latency_ms([x for log in logs for x in log.latencies]),
        "requests_per_client_min": min(per_client), "requests_per_client_max": max(per_client),
        "mean_requests_per_batch": round((service.batcher.stats.requests - warm[1]) / max(1, batches), 2),
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, help="checkpoint; default: a fresh tiny LLaVA (no pretraining)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (threads)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the clients send requests")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per request")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--window-ms", type=float, default=5.0, help="the service's batching window")
    p.add_argument("--max-batch", type=int, default=32, help="sequences per batched pass")
    p.add_argument("--wire-dtype", default="float32")
    p.add_argument("--timeout-s", type=float, default=60.0, help="deadline of one request")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (keep the box usable)")
    p.add_argument("--out", type=Path, default=results_dir("backbone_load") / "backbone_load.json")
    args = p.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        p.error("--clients must be >= 1 and --seconds > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model_dir)
    print(f"{args.clients} clients, {args.seconds:g} s of train steps on 127.0.0.1 ...", flush=True)
    result = run_load(backbone, args)
    print(f"requests {result['requests']}, failed {result['failed_requests']}: "
          f"zero failures {'PASS' if result['zero_failures'] else 'FAIL'}")
    for error in result["errors"]:
        print(f"  error: {error}")
    print(f"throughput {result['requests_per_s']:.1f} requests/s ({result['samples_per_s']:.1f} samples/s), "
          f"latency p50 {result['p50_latency_ms']} ms, p99 {result['p99_latency_ms']} ms, "
          f"{result['mean_requests_per_batch']:.1f} requests per batched pass")
    write_report(args.out, report("backbone_load", backbone, args, result))
    return 0 if result["zero_failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
