"""``anther model report``: counts taken from the real module trees, split against whole-model mode."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from anther.bench.model_sizes import report_for_config, size_report
from anther.cli import main
from anther.model.families import family_for, load_processor
from anther.model.lora import LoraSettings
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import NanoEdge
from anther.model.sample_encoder import SampleEncoder


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_llava_next_dir", "tiny_idefics3_dir", "tiny_qwen2_vl_dir"])
def test_counts_match_a_loaded_nano_edge(fixture, request, samples):
    """On each family's tiny checkpoint the meta-device counts equal what a real NanoEdge holds,
    and the image tokens counted per image (per tile) are those the processor writes (Qwen2-VL's
    depend on the picture's size: the report counts a 448 px one, checked on the 7B config)."""
    tiny_model_dir = request.getfixturevalue(fixture)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    report = report_for_config("tiny", config, adapter_rank=8, lora_rank=4, text_tokens=10, dtype="float32",
                               wire_dtype="float32")
    edge = NanoEdge.from_pretrained(tiny_model_dir, NanoAdapterConfig(rank=8))
    adapters = sum(p.numel() for p in edge.adapters.parameters())
    assert report.adapter_params == adapters
    assert report.client_params == sum(p.numel() for p in edge.parameters()) - adapters
    text = config.text_config
    # r (in + out), square projections
    per_layer = sum(4 * (text.hidden_size + text.hidden_size) for _ in LoraSettings().target_modules)
    assert report.lora_params == text.num_hidden_layers * per_layer
    image_tokens = family_for(config.model_type).image_tokens(config)
    assert report.activation_bytes_down_per_sample == (image_tokens + 10) * text.hidden_size * 4
    if config.model_type != "qwen2_vl":
        batch = SampleEncoder(edge, load_processor(tiny_model_dir))(samples[:2], None)
        assert int((batch.input_ids == config.image_token_id).sum()) == image_tokens * len(batch.pixel_values)


def test_qwen2_vl_7b_counts_a_448_px_picture_and_its_positions():
    r = size_report("qwen2-vl-7b", text_tokens=64)
    assert round(r.total_params / 1e9, 2) == 8.29  # as published
    tokens = (448 // 14) ** 2 // 4 + 64
    assert r.activation_bytes_down_per_sample == tokens * 3584 * 2  # bfloat16 gradient
    assert r.activation_bytes_up_per_sample == tokens * 3584 * 2 + 2 * tokens * 8 + 3 * tokens * 8


def test_llava_7b_client_and_adapter_shares():
    """FedNano's claim on LLaVA-1.5-7B: a client holds under 7% of the parameters, the adapters are
    under 0.02% of them; the published model has 7.06 B parameters."""
    r = size_report("llava-1.5-7b")
    assert round(r.total_params / 1e9, 2) == 7.06
    assert r.client_share <= 0.07 and r.adapter_share <= 0.0002
    assert r.lora_params > 50 * r.adapter_params  # whole-model mode trains and sends far more


def test_cli_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sizes.json"
    assert main(["model", "report", "--models", "llava-1.5-7b", "--json", str(out)]) == 0
    assert "| llava-1.5-7b | 7.06B | split |" in capsys.readouterr().out
    assert json.loads(out.read_text())["models"][0]["client_share"] == pytest.approx(0.0645, abs=5e-4)


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'llava-9b'"):
        size_report("llava-9b")
