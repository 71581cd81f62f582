"""The private SuperLink ``anther simulate`` starts never outlives it: stopped by pid on the
way out, also when the process holding it is killed with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HOLDER = """
import sys, time
from pathlib import Path
from anther.simulations.launcher import local_superlink
with local_superlink(Path(sys.argv[1])) as env:
    print(env["FLWR_LOCAL_CONTROL_API_PORT"], flush=True)
    time.sleep(120)
"""


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_sigterm_stops_the_superlink(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        port = holder.stdout.readline().strip()
        assert port.isdigit(), f"the holder did not start a SuperLink: {port!r}"
        address = f"127.0.0.1:{port}"
        assert _processes_mentioning(address), "no SuperLink process found while it was up"
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=60) == 128 + signal.SIGTERM
        assert _processes_mentioning(address) == []
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)


def test_client_resources_reach_flwr_run_as_federation_config():
    """``federation.client_cpus`` / ``client_gpus`` become Flower's client-resources keys; unset
    ones are left to Flower, and a ClientApp with no CPU is refused by name."""
    from anther.core.config import ConfigError, simulation_resources
    from anther.simulations.experiment import load_config

    cfg = load_config("default", ["federation.client_cpus=2", "federation.client_gpus=0.25"])
    assert simulation_resources(cfg.federation) == {"client-resources-num-cpus": "2",
                                                    "client-resources-num-gpus": "0.25"}
    # one CPU per ClientApp by default (each computes on one torch thread)
    assert simulation_resources(load_config("default").federation) == {"client-resources-num-cpus": "1"}
    unset = load_config("default", ["federation.client_cpus=null"])
    assert simulation_resources(unset.federation) == {}
    with pytest.raises(ConfigError, match="federation.client_cpus"):
        load_config("default", ["federation.client_cpus=0"])


def _tagged(tag: str) -> list[str]:
    """Processes whose environment carries ``RUN_TAG=tag``: all that a run started (Ray's too)."""
    from process_tags import tagged
    from simulation_run import RUN_TAG

    return [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in tagged(tag, RUN_TAG)]


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_a_stopped_simulation_leaves_nothing_running(tmp_path):
    """SIGTERM to anther's process group while round 1 trains (what ``timeout`` does; Ctrl-C sends
    SIGINT the same way and unwinds through the same ``finally`` blocks, see
    tests/test_exit_status.py): ``anther simulate`` says so in one line, exits 128 + 15, and no
    process it started (SuperLink, flwr run, the simulation, Ray's services and actors) is left."""
    import time

    from simulation_run import RUN_TAG, SMALL, shared_home

    how = "SIGTERM"
    tag = f"{how}-{os.getpid()}-{tmp_path.name}"
    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp_path)), RUN_TAG: tag}
    cmd = [sys.executable, "-m", "anther.cli", "simulate", *SMALL, "train.local_steps=40",
           f"output_dir={tmp_path / 'runs'}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if line.strip().startswith("0 "):  # round 0's row: round 1 is training now
                break
        assert len(_tagged(tag)) > 5, "the run's processes were not found"
        sig = getattr(signal, how)
        os.killpg(proc.pid, sig)
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, rest[-3000:]
    assert f"anther: stopped by {how}; everything it started is stopped" in rest, rest[-3000:]
    assert "Traceback" not in rest, rest[-3000:]
    deadline = time.monotonic() + 5
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _tagged(tag) == []


def test_a_superlink_that_exits_at_start_is_an_error_with_its_log(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    """A ``flower-superlink`` that dies before it is healthy (here: a program that refuses its
    arguments) fails the launch at once with its exit code and the end of its log, and the
    temporary FLWR_HOME is removed."""
    import tempfile

    from anther.simulations import launcher

    monkeypatch.setattr(launcher, "_bin", lambda name: sys.executable)  # `python --insecure ...`: exit 2
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where private_superlink makes its FLWR_HOME
    with pytest.raises(RuntimeError, match=r"flower-superlink exited with code 2:\n") as raised, \
            launcher.private_superlink():
        pytest.fail("the block ran without a SuperLink")
    assert "--insecure" in str(raised.value), raised.value  # the log's tail: python naming the option it refused
    assert not list(tmp_path.iterdir())
