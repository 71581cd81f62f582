"""A run that does not finish makes ``anther simulate`` (and ``--resume``) exit non-zero with one
line naming the cause, and leaves the cause and its traceback in the run folder. ``flwr run``
itself exits 0 when the ServerApp fails, so the outcome is read from the run folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from simulation_run import SMALL, shared_home

from anther.core.errors import RunFailed, Stopped
from anther.server.run_folder import FAILURE_FILE, LOG_FILE, failure_of, record_failure

# A strategy that breaks in round 1's aggregation: a failure only a running federation can have.
BOOM = '''
from flwr.serverapp.strategy import FedAvg


class Boom(FedAvg):
    def aggregate_train(self, server_round, replies):
        raise RuntimeError(f"boom in round {server_round}")
'''


def _anther(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp_path)),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "lab"), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "anther.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.slow
def test_a_failed_run_and_its_resume_exit_non_zero_naming_the_cause(tmp_path: Path):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "boom_lab.py").write_text(BOOM)
    out = tmp_path / "runs"
    strategy = ["~strategy.name", "+strategy._target_=boom_lab.Boom", "+strategy.min_train_nodes=1",
                "+strategy.min_available_nodes=1", "+strategy.min_evaluate_nodes=1"]
    proc = _anther(tmp_path, "simulate", *SMALL, *strategy, f"output_dir={out}")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("anther: error: the run failed: RuntimeError: boom in round 1"), proc.stderr[-2000:]
    said = proc.stdout + proc.stderr  # the terminal: the cause once, no traceback, none of Flower's exit chatter
    assert "Traceback" not in said and "Exit Code: 700" not in said and said.count("boom in round 1") == 1, said
    (run_dir,) = list(out.iterdir())
    assert json.loads((run_dir / "result.json").read_text())["finished"] is False
    assert json.loads((run_dir / FAILURE_FILE).read_text())["error"] == "RuntimeError: boom in round 1"
    assert "Traceback" in (run_dir / LOG_FILE).read_text() and "boom in round 1" in (run_dir / LOG_FILE).read_text()

    resumed = _anther(tmp_path, "simulate", "--resume", str(run_dir))
    assert resumed.returncode == 1, resumed.stderr[-2000:]
    assert "the run failed: RuntimeError: boom in round 1" in resumed.stderr.strip().splitlines()[-1]


def test_the_folder_says_how_a_run_ended(tmp_path: Path):
    assert "recorded no error" in failure_of(tmp_path)  # nothing there: stopped (killed) early
    try:
        raise ValueError("no such thing\nsecond line")
    except ValueError as e:
        record_failure(tmp_path, e)
    assert failure_of(tmp_path).startswith("ValueError: no such thing (traceback in ")
    assert "Traceback (most recent call last)" in (tmp_path / LOG_FILE).read_text()
    (tmp_path / "result.json").write_text(json.dumps({"finished": True}))
    assert failure_of(tmp_path) is None


def test_the_cli_turns_a_failed_run_into_exit_code_1_and_one_line(monkeypatch, capsys):
    from anther import cli
    from anther.simulations import runner

    def failing(experiment, overrides, **options):
        raise RunFailed("the run failed: RuntimeError: boom (traceback in /x/anther.log)")

    monkeypatch.setattr(runner, "simulate", failing)
    assert cli.main(["simulate"]) == 1
    assert capsys.readouterr().err == "anther: error: the run failed: RuntimeError: boom (traceback in /x/anther.log)\n"


@pytest.mark.parametrize(("stop", "line", "code"), [
    (KeyboardInterrupt(), "anther: stopped by SIGINT", 130),
    (Stopped(signal.SIGTERM), "anther: stopped by SIGTERM", 143),
])
def test_a_stopped_command_says_so_in_one_line_with_128_plus_the_signal(monkeypatch, capsys, stop, line, code):
    """Ctrl-C (KeyboardInterrupt) and SIGTERM (:class:`Stopped`, raised by the handler
    anther.simulations.launcher.exit_on_sigterm installs) end ``anther simulate`` with one line."""
    from anther import cli
    from anther.simulations import runner

    def stopped(experiment, overrides, **options):
        raise stop

    monkeypatch.setattr(runner, "simulate", stopped)
    assert cli.main(["simulate"]) == code
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1, err
