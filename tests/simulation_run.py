"""One small ``anther simulate`` (a real ``flwr run`` on a private SuperLink) for the slow tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from process_tags import kill_tagged

RUN_TAG = "ANTHER_TEST_RUN"  # the tag of one run's processes, apart from its test's own

# A whole machine's CPUs per simulated ClientApp, so Ray runs one ClientApp process: the clients of a
# SMALL run train in turn in it. Each process costs seconds to start (Python, torch, transformers,
# anther, the model) and a SMALL run's training takes well under one, so a second one made a run on
# 2 cores about 20 s slower, not faster.
ONE_CLIENT_PROCESS = f"federation.client_cpus={os.cpu_count() or 1}"

# 2 clients, 2 rounds, a few steps on a little data, the untrained tiny model: about half a minute.
SMALL = ["federation.num_clients=2", "federation.rounds=2", "train.local_steps=2", "train.batch_size=4",
         "data.train_size=40", "data.test_size=8", "eval.server_test_size=8", "eval.generate=false",
         "adapter.rank=4", "model.tiny_pretrain_steps=0", ONE_CLIENT_PROCESS]


def shared_home(tmp_path: Path) -> Path:
    """An ``ANTHER_HOME`` that the session's slow tests share (in pytest's base temp folder, the
    parent of every test's own): the tiny model and the built-in data are made once per session,
    not once per run (a few seconds each). Runs and outputs still go to each test's own folder."""
    return tmp_path.parent / "anther-home"


def simulate(tmp_path: Path, overrides: list[str], pythonpath: Path | None = None,
             experiment: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Run ``anther simulate [-e experiment]`` with SMALL + ``overrides``; its run folder and result.json.
    What it printed is kept in ``tmp_path / "simulate.log"``."""
    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp_path))}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "runs"
    chosen = ["-e", str(experiment)] if experiment is not None else []
    cmd = [sys.executable, "-m", "anther.cli", "simulate", *chosen, *SMALL, *overrides, f"output_dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    (tmp_path / "simulate.log").write_text(proc.stdout + proc.stderr)  # what the terminal showed
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = list(out.iterdir())
    result = json.loads((run_dir / "result.json").read_text())
    rounds = result["config"]["federation"]["rounds"]
    assert result["finished"] is True and [r["round"] for r in result["rounds"]] == list(range(rounds + 1))
    return run_dir, result


@dataclass(frozen=True)
class SharedRun:
    """A run that tests of more than one file read (only read), made once per pytest worker by the
    first test that asks for it: its overrides of SMALL, and the files that read it, which
    tests/conftest.py schedules on one worker as one unit, so that the run is made once."""

    overrides: tuple[str, ...]
    readers: tuple[str, ...]


SHARED_RUNS = {
    # LoRA in the LLM, Fisher-merged
    "whole_model": SharedRun(("mode=whole_model", "strategy.name=fisher", "lora.rank=4"),
                             ("test_whole_model_mode.py", "test_export_e2e.py")),
    # FedDPA's pair on clients that never see a picture (the image adapter stays the identity, so the
    # run merges exactly), with every tracker
    "personalised_text_only": SharedRun(
        ("scenario.modality=cross", "scenario.image_share=0.0", "partition.scheme=iid", "strategy.name=personalised",
         "+strategy.personal_steps=2", "tracking=[tensorboard,mlflow,wandb]", "eval.generate=true"),
        ("test_export_e2e.py", "test_strategies_e2e.py")),
}
_made: dict[str, tuple[Path, dict[str, Any]]] = {}


def shared_run(factory: pytest.TempPathFactory, name: str) -> tuple[Path, dict[str, Any]]:
    """The run folder and result.json of :data:`SHARED_RUNS`' ``name``, made on first use."""
    if name not in _made:
        _made[name] = simulate(factory.mktemp(name), list(SHARED_RUNS[name].overrides))
    return _made[name]


def scheduling_groups() -> dict[str, str]:
    """Test file name -> the name of its group, for the files that read a shared run: files that
    read the same run, directly or through another file, are one group."""
    groups: list[set[str]] = []
    for run in SHARED_RUNS.values():
        joined = [g for g in groups if g & set(run.readers)]
        groups = [g for g in groups if g not in joined] + [set(run.readers).union(*joined)]
    return {name: "+".join(sorted(group)) for group in groups for name in group}


def simulate_cmd(*args: str) -> list[str]:
    """``anther simulate ARGS`` as the tests run it (this interpreter, no console script needed)."""
    return [sys.executable, "-m", "anther.cli", "simulate", *args]


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``anther simulate ARGS`` in a session of its own, its output in ``log``; on leaving the
    block, every process of it still running is killed with SIGKILL (found by a tag in their
    environment: ``flwr run``, the SuperLink, the simulation, Ray's processes), as a crash or the
    OOM killer would. The run folder is left as such a kill leaves it."""
    tag = uuid.uuid4().hex
    with log.open("w") as out:
        proc = subprocess.Popen(simulate_cmd(*args), env={**env, RUN_TAG: tag}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_tagged(tag, RUN_TAG)


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, server_round: int, log: Path) -> Path:
    """Wait until the run writing into ``out`` has round ``server_round``'s checkpoint (within 600
    s); fail, with the run's output, if it ends first. The run's checkpoints folder."""
    deadline = time.monotonic() + 600
    while not list(out.glob(f"*/checkpoints/round-{server_round:04d}")):
        assert proc.poll() is None, f"the run ended before checkpoint {server_round}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.1)
    (checkpoints,) = out.glob("*/checkpoints")
    return checkpoints
