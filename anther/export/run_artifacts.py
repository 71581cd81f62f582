"""A finished (or stopped) run's folder, read back: its config, its record and a round's adapters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from anther.core.config import read_saved_config
from anther.server.checkpoint import checkpoint_rounds, load_checkpoint


class ExportError(ValueError):
    """A run folder or an export cannot give what was asked; the message says why."""


@dataclass
class RunArtifacts:
    """One run folder: ``config.yaml``, ``result.json`` and ``checkpoints/round-NNNN``."""

    run_dir: Path
    cfg: DictConfig
    result: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path) -> RunArtifacts:
        run_dir = Path(run_dir).expanduser()
        for name in ("config.yaml", "result.json"):
            if not (run_dir / name).is_file():
                raise ExportError(f"{run_dir} is not a run folder: it has no {name}")
        return cls(run_dir, read_saved_config(run_dir / "config.yaml"),
                   json.loads((run_dir / "result.json").read_text()))

    def rounds(self) -> list[int]:
        return checkpoint_rounds(self.run_dir)

    def adapters(self, server_round: int | None = None) -> tuple[int, dict[str, torch.Tensor]]:
        """The global adapters after ``server_round`` (default: the last checkpointed round)."""
        rounds = self.rounds()
        if not rounds:
            raise ExportError(f"{self.run_dir} has no checkpoint: the run stopped before its first round")
        chosen = rounds[-1] if server_round is None else server_round
        if chosen not in rounds:
            raise ExportError(f"{self.run_dir} has no checkpoint of round {chosen}; it has rounds "
                              f"{rounds[0]}..{rounds[-1]}")
        ckpt = load_checkpoint(self.run_dir, chosen)
        return chosen, dict(ckpt.adapters)

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        return next((r for r in self.result.get("rounds", []) if r.get("round") == server_round), {})
