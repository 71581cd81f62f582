"""The backbone service as a child process of the ServerApp (``backbone.mode=service``).

The ServerApp starts ``anther backbone serve`` in its own process, so the frozen LLM
computes beside (not inside) the round loop, and waits until it listens. The child
reports its port through a ready file (so it can take any free port) and exits by
itself if the ServerApp dies without stopping it. The service always runs TLS with
bearer tokens: from ``backbone.tls_dir`` (made by ``anther certs``) or, by default, a
CA and server certificate made for this run alone in a private temporary folder. A
token for the run itself (the server's evaluator and, in a simulation, every client)
is made each time; deployed sites use their own tokens from the credentials folder,
named in their node config. The clients learn the address, CA and token *file* from
the run config; the secret itself never travels in a Flower message.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from omegaconf import DictConfig, OmegaConf

from anther.backbone.certs import TOKENS_FILE, make_certs, write_tokens
from anther.core.config import WILDCARD_HOSTS, split_address
from anther.core.files import write_json_atomic

RUN_CLIENT = "anther-run"  # the token name of the run's own callers


def announce_ready(ready_file: Path, port: int) -> None:
    """Child side: say the service listens on ``port`` (written atomically, read by the parent)."""
    write_json_atomic(ready_file, {"port": port, "pid": os.getpid()})


def stop_with_parent(server: grpc.Server, parent_pid: int, poll_s: float = 1.0) -> None:
    """Child side: stop serving once ``parent_pid`` is no longer this process's parent."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        server.stop(grace=1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child_env() -> dict[str, str]:
    """This process's environment, with the ``anther`` it imported first on the path: under
    Flower that is the installed app's copy, which the child must run too."""
    source = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _tls_folder(b: DictConfig, workdir: Path, host: str) -> Path:
    """The folder with ca.pem, server.pem and server.key the service uses."""
    if b.tls_dir is None:
        advertised_host = split_address(b.advertise_address)[0] if b.advertise_address else host
        names = [n.strip("[]") for n in (host, advertised_host) if n not in WILDCARD_HOSTS]
        make_certs(workdir, server_names=names)
        return workdir
    folder = Path(b.tls_dir).expanduser().resolve()
    missing = [n for n in ("ca.pem", "server.pem", "server.key") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"backbone.tls_dir={folder} has no {', '.join(missing)} "
                                f"(make it with: anther certs --out {folder})")
    return folder


def _serve_command(cfg: DictConfig, tls: Path, tokens: Path, host: str, port: int, ready: Path,
                   device: str) -> list[str]:
    b = cfg.backbone
    cmd = [sys.executable, "-m", "anther.cli", "backbone", "serve", "--model", str(cfg.model.path),
           "--host", host, "--port", str(port), "--tls-dir", str(tls), "--tokens", str(tokens),
           "--dtype", cfg.model.dtype, "--device", device, "--autocast", cfg.model.autocast,
           "--quantization", b.quantization,
           "--window-ms", str(b.window_ms), "--max-batch", str(b.max_batch),
           "--max-request-tokens", str(b.max_request_tokens), "--max-calls-per-client", str(b.max_calls_per_client),
           "--max-inflight-mib", str(b.max_inflight_mib), "--read-timeout-s", str(b.read_timeout_s),
           "--ready-file", str(ready), "--parent-pid", str(os.getpid())]
    return cmd if b.batching else [*cmd, "--no-batching"]


