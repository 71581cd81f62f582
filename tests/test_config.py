"""Loading an experiment: renamed values are refused with their new names, an earlier run's
config.yaml that uses them still resumes, and the names only upper layers define are checked
before anything starts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from anther.core.config import ConfigError, ModelConfig, compose_experiment
from anther.data.client_data import check_partitions
from anther.data.formats.registry import FORMATS
from anther.model.families import FAMILIES
from anther.server.run_folder import check_writable
from anther.simulations.experiment import load_config, load_run_config


@pytest.mark.parametrize(("override", "new"), [
    ("mode=local", "mode=whole_model"),
    ("backbone.mode=local", "backbone.mode=in_process"),
])
def test_an_old_name_is_refused_with_the_new_one(override: str, new: str):
    with pytest.raises(ConfigError, match=rf"{re.escape(override.split('=')[0])}='local'.*renamed: use {new}"):
        load_config("default", [override])
    load_config("default", [new])


def test_a_run_written_with_the_old_names_resumes_with_the_new(tmp_path: Path):
    cfg = OmegaConf.to_container(load_config("default"))
    cfg["backbone"]["mode"] = "local"
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert load_run_config(tmp_path).backbone.mode == "in_process"
    cfg["mode"], cfg["backbone"]["mode"] = "local", "local"
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    resumed = load_run_config(tmp_path)
    assert (resumed.mode, resumed.backbone.mode, resumed.run_dir) == ("whole_model", "in_process", str(tmp_path))


def test_names_of_upper_layers_are_checked_when_a_run_loads_its_config():
    """The core composes without knowing data formats; loading for a run refuses an unknown one."""
    assert compose_experiment("default", ["data.format=nope"]).data.format == "nope"
    with pytest.raises(ConfigError, match=rf"data\.format='nope'.*{re.escape(', '.join(FORMATS))}"):
        load_config("default", ["data.format=nope"])


def test_init_tiny_help_lists_every_registered_family():
    out = subprocess.run([sys.executable, "-m", "anther.cli", "model", "init-tiny", "--help"],
                         capture_output=True, text=True, check=True).stdout
    listed = " ".join(out.split())  # argparse wraps the help
    assert ", ".join(sorted(FAMILIES)) in listed
    assert f"default: {ModelConfig.tiny_pretrain_steps}" in listed  # the experiment config's, in one place


def test_the_commands_help_loads_no_model_code():
    """``anther --help`` and every subcommand's parser are built without importing torch or
    transformers (the registries they list are read only when a choice is checked or printed)."""
    code = ("import sys; from anther.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_run_with_a_plugin_strategy_resumes_with_its_own_strategy_section(tmp_path: Path):
    """A run started with ``~strategy.name +strategy._target_=...`` saved no name; reading it back
    must not add the default's ``name: fedavg`` beside its ``_target_``."""
    target = "flwr.serverapp.strategy.FedProx"  # any class by _target_, as a plug-in is given
    cfg = load_config("default", ["~strategy.name", f"+strategy._target_={target}", "+strategy.proximal_mu=0.5"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert dict(load_run_config(tmp_path).strategy) == {"_target_": target, "proximal_mu": 0.5}


@pytest.mark.parametrize(("overrides", "message"), [
    (["federation.round=4"], "unknown config key 'federation.round'; did you mean 'federation.rounds'?"),
    (["+federation.round=4"], "unknown config key 'federation.round'; did you mean 'federation.rounds'?"),
    (["+train.learning_rate=0.1"], "unknown config key 'train.learning_rate'"),
    (["train.lr=abc"], "config value train.lr: Value 'abc' of type 'str' could not be converted to Float"),
    (["scenario=missing_b99"], "scenario=missing_b99 does not exist; one of: cross_i3t7,"),
    (["federation.min_train_clients=11"], "min_train_clients=11 is invalid: must be in [1, federation.num_clients=10]"),
    (["strategy.name=fedfoo"], "cannot be built: ValueError: unknown strategy 'fedfoo'"),
    (["+strategy.proximal=0.1", "strategy.name=fedprox"],
     "cannot be built: TypeError: FedProx.__init__() got an unexpected keyword argument 'proximal'"),
    (["~strategy.name", "+strategy._target_=no_such_lab.Mine"], "cannot be built: ImportError:"),
    (["model.tiny_pretrain_steps=10"], "model.tiny_pretrain_steps=10 is invalid: must be 0 (untrained) or >= 20"),
])
def test_a_config_mistake_is_one_line_naming_the_key(overrides: list[str], message: str):
    with pytest.raises(ConfigError) as caught:
        load_config("default", overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_simulate_refuses_a_typo_in_seconds_with_exit_code_2_and_no_traceback(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "anther.cli", "simulate", "federation.round=4",
                           f"output_dir={tmp_path}"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr == "anther: error: unknown config key 'federation.round'; did you mean 'federation.rounds'?\n"
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


def test_an_unreadable_run_config_is_refused_naming_the_file(tmp_path: Path):
    cfg = OmegaConf.to_container(load_config("default"))
    cfg["federation"]["round"] = 3
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(ConfigError, match=r"resume: .*config\.yaml: unknown config key 'federation\.round'"):
        load_run_config(tmp_path)


def _prepared(tmp_path: Path, overrides: list[str]):
    from anther.simulations.assets import prepare_assets

    return prepare_assets(load_config("default", ["model.tiny_pretrain_steps=0", *overrides]))


@pytest.mark.parametrize(("overrides", "message"), [
    (["federation.num_clients=40", "data.train_size=40", "partition.scheme=dirichlet", "partition.alpha=0.05"],
     "cannot be split as asked (40 training samples over federation.num_clients=40, partition.scheme=dirichlet"),
    (["federation.num_clients=40", "data.train_size=40", "scenario=quantity_skew"],
     "quantity skew over 40 clients needs at least 80 samples"),
])
def test_a_split_that_cannot_be_made_is_refused_before_the_run(tmp_path, monkeypatch, overrides, message):
    monkeypatch.setenv("ANTHER_HOME", str(tmp_path))
    cfg = _prepared(tmp_path, overrides)
    with pytest.raises(ConfigError) as caught:
        check_partitions(cfg, Path(cfg.data.path))
    assert message in str(caught.value)


def test_a_data_folder_with_fewer_samples_than_clients_is_refused(tmp_path, monkeypatch):
    from anther.core.sample import write_split
    from anther.data import shapes_vqa

    monkeypatch.setenv("ANTHER_HOME", str(tmp_path))
    write_split(shapes_vqa.generate(3, 0, prefix="train"), tmp_path / "data", "train")
    write_split(shapes_vqa.generate(2, 1, prefix="test"), tmp_path / "data", "test")
    cfg = _prepared(tmp_path, [f"data.path={tmp_path / 'data'}", "federation.num_clients=5"])
    with pytest.raises(ConfigError, match=r"train split of .* has 3 samples for federation.num_clients=5"):
        check_partitions(cfg, Path(cfg.data.path))
    three = OmegaConf.merge(cfg, {"federation": {"num_clients": 3}})
    assert check_partitions(three, Path(cfg.data.path)) == [1, 1, 1]


def test_a_run_folder_that_cannot_be_written_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"run folder .*file/run cannot be written"):
        check_writable(blocker / "run")
    check_writable(tmp_path / "run")  # a writable one passes, and is left empty
    assert not list((tmp_path / "run").iterdir())
