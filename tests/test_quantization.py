"""Quantised backbones (bitsandbytes, CUDA only): the settings are checked before anything
loads, each refusal names the setting and what to do, and a quantised load keeps the
client-side modules and the LM head unquantised."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from anther.backbone.in_process import InProcessBackbone
from anther.backbone.quantization import KEPT_IN_DTYPE, check_quantization, quantization_config
from anther.cli import main
from anther.core.config import ConfigError
from anther.model.side_loading import side_class
from anther.simulations.experiment import load_config


def test_no_gpu_is_named_before_anything_loads(monkeypatch, tiny_model_dir: Path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="backbone.quantization=8bit needs a CUDA GPU.*backbone.quantization=none"):
        InProcessBackbone.from_pretrained(tiny_model_dir, quantization="8bit")


def test_a_cpu_device_and_a_missing_bitsandbytes_are_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="not model.device='cpu'.*model.device=cuda"):
        check_quantization("4bit", "cpu")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="needs bitsandbytes: pip install"):
        check_quantization("4bit", "cuda:0")
    check_quantization("none", "cpu")


def test_serve_refuses_quantization_without_a_gpu_and_does_not_listen(monkeypatch, tiny_model_dir, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["backbone", "serve", "--model", str(tiny_model_dir), "--insecure", "--quantization", "4bit"])
    assert code == 2
    assert "anther: error: backbone.quantization=4bit needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "match"), [
    (["backbone.quantization=3bit"], r"backbone\.quantization='3bit'.*none, 8bit, 4bit"),
    (["backbone.quantization=8bit"], r"backbone\.quantization='8bit'.*needs backbone\.mode=service or remote"),
])
def test_bad_quantization_configs_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("default", overrides)


def test_service_mode_accepts_quantization_in_the_config():
    cfg = load_config("default", ["backbone.mode=service", "backbone.quantization=4bit", "model.device=cuda"])
    assert cfg.backbone.quantization == "4bit"


@pytest.mark.parametrize(("fixture", "vision", "connector"), [
    ("tiny_model_dir", "model.vision_tower", "model.multi_modal_projector"),
    ("tiny_llava_next_dir", "model.vision_tower", "model.multi_modal_projector"),
    ("tiny_idefics3_dir", "model.vision_model", "model.connector"),
    ("tiny_qwen2_vl_dir", "model.visual", "model.visual.merger"),
    ("tiny_qwen2_5_vl_dir", "model.visual", "model.visual.merger"),
])
def test_a_quantised_backbone_has_no_client_modules_and_keeps_its_head_in_dtype(request, fixture, vision,
                                                                                 connector):
    config = AutoConfig.from_pretrained(request.getfixturevalue(fixture))
    with torch.device("meta"):
        server = side_class(config.model_type, "server")(config)  # what a quantised load builds
    names = list(server.state_dict())
    assert not [n for n in names if n.startswith((vision, connector))] and "lm_head.weight" in names
    assert KEPT_IN_DTYPE == ["lm_head"]
    eight = quantization_config("8bit", torch.bfloat16)
    four = quantization_config("4bit", torch.bfloat16)
    assert eight.load_in_8bit and eight.llm_int8_skip_modules == KEPT_IN_DTYPE
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("none", torch.float32) is None
