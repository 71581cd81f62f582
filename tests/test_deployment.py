"""A real deployment on one host: SuperLink, three SuperNodes and the backbone service, all over TLS.

docs/deployment.md's one-host script, run by bash as printed there: ``anther certs`` makes the
federation's CA, server certificate and one bearer token per site; ``anther backbone serve``
serves the frozen LLM; ``flower-superlink`` and three ``flower-supernode`` processes (each with
its own port, partition and token) use the same CA for Flower's own TLS; ``flwr run`` runs one
round with ``backbone.mode=remote``. It runs in a network namespace of its own, so its fixed
ports meet nobody else's, and stops every process it started on its way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from simulation_run import shared_home
from transformers import AutoConfig

from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import initial_adapter_state

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "deployment.md"
SITES = ["site-0", "site-1", "site-2"]
# One round: the recipes' claim is that every site and the evaluator reach the SuperLink and the
# backbone as printed; rounds after the first, with a ClientApp process per message, are
# tests/test_faults_e2e.py's (two rounds on the same kind of deployment).
SMALL = [
    "federation.rounds=1",
    "federation.fraction_train=1.0",
    "federation.round_timeout_s=240",
    "train.local_steps=2",
    "train.batch_size=4",
    "data.train_size=60",
    "data.test_size=16",
    "eval.server_test_size=16",
    "eval.max_new_tokens=2",
]


class Processes:
    """Long-running processes of the test, each in its own session, each logging to a file."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with code {proc.returncode}\n{self.tails()}")

    def stop(self, name: str) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def tails(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in sorted(self.logs.glob("*.log")))


@contextlib.contextmanager
def processes(logs: Path, env: dict[str, str]) -> Iterator[Processes]:
    procs = Processes(logs, env)
    try:
        yield procs
    finally:
        procs.stop_all()


def _wait(ready, what: str, procs: Processes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        procs.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready after {timeout_s} s\n{procs.tails()}")
        time.sleep(0.3)


def recipe(name: str) -> str:
    """The bash block docs/deployment.md marks ``<!-- recipe: NAME -->``, as printed there."""
    text = DOC.read_text()
    after = text.split(f"<!-- recipe: {name} -->", 1)[1]
    return after.split("```bash\n", 1)[1].split("```", 1)[0]


def _in_a_network_of_its_own(command: list[str]) -> list[str]:
    """``command`` in a private network namespace with only its own loopback up, so that the
    recipe's fixed ports (50051, 8000, 9094-9096) cannot meet another test's."""
    namespace = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    return [*namespace, "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None,
                    reason="needs util-linux unshare and iproute2 ip")
def test_the_one_host_recipe_runs_as_printed(tiny_model_dir: Path, tmp_path: Path) -> None:
    """docs/deployment.md's one-host script, run by bash exactly as printed (with the tiny model
    and a short run through its MODEL and EXTRA variables): the run finishes, every site trains
    every round, and every site and the server's evaluator reach the backbone with their own token."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (tmp_path / "deploy-one-host.sh").write_text(recipe("one-host"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "ANTHER_HOME": str(shared_home(tmp_path)), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "DEPLOY": str(deploy), "MODEL": str(tiny_model_dir), "EXTRA": " ".join(SMALL)}
    done = run_to_the_end(_in_a_network_of_its_own(["bash", str(tmp_path / "deploy-one-host.sh")]), env, 600,
                          lambda: _logs(deploy))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + _logs(deploy)

    _check_the_run(deploy, tiny_model_dir, rounds=1)


def _check_the_run(deploy: Path, tiny_model_dir: Path, rounds: int) -> None:
    """The deployment's run finished with every site in every round, the global adapters moved, and
    every site and the server's evaluator called the backbone under their own identity."""
    (run_dir,) = list((deploy / "runs").iterdir())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["finished"] is True, _logs(deploy)
    assert [r["round"] for r in result["rounds"]] == list(range(rounds + 1))
    assert all(r["clients"] == r["sampled"] == len(SITES) and not r["failed"] for r in result["rounds"][1:])
    assert result["config"]["backbone"]["mode"] == "remote"
    assert all(result["traffic"][k] > 0 for k in ("adapter_bytes_up", "adapter_bytes_down",
                                                   "activation_bytes_up", "activation_bytes_down"))
    assert sorted(result["clients"]["per_client"]) == ["0", "1", "2"]
    partition = json.loads((run_dir / "partition.json").read_text())
    assert [c["partition_id"] for c in partition["clients"]] == [0, 1, 2]

    final = load_file(str(run_dir / "checkpoints" / f"round-{rounds:04d}" / "adapters.safetensors"))
    dim = AutoConfig.from_pretrained(tiny_model_dir).get_text_config().hidden_size
    initial = initial_adapter_state(dim, NanoAdapterConfig(16, 16.0, "gelu"), seed=0)
    assert final.keys() == initial.keys()
    assert any(not torch.equal(final[k], initial[k]) for k in final), "the global adapters did not change"

    backbone_log = (deploy / "backbone.log").read_text()
    calls = backbone_log[backbone_log.rindex("calls per client:"):]
    for name in [*SITES, "evaluator"]:
        assert f"'{name}':" in calls, (f"{name} never called the backbone with its own token (does the "
                                       f"ClientApp pass its node_config to runtime_for?):\n{backbone_log[-3000:]}")


def run_to_the_end(cmd: list[str], env: dict[str, str], timeout_s: float,
                   logs: Callable[[], str]) -> subprocess.CompletedProcess:
    """``cmd`` in a session of its own, from the repository root; past ``timeout_s`` everything in
    that session is killed and the test fails with ``logs()``."""
    with subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"{cmd[-1]} did not finish in {timeout_s} s\n{logs()}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _logs(deploy: Path, chars: int = 2500) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in sorted(deploy.glob("*.log")))
