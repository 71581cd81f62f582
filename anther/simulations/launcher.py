"""Run an experiment as a Flower simulation: ``flwr run`` against a SuperLink we own.

``anther simulate`` starts its own ``flower-superlink --simulation`` on free loopback
ports with a private ``FLWR_HOME``, submits this app with ``flwr run --stream`` (so
the per-round table appears in the terminal), and stops that SuperLink by pid when
the run ends, whatever happens. Nothing is left running and ``~/.flwr`` is not touched.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from anther.core import protocol
from anther.core.errors import Stopped
from anther.simulations.console import Console

APP_DIR = Path(__file__).resolve().parents[2]  # the folder holding pyproject.toml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    """A console script of this environment (the venv's, even if PATH lacks it)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Let SIGTERM (``kill``, a job scheduler) unwind like Ctrl-C, so that the ``finally`` blocks
    stop the SuperLink and ``flwr run`` instead of leaving them running. (Python ignores
    ``finally`` on an unhandled SIGTERM; handlers can only be set from the main thread.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def local_superlink(flwr_home: Path) -> Iterator[dict[str, str]]:
    """A simulation SuperLink on free ports; yields the environment that reaches it. It is
    stopped on the way out, also when this process is sent SIGTERM."""
    with exit_on_sigterm(), _superlink_process(flwr_home) as env:
        yield env


@contextlib.contextmanager
def _superlink_process(flwr_home: Path) -> Iterator[dict[str, str]]:
    http_port, control_port = free_port(), free_port()
    # Flower spawns its own tools
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {
        **os.environ,
        "PATH": path,
        "FLWR_HOME": str(flwr_home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # Ray starts a Python worker per CPU when the simulation connects; Flower's ClientApp actors
        # carry a runtime environment of their own, so Ray starts other workers for them and those
        # idle ones only cost their start-up (a second of CPU each)
        "RAY_enable_worker_prestart": "0",
        "RAY_prestart_worker_first_driver": "0",
    }
    log = flwr_home / "superlink.log"
    cmd = [_bin("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
           "--control-api-address", f"127.0.0.1:{control_port}", "--host", "127.0.0.1",
           "--port", str(http_port), "--fleet-api-address", f"127.0.0.1:{free_port()}",
           "--health-server-address", f"127.0.0.1:{free_port()}", "--database", ":flwr-in-memory:",
           "--disable-runtime-dependency-installation"]
    with log.open("w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code {proc.returncode}:\n"
                                   + log.read_text()[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=1).is_success:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"flower-superlink did not become healthy in 60 s; see {log}")
            time.sleep(0.3)
        yield env
    finally:
        _stop_tree(proc)


def _stop_tree(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Stop the SuperLink's process group and every process under it (the simulation, Ray's
    services and actors, some of which start sessions of their own): SIGTERM, then SIGKILL to
    whatever is still there after ``grace_s``."""
    under: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        under = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _, alive = psutil.wait_procs(under, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def submit_run(env: dict[str, str], experiment: str, overrides: list[str], num_supernodes: int,
               app_dir: Path = APP_DIR, extra_federation_config: dict[str, str] | None = None,
               log: Path | None = None, resume: str | None = None, console: Console | None = None,
               config_dir: str | None = None) -> int:
    """``flwr run --stream`` of this app on the SuperLink ``env`` reaches (from :func:`local_superlink`;
    one SuperLink serves any number of runs, one after another); its logs go to ``log`` if given,
    else through ``console`` to the terminal (everything, without one). With ``resume`` (a run
    folder) the ServerApp continues that run with its own config.yaml instead of ``experiment``
    and ``overrides``; ``config_dir`` is where the ServerApp looks for ``experiment`` and config groups
    before the package's configs. Returns flwr's exit code."""
    app_dir = staged_app(app_dir, Path(env["FLWR_HOME"]) / "app")
    run_config = f'{protocol.RUN_EXPERIMENT}="{experiment}" {protocol.RUN_OVERRIDES}="{shlex.join(overrides)}"'
    if resume:
        run_config += f' {protocol.RUN_RESUME}="{resume}"'
    if config_dir:
        run_config += f' {protocol.RUN_CONFIG_DIR}="{config_dir}"'
    fed = {"num-supernodes": str(num_supernodes), **(extra_federation_config or {})}
    cmd = [_bin("flwr"), "run", str(app_dir), "local", "--stream", "--run-config", run_config,
           "--federation-config", " ".join(f"{k}={v}" for k, v in fed.items())]
    if log is None and console is not None:
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as proc:
            console.relay(proc.stdout)
        return proc.returncode
    with log.open("a") if log is not None else contextlib.nullcontext() as out:
        return subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                              check=False).returncode


def staged_app(app_dir: Path, staged: Path) -> Path:
    """What Flower bundles of ``app_dir`` (its ``pyproject.toml`` and the ``anther`` package), copied
    to ``staged`` unless it is there already. ``flwr run`` walks and resolves every file under the
    folder it is given before it picks the bundle's, a virtual environment's tens of thousands
    included: about 10 s of CPU a run, against 1 s for the package alone."""
    if not (app_dir / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{app_dir} has no pyproject.toml; run anther from its source checkout")
    if not staged.is_dir():
        building = staged.with_name(staged.name + ".tmp")
        shutil.rmtree(building, ignore_errors=True)
        shutil.copytree(app_dir / "anther", building / "anther", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(app_dir / "pyproject.toml", building / "pyproject.toml")
        building.rename(staged)
    return staged


def write_app(out: Path, app_dir: Path = APP_DIR) -> Path:
    """A fresh copy of the app ``flwr run`` submits at ``out`` (``anther app``), replacing one written
    there before; any other existing folder is refused, never deleted."""
    if out.exists() and sorted(p.name for p in out.iterdir()) != ["anther", "pyproject.toml"]:
        raise ValueError(f"--out {out} exists and is not an app folder anther wrote; give a new folder")
    shutil.rmtree(out, ignore_errors=True)
    return staged_app(app_dir, out)


@contextlib.contextmanager
def private_superlink() -> Iterator[dict[str, str]]:
    """:func:`local_superlink` in a fresh temporary ``FLWR_HOME``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="anther-flwr-") as home, local_superlink(Path(home)) as env:
        yield env


def flwr_run(experiment: str, overrides: list[str], num_supernodes: int, app_dir: Path = APP_DIR,
             extra_federation_config: dict[str, str] | None = None, log: Path | None = None,
             resume: str | None = None, console: Console | None = None, config_dir: str | None = None) -> int:
    """Submit the app to a private SuperLink of its own and stream its logs; returns flwr's exit code."""
    with private_superlink() as env:
        return submit_run(env, experiment, overrides, num_supernodes, app_dir, extra_federation_config, log,
                          resume, console, config_dir)
