"""Per-round checkpoints of the global adapters and run history, written atomically.

A checkpoint is a folder ``checkpoints/round-NNNN`` holding ``adapters.safetensors``
and ``state.json``; it is written under a temporary name and renamed into place,
so a crash mid-write leaves the previous checkpoint as the latest complete one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(run_dir: Path, server_round: int, adapters: dict[str, torch.Tensor],
                    state: dict[str, Any]) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"round-{server_round:04d}"
    tmp = root / f".round-{server_round:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in adapters.items()}, str(tmp / "adapters.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"round": server_round, **state}, default=str))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob("round-*") if (p / "state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return load_file(str(Path(path) / "adapters.safetensors")), json.loads((Path(path) / "state.json").read_text())
