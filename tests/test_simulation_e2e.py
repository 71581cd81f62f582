"""End to end: `anther simulate` runs `flwr run` on a private SuperLink (2 clients, 2 rounds),
with the backbone in each client process (``local``) and behind the gRPC service the
ServerApp starts (``service``, two replicas, one client on each): the same numbers in either
mode. Both runs use the tiny Qwen2-VL (pictures at their own resolution, M-RoPE positions
that travel to the backbone with the embeddings), so a second family goes through every
part of a run; the other end-to-end tests run the default LLaVA. (That the same seed
gives the same numbers run after run, tests/test_resume_e2e.py shows bit for bit.)"""

from __future__ import annotations

import math
import re

import pytest
import torch
from safetensors.torch import load_file
from simulation_run import simulate

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
