"""One client's train step through ``anther backbone serve`` (its own process, 127.0.0.1) against
the same step on the same backbone in-process: what the service adds to a step.

This is how the service's threading fix was measured (docs/performance.md): before it, the
remote step of 16 sequences of 58 tokens took twice the in-process time.

    python -m anther.bench.remote_step [--batch-size 16] [--seq-len 58] [--seconds 5] [--out FILE]

``--out`` defaults to ``$ANTHER_HOME/bench/remote_step/remote_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from anther.backbone.in_process import InProcessBackbone
from anther.backbone.remote import RemoteBackbone
from anther.bench.results import results_dir
from anther.bench.service_bench import load_backbone, random_inputs, report, write_report


def ms_per_step(step: Callable[[], object], seconds: float) -> float:
    for _ in range(3):  # warm kernels and the connection
        step()
    began, n = time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        step()
        n += 1
    return round((time.perf_counter() - began) * 1000 / n, 2)


def remote_ms(model_dir: Path, inputs: tuple[torch.Tensor, ...], batching: bool, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        cmd = [sys.executable, "-m", "anther.cli", "backbone", "serve", "--model", str(model_dir), "--insecure",
               "--port", "0", "--ready-file", str(ready), *([] if batching else ["--no-batching"])]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not ready.exists():
                if server.poll() is not None:
                    raise RuntimeError(f"anther backbone serve exited with code {server.returncode}")
                time.sleep(0.2)
            with RemoteBackbone(f"127.0.0.1:{json.loads(ready.read_text())['port']}") as client:
                return ms_per_step(lambda: client.train_step(*inputs), seconds)
        finally:
            server.terminate()
            server.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=58)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=results_dir("remote_step") / "remote_step.json")
    args = p.parse_args()
    torch.set_num_threads(1)  # the client's side, as a simulated client computes
    with tempfile.TemporaryDirectory() as tmp:
        from anther.model.tiny_model import init_tiny

        model_dir = init_tiny(Path(tmp) / "tiny", pretrain_steps=0)
        backbone: InProcessBackbone = load_backbone(model_dir)
        inputs = random_inputs(backbone, args.batch_size, args.seq_len, seed=0)
        results = {"remote_batching_ms": remote_ms(model_dir, inputs, True, args.seconds),
                   "remote_no_batching_ms": remote_ms(model_dir, inputs, False, args.seconds)}
        torch.set_num_threads(os.cpu_count() or 1)  # in-process: every core, as the service has
        results["in_process_ms"] = ms_per_step(lambda: backbone.train_step(*inputs), args.seconds)
    for name, value in results.items():
        print(f"{name:>22}: {value:8.2f} ms per train step of {args.batch_size} x {args.seq_len}")
    write_report(args.out, report("remote_step", backbone, args, results))


if __name__ == "__main__":
    main()
