"""End to end: `anther simulate` runs `flwr run` on a private SuperLink (2 clients, 2 rounds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SMALL = ["federation.num_clients=2", "federation.rounds=2", "train.local_steps=3", "train.batch_size=4",
         "data.train_size=60", "data.test_size=16", "eval.server_test_size=16", "eval.max_new_tokens=2",
         "model.tiny_pretrain_steps=0"]


def _simulate(home: Path, out: Path) -> dict:
    env = {**os.environ, "ANTHER_HOME": str(home)}
    cmd = [sys.executable, "-m", "anther.cli", "simulate", *SMALL, f"output_dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = list(out.iterdir())
    return {"dir": run_dir, "result": json.loads((run_dir / "result.json").read_text()), "log": proc.stdout}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    home = tmp_path_factory.mktemp("anther-home")
    return [_simulate(home, tmp_path_factory.mktemp(f"runs{i}")) for i in range(2)]


def test_flwr_run_simulation_trains_and_records(two_runs):
    run = two_runs[0]
    result = run["result"]
    assert result["finished"] is True
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2]
    assert all(0.0 <= r["acc_mc"] <= 1.0 for r in result["rounds"])
    assert result["rounds"][1]["clients"] == 2
    assert result["traffic"]["adapter_bytes_up"] > 0 and result["traffic"]["activation_bytes_up"] > 0
    final = load_file(str(run["dir"] / "checkpoints" / "round-0002" / "adapters.safetensors"))
    assert final["text.up.weight"].abs().sum() > 0, "the global adapters did not change from their zero init"
    assert (run["dir"] / "accuracy.png").stat().st_size > 0 and (run["dir"] / "loss.png").stat().st_size > 0
    assert "acc (mc)" in run["log"], "the per-round table was not shown"


def test_same_seed_same_numbers(two_runs):
    def metrics(run):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in run["result"]["rounds"]]

    assert metrics(two_runs[0]) == metrics(two_runs[1])
    a = load_file(str(two_runs[0]["dir"] / "checkpoints" / "round-0002" / "adapters.safetensors"))
    b = load_file(str(two_runs[1]["dir"] / "checkpoints" / "round-0002" / "adapters.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
