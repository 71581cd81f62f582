"""A saboteur, a crash, a damaged checkpoint and a resume, all through real Flower processes.

One ``anther simulate`` run (3 clients, 3 rounds, sample-level DP, personal adapters) with
the plug-in strategy of ``tests/plugins/saboteur.py``, imported from outside anther as a
researcher's module would be: in round 2 it has partition 0 send weights pushed far from
the global ones, in round 3 NaN weights. The run is killed (SIGKILL, everything it started)
as soon as round 2's checkpoint is on disk; then round 2's checkpoint is damaged (one byte
flipped) and the run is resumed: it must fall back to round 1's checkpoint, say so, and
train rounds 2 and 3 again. The tests read what the run left behind:

- each round screens the saboteur out by partition id and aggregates the two honest clients
  (the guards of docs/reliability.md, "A bad update", through Flower's messages);
- the resumed run skips the damaged checkpoint, naming it and why;
- the plug-in's own ``state_dict()`` carried its tally over the resume;
- the clients' state came back from their own disks: each client's DP accountant, never
  rewound (the epsilon after the resumed round 2 is above what the killed run reported after
  its round 2: those updates were released), and its personal adapters, as of round 1 (trained
  in each round once: the count kept beside them on the site's disk is 3).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from flwr.app import RecordDict
from simulation_run import SMALL, running, shared_home, simulate_cmd, wait_for_checkpoint

from anther.client.state_store import restore_state, state_folder
from anther.server.run_state import decode

pytestmark = pytest.mark.slow

PLUGINS = Path(__file__).resolve().parent / "plugins"
ROUNDS = 3
OVERRIDES = [o for o in SMALL if not o.startswith(("federation.rounds=", "federation.num_clients="))] + [
    f"federation.rounds={ROUNDS}", "federation.num_clients=3", "federation.fraction_train=1.0", "data.train_size=60",
    "~strategy.name", "+strategy._target_=saboteur.SabotagingFedAvg", "+strategy.personal_steps=1",
    "+strategy.client_modules=[saboteur]",
    "privacy.dp=true", "privacy.noise_multiplier=1.0"]


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def sabotaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The run killed after round 2, its round-2 checkpoint damaged, then resumed."""
    tmp = tmp_path_factory.mktemp("sabotage")
    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp)),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))}
    out, log = tmp / "runs", tmp / "killed.log"
    with running([*OVERRIDES, f"output_dir={out}"], env, log) as proc:
        wait_for_checkpoint(proc, out, 2, log)
    (run_dir,) = list(out.iterdir())
    killed = json.loads((run_dir / "result.json").read_text())
    _flip_a_byte(run_dir / "checkpoints" / "round-0002" / "adapters.safetensors")
    proc = subprocess.run(simulate_cmd("--resume", str(run_dir)), env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {"run_dir": run_dir, "home": Path(env["ANTHER_HOME"]), "killed": killed,
            "resumed": json.loads((run_dir / "result.json").read_text()),
            "terminal": proc.stdout + proc.stderr}


def test_the_saboteur_is_screened_out_and_the_honest_clients_aggregated(sabotaged):
    result = sabotaged["resumed"]
    assert result["finished"] is True and [r["round"] for r in result["rounds"]] == list(range(ROUNDS + 1))
    # round 2: an outlier; round 3: NaN weights (their NaN loss is the first thing the guard sees)
    expected = {2: "more than 10 x the round's median", 3: "nan"}
    for r in result["rounds"][1:]:
        assert r["sampled"] == 3 and r["failed"] == [] and r["skipped"] is None, r
        if r["round"] in expected:
            (rejected,) = r["rejected"]
            assert rejected["partition_id"] == 0 and expected[r["round"]] in rejected["reason"].lower(), rejected
            assert r["clients"] == 2 and set(r["per_client"]) == {"1", "2"}, r
        else:
            assert r["rejected"] == [] and r["clients"] == 3, r
        assert r["acc_mc"] == r["acc_mc"], "the global adapters turned NaN"  # NaN != NaN
    assert "rejected the update of partition 0" in sabotaged["terminal"]
    counts = (sabotaged["run_dir"] / "flower.log").read_text()  # the per-round count, as the record has it
    for r in (2, 3):
        assert f"anther: round {r}: 2 of 3 sampled clients answered usably, 1 rejected, 0 failed, 0 declined; " \
               "0 unavailable" in counts


def test_a_damaged_checkpoint_is_skipped_naming_why_and_the_run_resumes_from_the_one_before(sabotaged):
    assert sabotaged["resumed"]["resumed_from"] == [1]
    terminal = sabotaged["terminal"]
    assert "skipped a damaged checkpoint" in terminal and "adapters.safetensors does not match its checksum" in terminal
    assert f"resuming {sabotaged['run_dir']} after round 1" in terminal


def test_the_strategys_own_state_dict_carries_its_state_over_the_resume(sabotaged):
    """Its tally lives in an object only its state_dict() saves: the resumed rounds count on."""
    assert [r["train_metrics"]["tally"] for r in sabotaged["resumed"]["rounds"][1:]] == [1, 2, 3]
    saved = json.loads((sabotaged["run_dir"] / "checkpoints" / "round-0003" / "state.json").read_text())
    assert decode(saved["strategy"]["state_dict"], {}) == {"tally": 3}


def test_each_clients_dp_accountant_and_personal_adapters_come_back_from_its_disk(sabotaged):
    killed, resumed = sabotaged["killed"]["rounds"], sabotaged["resumed"]["rounds"]
    eps = [r["dp_epsilon_max"] for r in resumed[1:]]
    assert eps[0] < eps[1] < eps[2], eps
    # the accountant came back, and was not rewound to the round the run resumed from: the rounds
    # trained before the kill released updates, so the rerun round 2 spends on top of them
    assert resumed[2]["dp_epsilon_max"] > killed[2]["dp_epsilon_max"] > killed[1]["dp_epsilon_max"]
    # each client's own disk: its personal adapters trained in rounds 1, 2 and 3 (under DP the
    # count does not leave the site, so it is read where the site keeps it)
    for pid in range(3):
        state = RecordDict()
        kept = state_folder({"state-dir": str(sabotaged["home"] / "client-state")}, sabotaged["run_dir"].name, pid)
        assert restore_state(state, kept, ROUNDS) == ROUNDS
        assert state.config_records["personal-rounds"]["n"] == ROUNDS, pid
        assert state.array_records["personal-local-adapters"]
