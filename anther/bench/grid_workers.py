"""``anther bench NAME --jobs N``: one grid, N runner processes, one report.

An end-to-end cell keeps about one core busy: most of its time goes to starting processes,
Ray and the model, and waiting on them. So N ordinary ``anther bench`` runners, each with its own
SuperLink, share the grid; each takes a cell by claiming it (:func:`anther.bench.grid.claim`)
before running it, in grid order. Each runner's torch gets ``cores / N`` threads (unless
``OMP_NUM_THREADS`` is set), so N runners do not oversubscribe the machine.

This process only watches: it rewrites the report as cells finish and, when it is stopped
(Ctrl-C, SIGTERM), stops every runner, which stops its SuperLink and its run. The runners are
in sessions of their own, so they get exactly one SIGTERM from here and not the terminal's
SIGINT as well.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from anther.simulations.launcher import exit_on_sigterm


def runner_env(jobs: int) -> dict[str, str]:
    """This environment, with torch's threads split evenly between ``jobs`` runners."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def run_runners(command: list[str], jobs: int, claims: Path, on_progress: Callable[[], object],
                poll_s: float = 5.0) -> None:
    """Start ``jobs`` copies of ``command`` (an ``anther bench`` runner; each gets ``--claims`` and
    ``--runner K``) and call ``on_progress`` every ``poll_s`` seconds until all have exited. What
    finished is read from the cells afterwards, not from their exit codes."""
    shutil.rmtree(claims, ignore_errors=True)  # an interrupted sitting's claims: its runners are gone
    claims.mkdir(parents=True)
    env = runner_env(jobs)
    procs = [subprocess.Popen([*command, "--claims", str(claims), "--runner", str(k)], env=env,
                              start_new_session=True) for k in range(1, jobs + 1)]
    try:
        with exit_on_sigterm():
            while any(p.poll() is None for p in procs):
                time.sleep(poll_s)
                on_progress()
    finally:
        _stop(procs)


def _stop(procs: list[subprocess.Popen], grace_s: float = 60.0) -> None:
    """SIGTERM each runner still running (it unwinds: its ``flwr run`` and SuperLink stop), then
    SIGKILL any that has not exited within ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
