"""``anther bench perf`` end to end on a very small workload: every section runs, in its own
processes, and the JSON, markdown and plots hold consistent numbers (slow: a real ``flwr run``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from simulation_run import ONE_CLIENT_PROCESS, shared_home

from anther.bench.perf.bench import load_perf, significant
from anther.core.config import ConfigError

SMALL = ["overhead_clients=2", "overhead_rounds=2", "sharing_clients=[3]", "concurrency=2", "sharing_rounds=1",
         "cache_clients=2", "cache_rounds=2", "batching_clients=2", "batching_seconds=1", "scale_clients=5",
         "scale_rounds=2", "scale_local_steps=1", "train.local_steps=2", "train.batch_size=4", "data.train_size=40",
         "data.test_size=8", "adapter.rank=4", "torch_threads=1", "modes=[split,whole_model]",
         "trainstep_model=experiment", "trainstep_dtype=float32", "trainstep_seq_len=16",
         "trainstep_batch_sizes=[1,2]", "trainstep_concurrency=[2]", "trainstep_client_batch=1",
         "trainstep_steps=2", "trainstep_warmup=1", "trainstep_seconds=0.5",
         ("modes_overrides=[federation.num_clients=2,federation.rounds=2,train.local_steps=2,train.batch_size=4,"
          "data.train_size=40,data.test_size=8,eval.server_test_size=8,eval.generate=false,adapter.rank=4,"
          f"lora.rank=4,model.tiny_pretrain_steps=0,{ONE_CLIENT_PROCESS}]"), ONE_CLIENT_PROCESS]


@pytest.mark.slow
def test_perf_bench_runs_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp_path))}
    out = tmp_path / "perf"
    proc = subprocess.run([sys.executable, "-m", "anther.cli", "bench", "perf", *SMALL, "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "perf.json").read_text())
    s = result["sections"]
    assert list(s) == ["overhead", "sharing", "cache", "batching", "scale", "modes", "trainstep"]

    o = s["overhead"]
    assert o["samples_per_round"] == 2 * 2 * 4 and len(o["round_s"]) == 2
    assert o["bare"]["samples"] == 2 * 2 * 4 and o["ratio"] == pytest.approx(
        o["federated_samples_per_s"] / o["bare"]["samples_per_s"], rel=1e-2)

    rows = {(r["mode"], r["clients"]): r for r in s["sharing"]["rows"]}
    assert set(rows) == {("shared", 3), ("copies", 3)}
    assert all(r["samples_per_round"] == r["clients"] * 2 * 4 and r["peak_rss_mb"] > 0 for r in rows.values())
    copies = rows[("copies", 3)]
    assert 0 < copies["client_load_s"] < copies["client_s"] and "client_load_s" not in rows[("shared", 3)]
    assert s["sharing"]["speedup"]["3"] == pytest.approx(
        rows[("copies", 3)]["round_s"][-1] / rows[("shared", 3)]["round_s"][-1], rel=1e-2)

    # the cache was filled in round 1 and read in round 2; without it nothing is counted
    on = s["cache"]["on"]
    assert on["cache_misses"] > 0 and on["cache_hits"] > 0 and "cache_hits" not in s["cache"]["off"]
    assert s["batching"]["on"]["requests"] > 0 and s["batching"]["off"]["mean_requests_per_pass"] == 1.0
    assert s["scale"]["clients"] == 5 and len(s["scale"]["round_s"]) == 2 and len(s["scale"]["memory_mb"]) > 1

    modes = {r["mode"]: r for r in s["modes"]["rows"]}
    assert list(modes) == ["split", "whole_model"]
    split, local = modes["split"], modes["whole_model"]
    assert split["per_client_bytes"]["activation_bytes_up"] > 0 and split["per_client_bytes"]["adapter_bytes_up"] > 0
    assert local["per_client_bytes"]["activation_bytes_up"] == local["per_client_bytes"]["activation_bytes_down"] == 0
    assert local["client_holds"]["total_bytes"] > split["client_holds"]["total_bytes"]
    assert s["modes"]["whole_model_over_split_holds"] > 1 and s["modes"]["cache_speedup"] == {}
    assert all(0 <= r["final_acc"] <= 1 and len(r["round_s"]) == 2 for r in modes.values())

    t = s["trainstep"]  # the experiment's own LLM on the CPU (tests/test_trainstep_bench.py checks the numbers)
    assert t["device"] == "cpu" and [r["batch"] for r in t["in_process"]] == [1, 2]
    assert t["service"][0]["clients"] == 2 and t["service"][0]["requests"] > 0

    md = (out / "perf.md").read_text()
    assert "| **ratio** |" in md and "## Scale" in md and "anther bench perf" in md
    assert "| split | " in md and "| whole_model | " in md and "## Backbone TrainStep" in md
    assert (out / "perf_sharing.png").stat().st_size > 0 and (out / "perf_scale_memory.png").stat().st_size > 0


@pytest.mark.parametrize(("override", "named"), [
    ("sections=[overhead,speed]", "sections"), ("concurrency=0", "concurrency"),
    ("overhead_rounds=1", "overhead_rounds"), ("trainstep_model=llava-99b", "trainstep_model=llava-99b"),
    ("trainstep_dtype=int8", "trainstep_dtype=int8"), ("trainstep_batch_sizes=[]", "trainstep_batch_sizes"),
    ("trainstep_seq_len=0", "trainstep_seq_len")])
def test_perf_config_names_its_bad_values(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_perf("perf", [override])


def test_perf_config_takes_overrides() -> None:
    assert load_perf("perf", ["sharing_clients=[4,16]"]).sharing_clients == [4, 16]


def test_ratios_keep_three_significant_digits() -> None:
    """A small ratio keeps its precision (rounding to decimals made 0.02637 into 0.026, 1.4% off)."""
    assert significant(0.026367652) == 0.0264 and significant(12.3456) == 12.3 and significant(1234.5) == 1230.0
