"""Processes of a running simulation killed mid-round; no round and no client is lost.

One ``anther simulate`` with the backbone as the ServerApp's child (``backbone.mode=service``)
and 3 clients, every client in every round:

- while round 1 trains, the backbone service is killed with SIGKILL: the ServerApp restarts it
  on its port with the same credentials (anther/backbone/supervisor.py) and the clients retry
  until it is back;
- while round 2 trains, one ClientApp process (a Ray actor of this run) is killed with SIGKILL:
  Flower's runtime on its own would put the dead actor back into its pool and lose its clients
  for the rest of the run; anther replaces it and runs the message again
  (anther/simulations/client_processes.py).

Every round must aggregate every client it sampled, and the final evaluation cover them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from simulation_run import SMALL, shared_home

pytestmark = pytest.mark.slow


def _busy_client_process(root: int) -> psutil.Process | None:
    """A Ray actor under ``root`` running a ClientApp now (Ray titles it ``ray::ClientAppActor.run``)."""
    try:
        for child in psutil.Process(root).children(recursive=True):
            if "ClientAppActor.run" in " ".join(child.cmdline()):
                return child
    except psutil.Error:  # a process ended while we looked
        return None
    return None


def _kill_a_busy_client_process(root: int) -> int | None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        victim = _busy_client_process(root)
        if victim is not None:
            victim.send_signal(signal.SIGKILL)
            return victim.pid
        time.sleep(0.05)
    return None


def test_a_run_survives_its_backbone_and_a_client_process_killed_mid_round(tmp_path: Path) -> None:
    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp_path))}
    cmd = [sys.executable, "-m", "anther.cli", "simulate", *SMALL, "federation.num_clients=3",
           "federation.fraction_train=1.0", "train.local_steps=6", "backbone.mode=service", "backbone.retry_s=180",
           f"output_dir={tmp_path / 'runs'}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    backbone = client = None
    try:
        for line in proc.stdout:
            lines.append(line)
            row = line.split()
            if backbone is None and row[:1] == ["0"]:  # round 0's row: round 1 is training now
                said = next(ln for ln in lines if "backbone service on" in ln)
                backbone = int(said.split("pid ")[1].split(",")[0])
                os.kill(backbone, signal.SIGKILL)
            elif client is None and row[:1] == ["1"]:  # round 1's row: round 2 is training now
                client = _kill_a_busy_client_process(proc.pid)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = "".join(lines)
    assert backbone is not None and client is not None, output[-3000:]
    assert proc.returncode == 0, output[-3000:]
    assert "died (exit code -9); restarting it on the same port" in output and "is back" in output, output[-3000:]
    assert "died (ActorDiedError); it is replaced and the message runs again" in output, output[-3000:]
    (run_dir,) = list((tmp_path / "runs").iterdir())
    result = json.loads((run_dir / "result.json").read_text())
    trained = [r for r in result["rounds"] if r["round"] > 0]
    assert [(r["clients"], r["sampled"], r["failed"], bool(r["skipped"])) for r in trained] == [(3, 3, [], False)] * 2
    assert sorted(result["clients"]["per_client"]) == ["0", "1", "2"]
    assert result["clients"]["missing"] == [] and result["clients"]["asked"] == 3
    assert "final evaluation: 3 of 3 clients answered" in output
