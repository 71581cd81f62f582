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
