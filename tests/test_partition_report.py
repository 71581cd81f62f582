"""The partition report (issue 5 item 3): what each client holds, printed and plotted before training."""

from __future__ import annotations

import json

from PIL import Image
from rich.console import Console

from anther.cli import main
from anther.core.sample import write_split
from anther.data import shapes_vqa
from anther.data.client_data import client_data
from anther.data.partition_report import write_partition_report
from anther.simulations.experiment import load_config


def _data(folder):
    write_split(shapes_vqa.generate(160, seed=7, prefix="train"), folder, "train")
    write_split(shapes_vqa.generate(10, seed=8, prefix="test"), folder, "test")
    return folder


def test_report_counts_what_client_data_gives_each_client(tmp_path):
    folder = _data(tmp_path / "data")
    cfg = load_config("default", ["scenario=cross_i3t7", "federation.num_clients=4", f"data.path={folder}",
                                  "data.train_size=160"])
    console = Console(record=True, width=200)
    png = write_partition_report(cfg, folder, tmp_path / "out", console)
    with Image.open(png) as im:
        assert im.width > 300 and im.height > 300
    report = json.loads((tmp_path / "out" / "partition.json").read_text())
    assert report["scenario"]["name"] == "cross_i3t7"
    for client in report["clients"]:
        train, test = client_data(cfg, folder, client["partition_id"], 4)
        assert (client["train"], client["test"]) == (len(train), len(test))
        assert sum(client["labels"].values()) == len(train) + len(test)
        assert set(client["presence"]) in ({"image only"}, {"text only"})
    assert sum(c["presence"] == {"image only": c["train"] + c["test"]} for c in report["clients"]) == 1
    text = console.export_text()
    assert "scenario cross_i3t7" in text and "image only" in text


def test_cli_data_report_writes_the_files(tmp_path, capsys):
    folder = _data(tmp_path / "data")
    out = tmp_path / "report"
    assert main(["data", "report", "--out", str(out), "scenario=missing_b50", "federation.num_clients=3",
                 f"data.path={folder}", "data.train_size=160"]) == 0
    assert (out / "partition.png").is_file() and (out / "partition.json").is_file()
    assert "partition report written to" in capsys.readouterr().out


def test_cli_data_report_names_a_bad_override(tmp_path, capsys):
    assert main(["data", "report", "--out", str(tmp_path), "scenario.missing_rate=2"]) == 2
    assert "scenario.missing_rate" in capsys.readouterr().err
