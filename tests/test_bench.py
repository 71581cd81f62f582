"""``anther bench``: a micro grid writes the report, a re-run skips finished cells, an interrupted
grid redoes only the cells without a finished result, and a bad bench config is named.

The fast tests grid two baselines (they run in this process); the slow one puts a federated
cell (a real ``flwr run``) next to a baseline through the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from simulation_run import ONE_CLIENT_PROCESS, shared_home

from anther.bench.grid import load_bench
from anther.bench.grid_report import scenario_kind
from anther.cli import main
from anther.core.config import ConfigError
from anther.core.sample import write_split
from anther.data import shapes_vqa

BUDGET = ["federation.num_clients=2", "federation.rounds=1", "train.local_steps=2", "train.batch_size=4",
          "adapter.rank=4", "data.client_test_fraction=0.25", "eval.server_test_size=6", "eval.generate=false",
          ONE_CLIENT_PROCESS]


def _bench_file(folder: Path, methods: dict[str, list[str]], overrides: list[str]) -> Path:
    path = folder / "micro.yaml"
    path.write_text(yaml.safe_dump({"seeds": [0], "scenarios": ["iid"], "methods": methods,
                                    "overrides": overrides}))
    return path


def _mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*/result.json")}


@pytest.fixture(scope="module")
def micro(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bench file gridding zero-shot and local-only on the tiny model and 32 samples."""
    folder = tmp_path_factory.mktemp("bench")
    write_split(shapes_vqa.generate(32, seed=1, prefix="train"), folder / "data", "train")
    write_split(shapes_vqa.generate(6, seed=2, prefix="test"), folder / "data", "test")
    return _bench_file(folder, {"zero_shot": ["baseline=zero_shot"], "local_only": ["baseline=local_only"]},
                       [*BUDGET, f"model.path={tiny_model_dir}", f"data.path={folder / 'data'}"])


