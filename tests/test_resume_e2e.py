"""Kill a real run while it writes a checkpoint, resume it, and get the uninterrupted run's result.

Three real ``anther simulate`` runs of one tiny FedAdam experiment (its server optimizer has
moments that must survive): straight through; killed with SIGKILL (the ServerApp's process
group, then the rest of the run's processes, by pid) in the middle of writing a checkpoint
after round 1's (it is stopped the moment the kernel reports the checkpoint's temporary folder,
and killed if that round's checkpoint is not complete yet); and ``anther simulate --resume`` of
the killed one. The half-written checkpoint must not count, the resumed run's final adapters
must be bitwise those of the straight run, and every round's metrics the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from simulation_run import SMALL, running, shared_home, simulate_cmd, wait_for_checkpoint

pytestmark = pytest.mark.slow

ROUNDS = 3
IN_CREATE = 0x100  # inotify: an entry was created in the watched folder
TMP_FOLDER = re.compile(r"\.round-(\d{4})\.\d+\.tmp")  # anther/server/checkpoint.py's folder being written
OVERRIDES = [o for o in SMALL if not o.startswith("federation.rounds=")] + [
    f"federation.rounds={ROUNDS}", "strategy.name=fedadam"]


def _run(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(simulate_cmd(*args), env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def _only_run_dir(out: Path) -> Path:
    (run_dir,) = list(out.iterdir())
    return run_dir


def _serverapp(root: psutil.Process) -> psutil.Process | None:
    """The process running the ServerApp: ``flwr-simulation`` (which hosts it in a simulation)
    or ``flwr-serverapp``."""
    for p in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(name in part for part in p.cmdline() for name in ("flwr-simulation", "flwr-serverapp")):
                return p
    return None


def _creations(folder: Path) -> Iterator[str]:
    """Names of entries created in ``folder`` from now on, as the kernel reports them (inotify),
    each the moment it is made; a pause of a second yields ``""``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, str(folder).encode(), IN_CREATE) < 0:
        raise OSError(ctypes.get_errno(), f"inotify on {folder}")
    try:
        while True:
            if not select.select([fd], [], [], 1.0)[0]:
                yield ""
                continue
            events, at = os.read(fd, 65536), 0
            while at < len(events):
                _, _, _, length = struct.unpack_from("iIII", events, at)
                yield events[at + 16:at + 16 + length].rstrip(b"\0").decode()
                at += 16 + length
    finally:
        os.close(fd)


def _kill_during_a_checkpoint_write(proc: subprocess.Popen, checkpoints: Path, log: Path) -> int:
    """Stop the ServerApp (SIGSTOP) the moment it creates the temporary folder of a round's
    checkpoint; if that round's checkpoint is not complete yet, kill the whole ServerApp (SIGKILL
    to its process group) right there and return the round. Otherwise let it go on and catch the
    next round's write."""
    serverapp = _serverapp(psutil.Process(proc.pid))
    assert serverapp is not None, "no flwr-simulation process under anther simulate"
    deadline = time.monotonic() + 600
    for name in _creations(checkpoints):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        writing = TMP_FOLDER.fullmatch(name)
        if writing is None:
            continue
        os.kill(serverapp.pid, signal.SIGSTOP)
        server_round = int(writing.group(1))
        if (checkpoints / name).is_dir() and not (checkpoints / f"round-{server_round:04d}").exists():
            os.killpg(os.getpgid(serverapp.pid), signal.SIGKILL)
            return server_round
        os.kill(serverapp.pid, signal.SIGCONT)  # caught too late: this round's is whole; try the next
    raise AssertionError("unreachable")


def _kill_mid_checkpoint(out: Path, env: dict[str, str], log: Path) -> int:
    """Start a run and, after round 1's checkpoint, kill it while it writes a later round's; the
    round it was writing."""
    with running([*OVERRIDES, f"output_dir={out}"], env, log) as proc:
        checkpoints = wait_for_checkpoint(proc, out, 1, log)
        return _kill_during_a_checkpoint_write(proc, checkpoints, log)


def _rounds(result: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in result["rounds"]]


@pytest.mark.timeout(1800)
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp_path))}
    straight_out, killed_out = tmp_path / "straight", tmp_path / "killed"
    _run([*OVERRIDES, f"output_dir={straight_out}"], env)
    straight = _only_run_dir(straight_out)

    caught = _kill_mid_checkpoint(killed_out, env, tmp_path / "killed.log")
    killed = _only_run_dir(killed_out)
    assert json.loads((killed / "result.json").read_text())["finished"] is False
    done = sorted(p.name for p in (killed / "checkpoints").glob("round-*"))
    assert done == [f"round-{r:04d}" for r in range(1, caught)], done  # the one being written is not there
    assert list((killed / "checkpoints").glob(f".round-{caught:04d}.*.tmp")), "no half-written folder was left"

    _run(["--resume", str(killed)], env)
    result = json.loads((killed / "result.json").read_text())
    expected = json.loads((straight / "result.json").read_text())
    assert result["finished"] is True and result["resumed_from"] == [int(done[-1].split("-")[1])]
    assert [r["round"] for r in result["rounds"]] == list(range(ROUNDS + 1))
    assert _rounds(result) == _rounds(expected)
    final = f"checkpoints/round-{ROUNDS:04d}/adapters.safetensors"
    a, b = load_file(str(straight / final)), load_file(str(killed / final))
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((killed / "checkpoints").glob(".round-*")), "the half-written folder was not cleaned up"
    assert any(a[k].abs().sum() > 0 for k in a if ".up." in k), "the adapters never moved"
