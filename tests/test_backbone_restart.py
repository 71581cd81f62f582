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

from anther.client.local_training import LocalTraining
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
    return train_adapters(runtime.encoder, runtime.backbone, samples, LocalTraining(steps=1, batch_size=4, lr=1e-2),
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

