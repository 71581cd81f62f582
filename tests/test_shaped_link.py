"""The round-time model by hand, and the shaped-link benchmark: a site and the backbone service in
two network namespaces joined by a tc-limited veth pair (it skips, saying why, where namespaces
cannot be made)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from simulation_run import shared_home

from anther.bench.netns import why_not
from anther.bench.round_time import LinkMeasurement, Round, check_model
from anther.bench.shaped_link import LOCAL, markdown, plot


def test_a_split_round_by_hand():
    r = Round(steps=10, compute_s=0.5, up_bytes=1_000_000, down_bytes=500_000, adapter_bytes=250_000)
    # a step: 0.5 + 8 Mbit / 80 Mbit/s + 4 Mbit / 40 Mbit/s + 0.02 = 0.72; the adapters: 2 Mbit / 40 + 2 Mbit / 80
    assert r.seconds(up_mbit=80, down_mbit=40, rtt_ms=20) == pytest.approx(10 * 0.72 + 0.05 + 0.025 + 0.04)
    local = Round(steps=10, compute_s=0.5, up_bytes=0, down_bytes=0, adapter_bytes=250_000, round_trips_per_step=0)
    assert local.seconds(80, 40, rtt_ms=20) == pytest.approx(5.0 + 0.075 + 0.04)  # no round trip a step


def _measured(mbit: float, setting: str, compute: float, up: float, down: float, adapters: float) -> LinkMeasurement:
    step = compute + 8 * (up + down) / (mbit * 1e6)
    return LinkMeasurement(mbit, setting, step, up, down, adapters, 50 * step + 16 * adapters / (mbit * 1e6), 50)


def test_the_model_fitted_at_the_fastest_link_predicts_the_others():
    rows = [_measured(m, s, 0.3, up, up, 4e4) for m in (10, 100, 1000)
            for s, up in (("float32", 4.5e5), ("int8", 1.3e5))]
    checked = check_model(rows)
    assert checked["fitted_at_mbit"] == 1000 and len(checked["rows"]) == 4
    assert checked["max_relative_error"] < 1e-3
    slower = [*rows[:-1], _measured(1000, "int8", 0.3, 1.3e5, 1.3e5, 4e4)]
    slower[0] = _measured(10, "float32", 0.6, 4.5e5, 4.5e5, 4e4)  # what the model cannot know
    assert check_model(slower)["max_relative_error"] > 0.1


def test_the_table_and_plot_name_every_setting(tmp_path: Path):
    rows = [{"mbit": m, "setting": s, "step_s": 0.2, "bytes_up_per_step": 1000.0, "bytes_down_per_step": 900.0,
             "adapter_bytes": 10, "exchange_s": 0.01, "local_steps": 50, "round_s": 10.01 + m / 1000}
            for m in (10, 100) for s in ("int8", LOCAL)]
    md = markdown(rows, {"fitted_at_mbit": 100, "max_relative_error": 0.05})
    assert "| int8 | 1,000 | 900 | 10.0 | 10.1 |" in md and f"| {LOCAL} |" in md and "largest error 5.0%" in md
    plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 5000


@pytest.mark.slow
def test_the_bench_measures_a_shaped_link_or_says_why_it_cannot(tmp_path: Path):
    """At 20 Mbit/s each way, int8 split mode and local mode, one measured step each: the int8
    step moves a byte a value and a scale a token, the link's limit shows in the step time, local
    mode moves nothing a step, and the namespaces are gone afterwards."""
    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp_path))}
    cmd = [sys.executable, "-m", "anther.bench.shaped_link", "--rates", "20", "--wire-dtypes", "int8",
           "--steps", "1", "--out", str(tmp_path), "--", "train.batch_size=8", "model.tiny_pretrain_steps=0",
           "data.train_size=40", "data.test_size=8", "federation.num_clients=2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "shaped_link.json").read_text())
    reason = why_not()
    if reason is not None:
        assert result == {"skipped": reason} and f"shaped-link bench skipped: {reason}" in done.stdout
        return
    split, local = result["rows"]
    assert (split["setting"], local["setting"]) == ("int8", LOCAL)
    hidden = 128  # the tiny model's width: 8 samples, a byte a value and a float32 scale per token
    tokens = int(split["bytes_down_per_step"] // (hidden + 4))
    assert tokens % 8 == 0 and split["bytes_down_per_step"] - tokens * (hidden + 4) < 256  # and the proto's framing
    assert split["bytes_up_per_step"] > split["bytes_down_per_step"]  # masks and labels go up too
    link_s = 8 * (split["bytes_up_per_step"] + split["bytes_down_per_step"]) / 20e6
    assert split["step_s"] > link_s  # the link's limit is in every step
    assert local["bytes_up_per_step"] == local["bytes_down_per_step"] == 0
    assert (tmp_path / "shaped_link.png").is_file()
    assert "round s at 20 Mbit/s" in (tmp_path / "shaped_link.md").read_text()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert "anther-srv-" not in left and "anther-site-" not in left
