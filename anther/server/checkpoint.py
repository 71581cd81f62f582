"""Per-round checkpoints of a run, written atomically, and the latest complete one found again.

A checkpoint is a folder ``checkpoints/round-NNNN`` holding

- ``adapters.safetensors``: the global adapters after that round;
- ``state.safetensors``: every other tensor the run needs to continue exactly (the
  strategy's server-optimizer moments, the NumPy and torch RNG states...);
- ``state.json``: everything else (round number, per-round metrics and traffic, the
  strategy's scalar state, the Python RNG states), with references into
  ``state.safetensors`` where a value is a tensor;
- ``checksums.json``: the SHA-256 of each of the three, checked when the checkpoint is read, so
  flipped bits or a truncated file are caught instead of resuming with wrong weights.

Every file is written into a temporary folder next to the final one and fsynced; the
folder is then renamed into place (one atomic ``rename``) and its parent fsynced. So a
crash at any moment leaves either the complete new checkpoint or none at all for that
round, and the previous round's checkpoint is never touched: the latest folder named
``round-NNNN`` is always complete. Temporary folders a crash left behind are ignored
and removed by the next write. A checkpoint damaged later (a disk error, a bad copy) fails its
checksums; :func:`latest_checkpoint` then falls back to the newest one that passes and says
which it skipped and why. Checkpoints written before checksums existed are read unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

if TYPE_CHECKING:
    import torch

CHECKPOINTS = "checkpoints"
ADAPTERS, TENSORS, STATE, CHECKSUMS = "adapters.safetensors", "state.safetensors", "state.json", "checksums.json"
_ROUND_DIR = re.compile(r"round-(\d{4,})")


@dataclass
class Checkpoint:
    """One complete checkpoint as read back."""

    path: Path
    server_round: int
    adapters: dict[str, torch.Tensor]  # in the order they were saved
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    skipped: list[str] = field(default_factory=list)  # newer checkpoints that failed, and why


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data and metadata to disk (a rename is durable only after
    the folder holding it is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_folder(folder: Path, adapters: dict[str, torch.Tensor], state: dict[str, Any],
                  tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file  # here: listing a run's rounds (the CLI) needs no PyTorch

    folder.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in adapters.items()}, str(folder / ADAPTERS),
              metadata={"order": json.dumps(list(adapters))})
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(folder / TENSORS))
    (folder / STATE).write_text(json.dumps(state, default=str))  # as result.json is written
    (folder / CHECKSUMS).write_text(json.dumps({name: _sha256(folder / name) for name in (ADAPTERS, TENSORS, STATE)}))
    for name in (ADAPTERS, TENSORS, STATE, CHECKSUMS):
        _fsync(folder / name)
    _fsync(folder)


def _verify(folder: Path) -> None:
    """Raise ValueError naming the first file whose SHA-256 is not the one written with it."""
    if not (folder / CHECKSUMS).is_file():
        return  # written before checkpoints carried checksums
    for name, expected in json.loads((folder / CHECKSUMS).read_text()).items():
        if _sha256(folder / name) != expected:
            raise ValueError(f"{name} does not match its checksum (damaged after it was written)")


def save_checkpoint(run_dir: Path, server_round: int, adapters: dict[str, torch.Tensor],
                    state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write round ``server_round``'s checkpoint atomically; returns its folder.

    ``state`` must be JSON-serialisable; ``tensors`` are the tensors it refers to by name.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round-{server_round:04d}"
    tmp = root / f".round-{server_round:04d}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_folder(tmp, adapters, {"round": server_round, **state}, tensors or {})
        if final.exists():  # the same round written again (a resumed run): swap, then drop the old one
            old = root / f".round-{server_round:04d}.{os.getpid()}.old"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in root.glob(".round-*"):  # left by an earlier crash mid-write
        if not stale.name.startswith(f".round-{server_round:04d}.{os.getpid()}."):
            shutil.rmtree(stale, ignore_errors=True)
    return final


def checkpoint_rounds(run_dir: Path) -> list[int]:
    """Rounds with a complete checkpoint in ``run_dir``, ascending."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    rounds = [int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _ROUND_DIR.fullmatch(p.name))]
    return sorted(rounds)


def load_checkpoint(run_dir: Path, server_round: int) -> Checkpoint:
    """Read round ``server_round``'s checkpoint; a missing or unreadable file names the folder."""
    from safetensors.torch import load_file

    folder = Path(run_dir) / CHECKPOINTS / f"round-{server_round:04d}"
    try:
        _verify(folder)
        adapters = load_file(str(folder / ADAPTERS))
        with open(folder / ADAPTERS, "rb") as f:  # safetensors keeps our key order in its metadata
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        order = json.loads(header.get("__metadata__", {}).get("order", "[]")) or list(adapters)
        state = json.loads((folder / STATE).read_text())
        tensors = load_file(str(folder / TENSORS))
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise ValueError(f"checkpoint {folder} is unreadable: {e}") from e
    return Checkpoint(folder, int(state["round"]), {k: adapters[k] for k in order}, state, tensors)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint of ``run_dir`` that reads back whole and passes its checksums (its
    ``skipped`` lists the newer ones that did not, and why), or None if there is none."""
    skipped = []
    for server_round in reversed(checkpoint_rounds(run_dir)):
        try:
            ckpt = load_checkpoint(run_dir, server_round)
        except ValueError as e:
            skipped.append(str(e))
            continue
        ckpt.skipped = skipped
        return ckpt
    if skipped:
        raise ValueError(f"no checkpoint of {run_dir} can be read: {'; '.join(skipped)}")
    return None