def wait_ready(proc: subprocess.Popen, ready: Path, log: Path, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while not ready.is_file():
        if proc.poll() is not None:
            raise RuntimeError(f"the backbone service exited with code {proc.returncode} before it "
                               f"listened:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the backbone service did not listen within backbone.startup_timeout_s="
                               f"{timeout_s}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return int(json.loads(ready.read_text())["port"])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Replica:
    """One backbone service process, kept running: when it dies before the run stops it, it is
    started again on the same port with the same credentials, up to ``MAX_RESTARTS`` times with a
    growing pause, each restart logged. Clients retry an unavailable backbone for
    ``backbone.retry_s`` seconds, so the round they are in carries on."""

    MAX_RESTARTS, FIRST_PAUSE_S = 5, 1.0

    def __init__(self, command: list[str], ready: Path, log: Path, startup_timeout_s: float, name: str) -> None:
        self.command, self.ready, self.log, self.name = command, ready, log, name
        self.startup_timeout_s, self.restarts = startup_timeout_s, 0
        self._stopping = threading.Event()
        self.proc = self._launch()

    def _launch(self) -> subprocess.Popen:
        self.ready.unlink(missing_ok=True)
        with self.log.open("a") as out:
            return subprocess.Popen(self.command, env=_child_env(), stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> int:
        """The port it listens on; from then on it is restarted on that port if it dies."""
        port = wait_ready(self.proc, self.ready, self.log, self.startup_timeout_s)
        self.command = _with_port(self.command, port)
        threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True).start()
        return port

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            if self.proc.poll() is None:
                continue
            if self.restarts >= self.MAX_RESTARTS:
                print(f"anther: {self.name} died (exit code {self.proc.returncode}) after {self.restarts} "
                      "restarts; not restarting it again", flush=True)
                return
            pause = self.FIRST_PAUSE_S * 2 ** self.restarts
            self.restarts += 1
            print(f"anther: {self.name} died (exit code {self.proc.returncode}); restarting it on the same port "
                  f"in {pause:.0f} s (restart {self.restarts} of at most {self.MAX_RESTARTS})", flush=True)
            if self._stopping.wait(pause):
                return
            self.proc = self._launch()
            try:
                wait_ready(self.proc, self.ready, self.log, self.startup_timeout_s)
                print(f"anther: {self.name} is back (pid {self.proc.pid})", flush=True)
            except (RuntimeError, TimeoutError) as e:
                print(f"anther: {self.name} did not come back: {str(e).splitlines()[0]}", flush=True)

    def stop(self) -> None:
        self._stopping.set()
        _stop(self.proc)


def _with_port(command: list[str], port: int) -> list[str]:
    """``command`` with its ``--port`` set to ``port`` (a restart binds the port clients know)."""
    at = command.index("--port") + 1
    return [*command[:at], str(port), *command[at + 1:]]


@contextlib.contextmanager
def backbone_for_run(cfg: DictConfig) -> Iterator[DictConfig]:
    """For ``backbone.mode=service``: start the service (``backbone.replicas`` processes, one per
    device of ``backbone.devices``), yield ``cfg`` with ``backbone.address`` (replica 0, the
    server's evaluator's), ``replica_addresses``, ``ca_cert`` and ``token_file`` pointing at
    them, restart any that dies while the run goes on (:class:`Replica`), and stop them
    afterwards. Other modes: ``cfg``."""
    if cfg.backbone.mode != "service":
        yield cfg
        return
    b = cfg.backbone
    host, port = split_address(b.address or "127.0.0.1:0")
    devices = list(b.devices or [cfg.model.device] * b.replicas)
    workdir = Path(tempfile.mkdtemp(prefix="anther-backbone-"))  # mode 0700: the run token lives here
    replicas: list[Replica] = []
    try:
        tls = _tls_folder(b, workdir, host)
        token_file = write_tokens(workdir, [RUN_CLIENT])[RUN_CLIENT]
        for i, device in enumerate(devices):  # all start loading at once, then each is awaited
            suffix = f"-{i}" if i else ""
            command = _serve_command(cfg, tls, workdir / TOKENS_FILE, host, port + i if port else 0,
                                     workdir / f"ready{suffix}.json", device)
            replicas.append(Replica(command, workdir / f"ready{suffix}.json", workdir / f"backbone{suffix}.log",
                                    b.startup_timeout_s, f"backbone service {i}"))
        addresses = [_advertised(b, host, replica.wait_ready(), i) for i, replica in enumerate(replicas)]
        served = cfg.copy()
        OmegaConf.update(served, "backbone.address", addresses[0])
        OmegaConf.update(served, "backbone.replica_addresses", addresses)
        OmegaConf.update(served, "backbone.ca_cert", str(tls / "ca.pem"))
        OmegaConf.update(served, "backbone.token_file", str(token_file))
        for replica, address, device in zip(replicas, addresses, devices):
            print(f"anther: backbone service on {address} ({device}, pid {replica.proc.pid}, TLS)", flush=True)
        yield served
    finally:
        for replica in replicas:
            replica.stop()
            for line in replica.log.read_text().strip().splitlines()[-1:]:  # its last line: who called, how often
                print(f"anther: {line}", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)


def _advertised(b: DictConfig, host: str, bound: int, replica: int) -> str:
    """The address clients dial for ``replica``: ``backbone.advertise_address`` (its port + the
    replica's index), else the host it listens on and the port it bound."""
    if b.advertise_address is None:
        return f"{host}:{bound}"
    advertised_host, advertised_port = split_address(b.advertise_address)
    return f"{advertised_host}:{advertised_port + replica}"
