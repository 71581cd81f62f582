"""anther/bench/run_table.py: a table of ``anther simulate`` rows. Runs are replaced by a recorder
here (the simulations themselves are covered end to end elsewhere); what is checked is how
rows become the markdown and JSON, and that ``--only`` keeps the rows run before."""

from __future__ import annotations

import json

import pytest

from anther.bench import run_table
from anther.bench.run_table import Table

TABLE = Table(name="demo", doc="", common=["federation.num_clients=2"],
              rows={"none": [], "eps_4": ["privacy.dp=true", "privacy.target_epsilon=4"]})


@pytest.fixture
def recorded(monkeypatch):
    calls: list[tuple[str, list[str]]] = []

    def fake_run_one(table, row, extra, runs):
        calls.append((row, extra))
        private = row != "none"
        return {"row": row, "overrides": table.rows[row], "seconds": 1.0, "status": "ok",
                "acc_mc_round0": 0.5, "acc_mc": 0.6 if private else 0.8, "acc_gen": None,
                "client_acc_mc_mean": 0.7, "client_acc_mc_worst": 0.4,
                "dp_epsilon_max": 3.9 if private else None, "dp_client_epsilon": None}

    monkeypatch.setattr(run_table, "run_one", fake_run_one)
    return calls


def test_only_adds_rows_and_keeps_the_earlier_ones(tmp_path, recorded):
    assert run_table.main(TABLE, ["--only", "eps_4", "--out", str(tmp_path), "--", "seed=1"]) == 0
    assert run_table.main(TABLE, ["--only", "none", "--out", str(tmp_path), "--", "seed=1"]) == 0
    assert recorded == [("eps_4", ["seed=1"]), ("none", ["seed=1"])]
    saved = json.loads((tmp_path / "demo_table.json").read_text())
    assert [e["row"] for e in saved["rows"]] == ["none", "eps_4"]  # the table's order
    md = (tmp_path / "demo_table.md").read_text()
    assert "anther simulate federation.num_clients=2 seed=1" in md
    assert "| none | `(defaults)` | 0.500 | 0.800 | - | 0.700 | 0.400 | - | 1 |" in md
    assert "sample-level eps" in md and "3.900" in md and "client-level eps" not in md


def test_rows_run_under_other_overrides_are_not_mixed_in(tmp_path, recorded):
    run_table.main(TABLE, ["--only", "eps_4", "--out", str(tmp_path), "--", "seed=1"])
    run_table.main(TABLE, ["--only", "none", "--out", str(tmp_path), "--", "seed=2"])
    assert [e["row"] for e in json.loads((tmp_path / "demo_table.json").read_text())["rows"]] == ["none"]


def test_a_failed_row_is_shown_and_fails_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(run_table, "run_one", lambda table, row, extra, runs: {
        "row": row, "overrides": table.rows[row], "seconds": 2.0, "status": "failed (exit code 1)"})
    assert run_table.main(TABLE, ["--only", "none", "--out", str(tmp_path)]) == 1
    assert "| none | `(defaults)` | failed (exit code 1) |" in (tmp_path / "demo_table.md").read_text()


def test_a_traffic_table_shows_the_activation_bytes_per_client_and_round(tmp_path, monkeypatch):
    monkeypatch.setattr(run_table, "run_one", lambda table, row, extra, runs: {
        "row": row, "overrides": table.rows[row], "seconds": 3.0, "status": "ok", "acc_mc_round0": 0.5,
        "acc_mc": 0.7, "acc_gen": 0.7, "client_acc_mc_mean": 0.7, "client_acc_mc_worst": 0.6,
        "activation_mib_up": 5.25, "activation_mib_down": 5.0})
    wire = Table(name="wire", doc="", common=[], rows={"int8": ["backbone.wire_dtype=int8"]}, traffic=True)
    assert run_table.main(wire, ["--out", str(tmp_path)]) == 0
    md = (tmp_path / "wire_table.md").read_text()
    assert "activations up, MiB per client and round | down |" in md
    assert "| int8 | `backbone.wire_dtype=int8` | 0.500 | 0.700 | 0.700 | 0.700 | 0.600 | 5.250 | 5.000 | 3 |" in md
    assert "activations up" not in run_table.markdown(TABLE, [], [])
