"""One small ``anther simulate`` (a real ``flwr run`` on a private SuperLink) for the slow tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# 2 clients, 2 rounds, a few steps on a little data, the untrained tiny model: about a minute.
SMALL = ["federation.num_clients=2", "federation.rounds=2", "train.local_steps=2", "train.batch_size=4",
         "data.train_size=40", "data.test_size=8", "eval.server_test_size=8", "eval.generate=false",
         "adapter.rank=4", "model.tiny_pretrain_steps=0"]


def shared_home(tmp_path: Path) -> Path:
    """An ``ANTHER_HOME`` that the session's slow tests share (in pytest's base temp folder, the
    parent of every test's own): the tiny model and the built-in data are made once per session,
    not once per run (a few seconds each). Runs and outputs still go to each test's own folder."""
    return tmp_path.parent / "anther-home"


def simulate(tmp_path: Path, overrides: list[str], pythonpath: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Run ``anther simulate`` with SMALL + ``overrides``; its run folder and result.json. What it
    printed is kept in ``tmp_path / "simulate.log"``."""
    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp_path))}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "anther.cli", "simulate", *SMALL, *overrides, f"output_dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    (tmp_path / "simulate.log").write_text(proc.stdout + proc.stderr)  # what the terminal showed
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = list(out.iterdir())
    result = json.loads((run_dir / "result.json").read_text())
    rounds = result["config"]["federation"]["rounds"]
    assert result["finished"] is True and [r["round"] for r in result["rounds"]] == list(range(rounds + 1))
    return run_dir, result
