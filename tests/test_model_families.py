"""The family registry: every family makes a tiny checkpoint offline that loads back through
``from_pretrained``, and bad choices are named. (Each family's correctness anchor is in
tests/test_correctness.py; the tiny Idefics3 also runs end to end in tests/test_simulation_e2e.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoProcessor

from anther.core.config import ConfigError
from anther.model.families import FAMILIES, family_for
from anther.simulations.experiment import load_config


def test_unknown_model_type_names_the_known_families():
    with pytest.raises(ValueError, match=rf"'mllama' has no anther family; known: {re.escape(str(sorted(FAMILIES)))}"):
        family_for("mllama")


def test_an_outside_family_registers_by_its_module_and_loads_when_first_asked_for(tmp_path: Path, monkeypatch):
    """``register_family("type", "module:Class")``: the module is imported when a checkpoint of that
    type is first split, not before, and the same instance answers every time."""
    from anther.model.families import register_family

    (tmp_path / "my_family.py").write_text("from anther.model.families.llava import LlavaFamily\n\n\n"
                                           "class MyFamily(LlavaFamily):\n    name = 'my_llava'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(FAMILIES, "_where", dict(FAMILIES._where))  # leave the registry as it was
    monkeypatch.setattr(FAMILIES, "_made", dict(FAMILIES._made))
    register_family("my_llava", "my_family:MyFamily")
    assert "my_llava" in FAMILIES and "my_family" not in sys.modules
    family = family_for("my_llava")
    assert type(family).__name__ == "MyFamily" and family_for("my_llava") is family
    with pytest.raises(ValueError, match="'module:Class'"):
        register_family("other", "my_family.MyFamily")


def test_cli_makes_a_tiny_idefics3_that_loads_back(tmp_path: Path):
    out = tmp_path / "tiny"
    proc = subprocess.run([sys.executable, "-m", "anther.cli", "model", "init-tiny", "--out", str(out),
                           "--family", "idefics3", "--pretrain-steps", "0"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "idefics3" and family_for(config.model_type) is FAMILIES["idefics3"]
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_token_id == config.image_token_id
    assert json.loads((out / "anther_tiny.json").read_text())["pretrain_steps"] == 0


@pytest.mark.parametrize(("overrides", "match"), [
    (["model.tiny_family=mllama"], rf"model\.tiny_family='mllama'.*{re.escape(', '.join(sorted(FAMILIES)))}"),
    (["model.tiny_family=idefics3", "model.tiny_pretrain_steps=100"], r"model\.tiny_pretrain_steps=100.*LLaVA"),
])
def test_bad_family_choices_name_the_key(overrides: list[str], match: str):
    with pytest.raises(ConfigError, match=match):
        load_config("default", overrides)


def test_the_pretraining_recipe_refuses_other_families(tmp_path: Path):
    from anther.model.tiny_model import init_tiny

    with pytest.raises(ValueError, match="tiny_pretrain_steps=0"):
        init_tiny(tmp_path / "m", pretrain_steps=10, family="idefics3")
