#!/usr/bin/env python3
"""Every GPU measurement anther's docs ask for, in one run on a CUDA machine; prints one JSON.

    python scripts/cuda_check.py [--out DIR] [--dry-run]

Run it from a checkout with anther installed (``python3 scripts/quickstart.py test`` sets up
``.venv``; on a GPU machine it installs the CUDA build of PyTorch; ``pip install bitsandbytes``
for the quantised backbones). It runs, each as the command a user would type:

1. the TrainStep throughput and MFU bench (``anther bench perf sections=[trainstep]``);
2. ``anther bench real-shape`` for LLaVA-1.5-7B and Qwen2-VL-7B at full depth, clients and
   backbone on the GPU (bf16 weights, bf16 wire);
3. the same round for LLaVA-1.5-7B with the backbone in 8-bit and in 4-bit (bitsandbytes);
4. with two GPUs or more, the round with two backbone service replicas (one per GPU).

It prints one JSON object (each step's command, exit status and result) to paste into
docs/bench/, and writes it to ``OUT/cuda_check.json``. ``--dry-run`` prints the commands only;
without a CUDA device it stops before running anything. Nothing in the tests or CI needs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ANTHER = [sys.executable, "-m", "anther.cli"]
ON_GPU = ["model.client_device=cuda", "model.device=cuda"]


def steps(out: Path, gpus: int) -> list[tuple[str, list[str], Path]]:
    """(name, command, the JSON it writes) of every measurement, for a machine with ``gpus`` GPUs."""
    def real_shape(name: str, models: list[str], layers: int, extra: list[str]) -> tuple[str, list[str], Path]:
        folder = out / name
        return (name, [*ANTHER, "bench", "real-shape", "--models", *models, "--decoder-layers", str(layers),
                       "--steps", "4", "--out", str(folder), "--set", *ON_GPU, *extra], folder / "real_shape.json")

    plan = [("trainstep", [*ANTHER, "bench", "perf", "sections=[trainstep]", "--out", str(out / "trainstep")],
             out / "trainstep" / "perf.json"),
            real_shape("real_shape_llava", ["llava-1.5-7b"], 32, []),
            real_shape("real_shape_qwen2_vl", ["qwen2-vl-7b"], 28, []),
            real_shape("backbone_8bit", ["llava-1.5-7b"], 32, ["backbone.quantization=8bit"]),
            real_shape("backbone_4bit", ["llava-1.5-7b"], 32, ["backbone.quantization=4bit"])]
    if gpus >= 2:
        plan.append(real_shape("two_replicas", ["llava-1.5-7b"], 32,
                               ["backbone.replicas=2", "backbone.devices=[cuda:0,cuda:1]"]))
    return plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("cuda-check"))
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    plan = steps(args.out.resolve(), max(gpus, 1) if args.dry_run else gpus)
    if args.dry_run:
        print("\n".join(" ".join(command) for _, command, _ in plan))
        return 0
    if gpus == 0:
        print("cuda_check: no CUDA device is visible to this process; run it on a GPU machine", file=sys.stderr)
        return 2
    report = {"gpus": [torch.cuda.get_device_name(i) for i in range(gpus)], "torch": torch.__version__, "steps": {}}
    for name, command, result in plan:
        print(f"cuda_check: {name}: {' '.join(command)}", file=sys.stderr, flush=True)
        done = subprocess.run(command, check=False)
        report["steps"][name] = {"command": " ".join(command), "exit": done.returncode,
                                 "result": json.loads(result.read_text()) if result.is_file() else None}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if all(step["exit"] == 0 for step in report["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
