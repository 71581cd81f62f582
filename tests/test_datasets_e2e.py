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
from test_loaders import _crisis, _hateful, _iconqa, _iconqa_original, _scienceqa_original, _scienceqa_parquet, _vqa_rad

from anther.data.client_data import dataset_summary
from anther.simulations.experiment import load_config

# format, what to build, the split names, the layout found, (records read, records left out) of the train split
LAYOUTS = {
    "scienceqa original": ("scienceqa", _scienceqa_original, ["data.test_split=val"], "original release", (1, 0)),
    "scienceqa hub copy": ("scienceqa", _scienceqa_parquet, ["data.test_split=train"], "Hugging Face copy", (2, 0)),
    "iconqa original": ("iconqa", _iconqa_original, [], "original release", (3, 0)),
    "iconqa hub copy": ("iconqa", _iconqa, ["data.train_split=val", "data.test_split=val"], "Hugging Face copy",
                        (4, 1)),
    "vqa_rad release": ("vqa_rad", _vqa_rad, [], "release", (3, 0)),
    "hateful_memes": ("hateful_memes", _hateful, ["data.train_split=dev_seen"], "release", (2, 0)),
    "crisismmd": ("crisismmd", _crisis, ["data.test_split=train"], "crisismmd", (2, 0)),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_what_the_report_reads_of_every_layout(tmp_path, monkeypatch, name):
    """What ``anther data report`` and result.json record, for a fixture in each real layout."""
    monkeypatch.setenv("ANTHER_HOME", str(tmp_path / "home"))
    data_format, build, splits, layout, (records, left_out) = LAYOUTS[name]
    build(tmp_path / "data")
    cfg = load_config("default", [f"data.format={data_format}", f"data.path={tmp_path / 'data'}",
                                  "federation.num_clients=1", "federation.min_train_clients=1", *splits])
    summary = dataset_summary(cfg, tmp_path / "data")
    assert summary["layout"].startswith(layout), summary
    train = summary["train"]
    assert (train["records"], sum(train["left_out"].values())) == (records, left_out), summary
    assert "records" in summary["test"] or "missing" in summary["test"]


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
