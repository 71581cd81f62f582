"""The disk under a run fills up mid-run: the run fails in one line naming it, loses no checkpoint,
and resumes once there is room again.

The run folder is on a 300 MiB tmpfs of its own (a private mount namespace: ``unshare -m`` as
root, ``unshare -rm`` otherwise, so nothing is mounted on the machine). Once round 1's checkpoint
is written, a filler file takes every byte left while the ServerApp is held (SIGSTOP); round 2
then cannot be recorded. ``anther
simulate`` must exit 1 with one line saying the disk is full, round 1's checkpoint must be whole,
and after the filler is deleted ``anther simulate --resume`` must finish the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from simulation_run import SMALL, shared_home

pytestmark = pytest.mark.slow

SCENARIO = r"""
import json, os, subprocess, sys, time
from pathlib import Path
import psutil

mnt, small = Path(sys.argv[1]), json.loads(sys.argv[2])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mnt)], check=True)
runs = mnt / "runs"
simulate = [sys.executable, "-m", "anther.cli", "simulate"]
run = subprocess.Popen([*simulate, *small, f"output_dir={runs}"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
deadline = time.monotonic() + 600
while not list(runs.glob("*/checkpoints/round-0001")) and run.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
# the ServerApp waits while the disk fills, so that round 2 cannot be recorded before it is full
def is_serverapp(p):
    try:
        return any("flwr-simulation" in part for part in p.cmdline())
    except psutil.Error:  # a process that ended meanwhile
        return False
serverapp = next(p for p in psutil.Process(run.pid).children(recursive=True) if is_serverapp(p))
serverapp.suspend()
filler = mnt / "filler"
with filler.open("wb", buffering=0) as f:  # every byte left: in MiBs, then pages, then bytes
    for size in (1 << 20, 1 << 12, 1):
        try:
            while True:
                f.write(b"\0" * size)
        except OSError:
            pass
serverapp.resume()
first = run.communicate(timeout=600)[0]
run_dir = next(runs.iterdir())
kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
report = {"code": run.returncode, "output": first, "checkpoints": kept}
filler.unlink()
again = subprocess.run([*simulate, "--resume", str(run_dir)], capture_output=True, text=True, timeout=600)
report |= {"resume_code": again.returncode, "resume_output": again.stdout + again.stderr,
           "result": json.loads((run_dir / "result.json").read_text())}
print("REPORT " + json.dumps(report))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_full_disk_fails_the_run_in_one_line_and_it_resumes_once_there_is_room(tmp_path: Path) -> None:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp_path))}
    namespace = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    proc = subprocess.run([*namespace, sys.executable, "-c", SCENARIO, str(mnt), json.dumps(SMALL)], env=env,
                          capture_output=True, text=True, timeout=1200, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(lines[0].removeprefix("REPORT "))

    said = report["output"]
    assert report["code"] == 1, said[-3000:]
    last = said.strip().splitlines()[-1]
    assert last.startswith("anther: error: the run failed: ") and "No space left on device" in last, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    assert report["checkpoints"] == ["round-0001"]  # whole, and nothing half-written left beside it

    assert report["resume_code"] == 0, report["resume_output"][-3000:]
    result = report["result"]
    assert result["finished"] is True and result["resumed_from"] == [1]
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2]
