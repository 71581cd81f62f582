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
from anther.data.formats.registry import FORMATS
from anther.model.families import FAMILIES
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


def test_a_run_with_a_plugin_strategy_resumes_with_its_own_strategy_section(tmp_path: Path):
    """A run started with ``~strategy.name +strategy._target_=...`` saved no name; reading it back
    must not add the default's ``name: fedavg`` beside its ``_target_``."""
    cfg = load_config("default", ["~strategy.name", "+strategy._target_=my_lab.Mine", "+strategy.mu=0.5"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert dict(load_run_config(tmp_path).strategy) == {"_target_": "my_lab.Mine", "mu": 0.5}
