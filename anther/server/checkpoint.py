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
from safetensors.torch import save_file


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
