"""Experiments from anywhere: ``-e path/to/exp.yaml`` and ``--config-dir DIR``, composed over the
package's defaults (anther/core/experiment_source.py), as the CLI, ``flwr run`` and the benchmarks
load them; the local optimiser's settings refused before a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from anther.bench.grid import load_bench
from anther.core.config import ConfigError
from anther.simulations.experiment import load_config


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    """A researcher's folder: an experiment without a defaults list, one with, and a scenario."""
    (tmp_path / "scenario").mkdir()
    (tmp_path / "short.yaml").write_text("federation:\n  rounds: 2\ntrain:\n  lr: 0.01\n"
                                         "strategy:\n  _target_: flwr.serverapp.strategy.FedMedian\n")
    (tmp_path / "pinned.yaml").write_text("defaults:\n  - default\n  - override scenario: two_domains\n  - _self_\n"
                                          "name: pinned\ntrain:\n  local_steps: 7\n")
    (tmp_path / "scenario" / "two_domains.yaml").write_text(
        "# @package _global_\nscenario:\n  name: two_domains\n  modality: full\n"
        "partition:\n  scheme: domain\n")
    return tmp_path


def test_a_file_without_defaults_is_merged_over_the_default_experiment(lab: Path):
    cfg = load_config(str(lab / "short.yaml"), ["train.lr=0.5"])
    assert cfg.name == "short"  # the file's name, unless it sets one
    assert cfg.federation.rounds == 2 and cfg.federation.num_clients == 10  # the rest: the default's
    assert cfg.train.lr == 0.5  # the command line wins over the file
    assert cfg.strategy._target_ == "flwr.serverapp.strategy.FedMedian"  # replaces name: fedavg
    assert cfg.scenario.name == "iid"


def test_a_file_with_defaults_is_the_primary_config_and_finds_its_own_scenarios(lab: Path):
    cfg = load_config(str(lab / "pinned.yaml"))
    assert (cfg.name, cfg.scenario.name, cfg.partition.scheme, cfg.train.local_steps) == \
        ("pinned", "two_domains", "domain", 7)
    assert cfg.federation.rounds == 6


def test_a_config_dir_holds_experiments_by_name_and_scenarios_by_group(lab: Path):
    cfg = load_config("short", ["scenario=two_domains"], config_dir=lab)
    assert cfg.federation.rounds == 2 and cfg.scenario.name == "two_domains"
    assert load_config("default", ["scenario=two_domains"], config_dir=lab).partition.scheme == "domain"


@pytest.mark.parametrize("experiment,config_dir,message", [
    ("nope", None, "unknown experiment 'nope'; known: \\['default'\\]"),
    ("nope", "LAB", "unknown experiment 'nope'; known: \\['bad', 'default', 'list', 'pinned', 'short', 'typo'\\]"),
    ("LAB/missing.yaml", None, "experiment file '.*missing.yaml' does not exist"),
    ("default", "LAB/none", "config directory '.*none' does not exist"),
    ("LAB/scenario/../bad.yaml", None, "is not valid YAML"),
    ("LAB/list.yaml", None, "must hold a mapping of config keys, not a list"),
    ("LAB/typo.yaml", None, "unknown config key 'federation.roundz'; did you mean 'federation.rounds'"),
])
def test_a_bad_experiment_is_one_line_naming_it(lab: Path, experiment, config_dir, message):
    (lab / "bad.yaml").write_text("federation: [rounds: 2\n")
    (lab / "list.yaml").write_text("- 1\n- 2\n")
    (lab / "typo.yaml").write_text("federation:\n  roundz: 2\n")
    with pytest.raises(ConfigError, match=message):
        load_config(experiment.replace("LAB", str(lab)), config_dir=config_dir and config_dir.replace("LAB", str(lab)))


def test_the_cli_refuses_a_missing_experiment_file_before_anything_starts(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "anther.cli", "simulate", "-e", str(tmp_path / "x.yaml")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "experiment file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bench_takes_an_experiment_file_and_scenarios_from_a_config_dir(lab: Path):
    bench = load_bench("heterogeneity", methods=["fedavg"], scenarios=["two_domains"], seeds=[0],
                       experiment=str(lab / "short.yaml"), config_dir=str(lab))
    assert bench.experiment == str((lab / "short.yaml").resolve()) and bench.config_dir == str(lab.resolve())
    with pytest.raises(ConfigError, match="unknown scenario\\(s\\) \\['two_domains'\\]"):
        load_bench("heterogeneity", methods=["fedavg"], scenarios=["two_domains"], seeds=[0])


@pytest.mark.parametrize("override,message", [
    ("train.optimizer=lion", "train.optimizer name 'lion' is unknown: use one of adamw, adam, sgd"),
    ("train.optimizer={name:lion,momentum:0.9}", "train.optimizer name 'lion' is unknown: use one of adamw"),
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1 must be >= 0"),
    ("train.optimizer={name:sgd,momentun:0.9}", "cannot be built \\(SGD\\).*'momentun'"),
    ("train.optimizer={_target_:torch.nn.Linear}", "'torch.nn.Linear' is not a torch.optim.Optimizer"),
    ("train.optimizer={_target_:no.such.Optim}", "'no.such.Optim' cannot be imported"),
    ("train.lr_schedule=step", "train.lr_schedule='step' is unknown: use one of constant, linear, cosine"),
    ("train.lr_schedule={_target_:torch.optim.lr_scheduler.StepLR}", "StepLR.*step_size"),
    ("train.hook_order=later", "train.hook_order='later' must be before_clipping or after_clipping"),
    ("train.warmup_steps=-1", "train.warmup_steps=-1 must be >= 0"),
])
def test_a_bad_local_optimiser_is_refused_before_the_run(override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_config("default", [override])


def test_the_local_optimiser_by_name_or_target_composes():
    cfg = load_config("default", ["train.optimizer={name:sgd,momentum:0.9,nesterov:true}", "train.lr_schedule=cosine",
                                  "train.warmup_steps=5"])
    assert cfg.train.optimizer.momentum == 0.9 and cfg.train.lr_schedule == "cosine"
    assert load_config("default", ["train.optimizer={_target_:torch.optim.RMSprop,alpha:0.9}"]).train.optimizer.alpha \
        == 0.9


def test_flwr_runs_config_names_a_file_or_a_config_dir(lab: Path):
    """What ``flwr run --run-config 'experiment="..." config-dir="..."'`` gives the ServerApp."""
    from anther.server_app import experiment_of

    by_file = experiment_of({"experiment": str(lab / "short.yaml"), "overrides": "seed=3"})
    assert (by_file.name, by_file.federation.rounds, by_file.seed) == ("short", 2, 3)
    by_dir = experiment_of({"experiment": "pinned", "overrides": "", "config-dir": str(lab)})
    assert by_dir.scenario.name == "two_domains"
    assert experiment_of({"experiment": "default", "overrides": "", "config-dir": ""}).name == "default"
