"""A real deployment on one host: SuperLink, three SuperNodes and the backbone service, all over TLS.

Follows docs/deployment.md step by step, on 127.0.0.1 and free ports: ``anther certs``
makes the federation's CA, server certificate and one bearer token per site;
``anther backbone serve`` serves the tiny model's frozen LLM; ``flower-superlink`` and
three ``flower-supernode`` processes (each with its own partition and token in
``--node-config``) use the same CA for Flower's own TLS; ``flwr run`` runs two rounds
with ``backbone.mode=remote``. Every process is started in its own session and
killed by its pid whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file
from simulation_run import shared_home
from transformers import AutoConfig

from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import initial_adapter_state
from anther.simulations.launcher import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SITES = ["site-0", "site-1", "site-2"]
SMALL = [
    "federation.rounds=2",
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


def _superlink_healthy(port: int, ca: Path) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"https://127.0.0.1:{port}/health", timeout=1,
                         verify=ssl.create_default_context(cafile=str(ca))).is_success
    return False


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "anther.cli", *args]


@pytest.mark.timeout(480)
def test_two_rounds_on_real_flower_processes_with_a_tls_backbone(tiny_model_dir: Path, tmp_path: Path) -> None:
    creds, logs, runs = tmp_path / "creds", tmp_path / "logs", tmp_path / "runs"
    logs.mkdir()
    flwr_home = tmp_path / "flwr-home"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_HOME": str(flwr_home), "ANTHER_HOME": str(shared_home(tmp_path)),
           "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(_cli("certs", "--out", str(creds), "--clients", ",".join([*SITES, "evaluator"])),
                   env=env, cwd=REPO, check=True, capture_output=True, timeout=60)
    ca = creds / "ca.pem"
    link_port, backbone_port = free_port(), free_port()

    with processes(logs, env) as procs:
        ready = tmp_path / "backbone-ready.json"
        procs.start("backbone", _cli("backbone", "serve", "--model", str(tiny_model_dir), "--host", "127.0.0.1",
                                     "--port", str(backbone_port), "--tls-dir", str(creds),
                                     "--ready-file", str(ready)))
        procs.start("superlink", ["flower-superlink", "--ssl-certfile", str(creds / "server.pem"),
                                  "--ssl-keyfile", str(creds / "server.key"), "--ssl-ca-certfile", str(ca),
                                  "--host", "127.0.0.1", "--port", str(link_port), "--database", ":flwr-in-memory:",
                                  "--disable-runtime-dependency-installation"])
        _wait(lambda: _superlink_healthy(link_port, ca), "flower-superlink", procs, 90)
        for k, site in enumerate(SITES):
            node_config = (f'partition-id={k} num-partitions={len(SITES)} '
                           f'backbone-token-file="{creds / site}.token" backbone-ca="{ca}"')
            procs.start(site, ["flower-supernode", "--root-certificates", str(ca), "--superlink",
                               f"127.0.0.1:{link_port}", "--port", str(free_port()), "--node-config", node_config])
        _wait(ready.is_file, "the backbone service", procs, 120)

        flwr_home.mkdir(exist_ok=True)
        (flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "deployment"\n\n[superlink.deployment]\n'
            f'address = "127.0.0.1:{link_port}"\nroot-certificates = "{ca}"\n')
        overrides = [*SMALL, f"federation.num_clients={len(SITES)}", f"model.path={tiny_model_dir}",
                     f"output_dir={runs}", "backbone.mode=remote", f"backbone.address=127.0.0.1:{backbone_port}",
                     f"backbone.ca_cert={ca}", f"backbone.token_file={creds / 'evaluator.token'}",
                     "backbone.wire_dtype=bfloat16"]
        run_config = f'experiment="default" overrides="{" ".join(overrides)}"'
        try:
            flwr = subprocess.run(["flwr", "run", str(REPO), "deployment", "--stream", "--run-config", run_config],
                                  env=env, cwd=tmp_path, capture_output=True, text=True, timeout=330, check=False)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"flwr run did not finish in {e.timeout} s\n{procs.tails()}") from e
        assert flwr.returncode == 0, flwr.stdout[-4000:] + flwr.stderr[-2000:] + procs.tails()
        procs.stop("backbone")  # it logs who called it as it stops
        backbone_log = (logs / "backbone.log").read_text()

    (run_dir,) = list(runs.iterdir())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["finished"] is True, flwr.stdout[-3000:]
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2]
    assert all(0.0 <= r["acc_mc"] <= 1.0 for r in result["rounds"]), "accuracy was not recorded every round"
    assert all(r["clients"] == len(SITES) for r in result["rounds"][1:])
    assert result["config"]["backbone"]["mode"] == "remote"
    assert all(result["traffic"][k] > 0 for k in ("adapter_bytes_up", "adapter_bytes_down",
                                                   "activation_bytes_up", "activation_bytes_down"))

    final = load_file(str(run_dir / "checkpoints" / "round-0002" / "adapters.safetensors"))
    dim = AutoConfig.from_pretrained(tiny_model_dir).get_text_config().hidden_size
    initial = initial_adapter_state(dim, NanoAdapterConfig(16, 16.0, "gelu"), seed=0)
    assert final.keys() == initial.keys()
    assert any(not torch.equal(final[k], initial[k]) for k in final), "the global adapters did not change"

    # every site reached the backbone with its own token, and the server's evaluator with its own
    calls = backbone_log[backbone_log.rindex("calls per client:"):]
    for name in [*SITES, "evaluator"]:
        assert f"'{name}':" in calls, (f"{name} never called the backbone with its own token (does the "
                                       f"ClientApp pass its node_config to runtime_for?):\n{backbone_log[-3000:]}")