def test_micro_grid_writes_report_then_skips_then_redoes_only_the_missing_cell(micro, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", str(micro), "--out", str(out)]) == 0
    cells = {"zero_shot__iid__seed0", "local_only__iid__seed0"}
    assert set(_mtimes(out)) == cells
    report = json.loads((out / "report.json").read_text())
    assert {f"{c['method']}__{c['scenario']}__seed{c['seed']}" for c in report["cells"]} == cells
    assert report["not_finished"] == []
    assert report["machine"]["cpus"] == os.cpu_count() and report["machine"]["torch"] == torch.__version__
    local = next(c for c in report["cells"] if c["method"] == "local_only")
    assert len(local["acc_per_round"]) == 2 and 0 <= local["final_acc"] <= 1
    assert local["client_acc_worst"] <= local["client_acc_mean"]
    md = (out / "report.md").read_text()
    assert "| iid | " in md and "zero_shot" in md and "local_only" in md and "\nMachine (" in md
    zero_shot = next(r for r in report["summary"] if r["method"] == "zero_shot")
    assert report["by_kind"] == {"iid": {"zero_shot": zero_shot["final_acc"]["mean"], "local_only": local["final_acc"]}}
    kinds = md.split("averaged over each kind of scenario")[1].split("##")[0]
    assert f"{zero_shot['final_acc']['mean']:.3f}" in kinds.split("| iid |")[1].splitlines()[0]
    assert (out / "accuracy_per_round.png").stat().st_size > 0 and (out / "final_accuracy.png").stat().st_size > 0

    before = _mtimes(out)
    capsys.readouterr()
    assert main(["bench", str(micro), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.count("finished before, skipped") == 2 and _mtimes(out) == before

    (out / "cells" / "local_only__iid__seed0" / "result.json").unlink()  # as if cut off in that cell
    assert main(["bench", str(micro), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "zero_shot__iid__seed0: finished before, skipped" in said
    assert "local_only__iid__seed0: ran" in said
    after = _mtimes(out)
    assert after["zero_shot__iid__seed0"] == before["zero_shot__iid__seed0"]
    assert after["local_only__iid__seed0"] > before["local_only__iid__seed0"]


def test_a_cell_under_other_overrides_is_redone(micro, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", str(micro), "--out", str(out), "--methods", "zero_shot"]) == 0
    assert main(["bench", str(micro), "eval.server_test_size=4", "--out", str(out), "--methods", "zero_shot"]) == 0
    said = capsys.readouterr().out
    assert "skipped" not in said and said.count("zero_shot__iid__seed0: ran") == 2
    result = json.loads((out / "cells" / "zero_shot__iid__seed0" / "result.json").read_text())
    assert result["config"]["eval"]["server_test_size"] == 4


def _runs_per_cell(said: str) -> dict[str, list[str]]:
    """cell key -> the runners that said they ran it (``[runner K] [i/n] KEY: ran in ...``)."""
    ran: dict[str, list[str]] = {}
    for line in said.splitlines():
        if m := re.match(r"\[runner (\d+)\] \[\d+/\d+\] (\S+): ran", line):
            ran.setdefault(m[2], []).append(m[1])
    return ran


def test_two_runners_share_a_grid_and_run_each_cell_once(micro, tmp_path, capfd):
    out = tmp_path / "out"
    grid = _bench_file(tmp_path, {"zero_shot": ["baseline=zero_shot"], "local_only": ["baseline=local_only"]},
                       yaml.safe_load(micro.read_text())["overrides"])
    grid.write_text(grid.read_text().replace("seeds:\n- 0", "seeds:\n- 0\n- 1"))
    assert main(["bench", str(grid), "--out", str(out), "--jobs", "2"]) == 0
    said = capfd.readouterr().out
    cells = {f"{m}__iid__seed{k}" for m in ("zero_shot", "local_only") for k in (0, 1)}
    ran = _runs_per_cell(said)
    assert set(ran) == cells and all(len(runners) == 1 for runners in ran.values()), said
    assert {r for runners in ran.values() for r in runners} == {"1", "2"}, said  # both runners worked
    assert sorted(p.name for p in (out / "claims").iterdir()) == sorted(cells)
    report = json.loads((out / "report.json").read_text())
    assert report["not_finished"] == [] and len(report["cells"]) == 4
    assert "4 of 4 cells finished" in said

    before = _mtimes(out)
    assert main(["bench", str(grid), "--out", str(out), "--jobs", "2"]) == 0
    said = capfd.readouterr().out
    # each runner, each cell
    assert _runs_per_cell(said) == {} and said.count("finished before, skipped") == 8
    assert _mtimes(out) == before
    assert main(["bench", str(grid), "--out", str(out), "--jobs", "0"]) == 2


def test_bad_bench_configs_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown scenario.*'iid_typo'"):
        path = _bench_file(tmp_path, {"fedavg": ["strategy.name=fedavg"]}, [])
        path.write_text(path.read_text().replace("- iid", "- iid_typo"))
        load_bench(str(path))
    with pytest.raises(ConfigError, match="'fed__avg' cannot name a cell folder"):
        load_bench(str(_bench_file(tmp_path, {"fed__avg": ["strategy.name=fedavg"]}, [])))
    with pytest.raises(ConfigError, match="unknown bench 'nope'"):
        load_bench("nope")
    assert main(["bench", str(_bench_file(tmp_path, {"x": ["federation.nmae=1"]}, [])),
                 "--out", str(tmp_path / "o")]) == 2  # the cell does not compose: named before any run


def test_the_shipped_grid_is_seven_methods_and_more_over_fifteen_scenarios():
    bench = load_bench("heterogeneity")
    assert len(bench.scenarios) == 15 and len(bench.seeds) == 2
    kinds = Counter(scenario_kind(s) for s in bench.scenarios)
    assert kinds == {"iid": 1, "label skew": 3, "missing modality": 3, "cross modality": 3, "hybrid modality": 3,
                     "domain shift": 1, "quantity skew": 1}
    assert {"local_only", "centralised", "fedavg", "fedprox", "fedyogi", "fisher", "modality_aware"} <= set(
        bench.methods)


@pytest.mark.slow
def test_federated_cell_and_baseline_cell_through_the_cli(micro, tmp_path):
    """A real ``flwr run`` cell next to an in-process baseline; re-run after losing the baseline's
    result: the federated cell is skipped, the baseline redone. One to two minutes."""
    overrides = yaml.safe_load(micro.read_text())["overrides"]
    bench = _bench_file(tmp_path, {"fedavg": ["strategy.name=fedavg"], "zero_shot": ["baseline=zero_shot"]},
                        overrides)
    env = {**os.environ, "ANTHER_HOME": str(shared_home(tmp_path))}
    cmd = [sys.executable, "-m", "anther.cli", "bench", str(bench), "--out", str(tmp_path / "out")]

    def run() -> str:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    said = run()
    assert "fedavg__iid__seed0: ran" in said and "zero_shot__iid__seed0: ran" in said
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    fedavg = next(c for c in report["cells"] if c["method"] == "fedavg")
    assert len(fedavg["acc_per_round"]) == 2 and fedavg["client_acc_worst"] is not None
    before = _mtimes(tmp_path / "out")
    (tmp_path / "out" / "cells" / "zero_shot__iid__seed0" / "result.json").unlink()
    said = run()
    assert "fedavg__iid__seed0: finished before, skipped" in said and "zero_shot__iid__seed0: ran" in said
    assert _mtimes(tmp_path / "out")["fedavg__iid__seed0"] == before["fedavg__iid__seed0"]


def _processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


@pytest.mark.slow
def test_sigterm_stops_a_parallel_grid_and_its_runners_and_the_same_command_finishes_it(micro, tmp_path):
    """SIGTERM to ``anther bench --jobs 2`` mid-grid: it exits and leaves no runner behind; the same
    command then finishes every cell. About a minute."""
    out = tmp_path / "out"
    grid = _bench_file(tmp_path, {"local_only": ["baseline=local_only"]},
                       yaml.safe_load(micro.read_text())["overrides"])
    grid.write_text(grid.read_text().replace("seeds:\n- 0", "seeds:\n- 0\n- 1\n- 2\n- 3"))
    cmd = [sys.executable, "-m", "anther.cli", "bench", str(grid), "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("cells/*/log.txt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(out.glob("cells/*/log.txt")), "no runner started a cell in 120 s"
    proc.terminate()
    said, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, said
    assert _processes_naming(str(out / "claims")) == [], said  # every runner is gone

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 of 4 cells finished" in done.stdout
    assert json.loads((out / "report.json").read_text())["not_finished"] == []
