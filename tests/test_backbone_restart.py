"""The backbone service dies and comes back between two training steps; the client carries on.

A real ``anther backbone serve`` process serves the tiny model; a NanoEdge client built the
way a ClientApp builds it (``runtime_for`` with ``backbone.mode=remote``) takes a training
step, the service is killed with SIGKILL and a new one started on the same port, and the
client's next step goes through once the new service has loaded: ``RemoteBackbone`` retries
UNAVAILABLE for ``backbone.retry_s`` seconds with exponential backoff.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anther.client.runtime import runtime_for
from anther.client.trainer import train_adapters
from anther.simulations.experiment import load_config
from anther.simulations.launcher import free_port

pytestmark = pytest.mark.slow


def _serve(model: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "anther.cli", "backbone", "serve", "--model", str(model), "--insecure",
           "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=30)


def _step(runtime, samples, seed: int) -> float:
    return train_adapters(runtime.encoder, runtime.backbone, samples, steps=1, batch_size=4, lr=1e-2,
                          seed=seed).loss


@pytest.mark.timeout(600)
def test_client_survives_a_backbone_restart(tiny_model_dir: Path, samples, tmp_path: Path) -> None:
    port = free_port()
    first = _serve(tiny_model_dir, port, tmp_path / "first.log")
    second = None
    try:
        cfg = load_config("default", [f"model.path={tiny_model_dir}", "backbone.mode=remote",
                                      f"backbone.address=127.0.0.1:{port}", "backbone.insecure=true",
                                      "backbone.retry_s=180", "adapter.rank=4"])
        runtime = runtime_for(cfg)  # connects, retrying until the first service has loaded
        loss_before = _step(runtime, samples, seed=0)
        adapters_before = {k: v.clone() for k, v in runtime.edge.adapter_state().items()}

        _stop(first, signal.SIGKILL)  # the service crashes ...
        second = _serve(tiny_model_dir, port, tmp_path / "second.log")  # ... and is restarted
        started = time.monotonic()
        loss_after = _step(runtime, samples, seed=1)  # UNAVAILABLE until it has loaded; retried
        waited = time.monotonic() - started

        assert math.isfinite(loss_before) and math.isfinite(loss_after)
        after = runtime.edge.adapter_state()
        assert any(not torch.equal(after[k], adapters_before[k]) for k in after), "the second step did nothing"
        assert second.poll() is None
        assert waited > 0.2, "the step cannot have reached a service that had not started yet"
    finally:
        _stop(first, signal.SIGKILL)
        if second is not None:
            _stop(second, signal.SIGTERM)
    assert "stopped after" in (tmp_path / "second.log").read_text()  # the restarted service served it
    log = (tmp_path / "second.log").read_text()
    served = int(log.split("stopped after ")[1].split(" requests")[0])
    assert served >= 1, log


def test_a_run_survives_its_backbone_killed_mid_round_with_no_round_lost(tmp_path: Path) -> None:
    """``anther simulate`` with the backbone as the ServerApp's child: SIGKILL the child while round 1
    trains; the supervisor restarts it on its port, the clients retry, and every round aggregates
    every sampled client."""
    import json

    from simulation_run import SMALL, shared_home

    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp_path))}
    cmd = [sys.executable, "-m", "anther.cli", "simulate", *SMALL, "backbone.mode=service", "train.local_steps=6",
           "backbone.retry_s=180", f"output_dir={tmp_path / 'runs'}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, killed = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if killed is None and line.strip().startswith("0 ") and "pid" in "".join(lines):  # round 0 is done
                pid = int(next(ln for ln in lines if "backbone service on" in ln).split("pid ")[1].split(",")[0])
                os.kill(pid, signal.SIGKILL)
                killed = pid
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines)
    assert killed is not None, output[-3000:]
    assert proc.returncode == 0, output[-3000:]
    assert "died (exit code -9); restarting it on the same port" in output and "is back" in output
    (run_dir,) = list((tmp_path / "runs").iterdir())
    result = json.loads((run_dir / "result.json").read_text())
    trained = [r for r in result["rounds"] if r["round"] > 0]
    assert len(trained) == 2 and all(r["clients"] == r["sampled"] == 2 and not r["failed"] for r in trained)
    assert not any(r["skipped"] for r in trained)
