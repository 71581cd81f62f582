"""End to end: `anther simulate` runs `flwr run` on a private SuperLink (2 clients, 2 rounds),
with the backbone in each client process (``local``) and behind the gRPC service the
ServerApp starts (``service``, two replicas, one client on each): the same numbers in either
mode. Both runs use the tiny Qwen2-VL (pictures at their own resolution, M-RoPE positions
that travel to the backbone with the embeddings), so a second family goes through every
part of a run; the other end-to-end tests run the default LLaVA. (That the same seed
gives the same numbers run after run, tests/test_resume_e2e.py shows bit for bit.)"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from simulation_run import shared_home, simulate

pytestmark = pytest.mark.slow

GENERATE = ["eval.generate=true", "eval.max_new_tokens=2", "model.tiny_family=qwen2_vl"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A whole-model run and a service-mode run (two backbone replicas) of the same experiment."""
    modes = {"local-a": ["backbone.mode=in_process"], "service": ["backbone.mode=service", "backbone.replicas=2"]}
    return {name: simulate(tmp_path_factory.mktemp(name), [*GENERATE, *overrides])
            for name, overrides in modes.items()}


def _adapters(run_dir):
    return load_file(str(run_dir / "checkpoints" / "round-0002" / "adapters.safetensors"))


def _metrics(result):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in result["rounds"]]


def test_flwr_run_simulation_trains_and_records(runs):
    run_dir, result = runs["local-a"]
    assert all(0.0 <= r["acc_mc"] <= 1.0 for r in result["rounds"])
    assert result["rounds"][1]["clients"] == 2
    assert set(result["rounds"][1]["per_client"]) == {"0", "1"}
    assert result["traffic"]["adapter_bytes_up"] > 0 and result["traffic"]["activation_bytes_up"] > 0
    assert _adapters(run_dir)["text.up.weight"].abs().sum() > 0, "the global adapters did not change"
    assert (run_dir / "accuracy.png").stat().st_size > 0 and (run_dir / "loss.png").stat().st_size > 0



def test_the_terminal_shows_the_round_table_and_the_log_keeps_the_rest(runs):
    """Flower's and Ray's own lines (each printed twice by Flower, DEBUG lines, the ClientApp
    process's lines and its progress bars) go to the run folder's flower.log, not to the terminal."""
    run_dir, _ = runs["local-a"]
    terminal = (run_dir.parents[1] / "simulate.log").read_text()
    assert "acc (mc)" in terminal and f"anther: run folder {run_dir}" in terminal
    assert not re.search(r"^\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2}:", terminal, re.MULTILINE)
    assert "DEBUG" not in terminal and "Loading weights" not in terminal and "ClientAppActor" not in terminal
    kept = (run_dir / "flower.log").read_text()
    assert "(ClientAppActor pid=" in kept and "Loading weights" in kept and "acc (mc)" in kept


def test_service_mode_trains_like_local_mode(runs):
    """The same rounds through two replicas of the TLS backbone service: losses and adapters agree
    to float tolerance, the activation traffic is what the wire carried, and each replica served
    requests."""
    (dir_l, local), (dir_s, service) = runs["local-a"], runs["service"]
    log = (dir_s.parents[1] / "simulate.log").read_text()
    served = [int(n) for n in re.findall(r"stopped after (\d+) requests", log)]
    assert len(served) == 2 and all(n > 0 for n in served), served
    for lr, sr in zip(local["rounds"][1:], service["rounds"][1:]):
        assert math.isclose(lr["train_loss"], sr["train_loss"], rel_tol=1e-4)
        assert sr["activation_bytes_up"] > 0 and sr["activation_bytes_down"] > 0
    adapters_l, adapters_s = _adapters(dir_l), _adapters(dir_s)
    assert all(torch.allclose(adapters_l[k], adapters_s[k], atol=1e-5) for k in adapters_l)


def test_a_service_mode_run_resumes_with_a_service_of_its_own(runs, tmp_path):
    """The run folder keeps the config as given, not the service's one-off address and
    credentials: a resumed run starts its service on a free port with fresh credentials, even
    while the port the first run used is taken."""
    run_dir, _ = runs["service"]
    saved = OmegaConf.load(run_dir / "config.yaml").backbone
    assert saved.address is None and saved.replica_addresses is None
    assert saved.ca_cert is None and saved.token_file is None
    log = (run_dir.parents[1] / "simulate.log").read_text()
    old_port = int(re.search(r"backbone service on 127\.0\.0\.1:(\d+)", log).group(1))
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", old_port))
        taken.listen()
        env = {**os.environ, "ANTHER_HOME": str(shared_home(run_dir.parents[1]))}
        proc = subprocess.run([sys.executable, "-m", "anther.cli", "simulate", "--resume", str(run_dir)], env=env,
                              capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    resumed = json.loads((run_dir / "result.json").read_text())
    assert resumed["finished"] is True and resumed["resumed_from"] == [2]
    assert f"127.0.0.1:{old_port}" not in proc.stdout
