"""The papers' data sets in their real layouts, end to end (issue 23): ``anther data report`` names
the layout and counts what it read; a federated run on IconQA's original release, image-choice
questions included, completes under a non-aligned scenario."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from dataset_fixtures import iconqa_release
from simulation_run import shared_home, simulate


def test_data_report_names_the_layout_and_counts_each_split(tmp_path):
    iconqa_release(tmp_path / "IconQA", {"train": 8, "test": 3})
    env = {**os.environ, "ANTHER_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "anther.cli", "data", "report", "data.format=iconqa",
                          f"data.path={tmp_path / 'IconQA'}", "federation.num_clients=2", "data.train_size=20",
                          "--out", str(tmp_path / "report")],
                         check=False, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "original release" in out.stdout and "24 records read, 20 used" in out.stdout, out.stdout
    dataset = json.loads((tmp_path / "report" / "partition.json").read_text())["dataset"]
    assert dataset["test"] == {"split": "test", "records": 9, "used": 9, "left_out": {}}


@pytest.mark.slow
def test_a_federated_run_on_iconqa_with_image_choices(tmp_path):
    base = iconqa_release(tmp_path / "IconQA", {"train": 14, "test": 4})
    _, result = simulate(tmp_path, ["data.format=iconqa", f"data.path={base}", "scenario=missing_b30",
                                        "eval.generate=true"])
    assert result["data"]["layout"].startswith("original release")
    assert result["data"]["train"]["records"] == 42 and result["data"]["test"]["records"] == 12
    assert result["data"]["test"]["used"] == 8  # data.test_size=8: a stratified sample
    final = result["rounds"][-1]
    assert {"acc_mc/choose_img", "acc_mc/choose_txt", "acc_mc/fill_in_blank"} <= set(final)
    assert final["num_examples"] == 8.0 and 0.0 <= final["acc_gen"] <= 1.0
    assert shared_home(tmp_path).is_dir()
