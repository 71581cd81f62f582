"""``mode=whole_model``: the client holds the whole MLLM and trains peft LoRA inside its LLM.

Held to the correctness anchor like split mode: with fresh LoRA the logits are the Hugging Face
model's own, and the LoRA gradients of one training step equal those of the Hugging Face model
with the same LoRA injected by peft, trained in one process. The config refuses what whole-model mode
cannot do, naming the key; a federated run goes end to end through ``anther simulate``."""

from __future__ import annotations

import json
import math
import re

import peft
import pytest
import torch
import yaml
from safetensors.torch import load_file
from simulation_run import shared_run
from transformers import AutoModelForImageTextToText

from anther.cli import main
from anther.client.runtime import runtime_for
from anther.client.trainer import split_step
from anther.core.config import ConfigError
from anther.core.sample import write_split
from anther.data import shapes_vqa
from anther.model.lora import LoraSettings
from anther.simulations.baselines import initial_adapters
from anther.simulations.experiment import load_config

LORA = LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "down_proj"))


@pytest.fixture(scope="module")
def cfg(tiny_model_dir):
    return load_config("default", ["mode=whole_model", f"model.path={tiny_model_dir}", "lora.rank=4", "lora.alpha=8",
                                   "lora.target_modules=[q_proj,v_proj,down_proj]"])


@pytest.fixture(scope="module")
def runtime(cfg):
    return runtime_for(cfg)


def _random_lora(runtime, seed: int) -> dict[str, torch.Tensor]:
    """LoRA weights with B non-zero too, so the adapted model differs from the base one."""
    generator = torch.Generator().manual_seed(seed)
    return {k: 0.05 * torch.randn(v.shape, generator=generator) for k, v in runtime.edge.adapter_state().items()}


def _hf_lora(hf) -> dict[str, torch.nn.Parameter]:
    """The peft LoRA weights in the Hugging Face model's LLM, under anther's names."""
    return {f"lora.{name.replace('.', '-')}.{side}.weight": getattr(m, f"lora_{side}")["default"].weight
            for name, m in hf.model.language_model.named_modules() if hasattr(m, "lora_A") for side in "AB"}


def _hf_with_lora(model_dir, state: dict[str, torch.Tensor]):
    """The Hugging Face model with the same LoRA put into its LLM by peft, weights copied in."""
    hf = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    config = peft.LoraConfig(r=LORA.rank, lora_alpha=LORA.alpha, target_modules=list(LORA.target_modules))
    peft.inject_adapter_in_model(config, hf.model.language_model)
    with torch.no_grad():
        for name, weight in _hf_lora(hf).items():
            weight.copy_(state[name])
    return hf


def test_the_adapters_are_lora_in_the_llm_and_nothing_travels(runtime):
    state = runtime.edge.adapter_state()
    layers = len(runtime.backbone.decoder.layers)
    # A, B x 3 targets
    assert len(state) == 2 * 3 * layers and all(k.startswith("lora.layers-") for k in state)
    assert runtime.edge.rank == 4 and runtime.backbone.counts_traffic is False
    trainable = {id(p) for p in runtime.backbone.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in runtime.edge.adapters.parameters()}  # LoRA, and only LoRA
    assert not any(p.requires_grad for p in runtime.edge.vision_tower.parameters())


def test_fresh_lora_is_the_pretrained_model_and_seeded(runtime, cfg, samples, tiny_model_dir):
    fresh = initial_adapters(cfg, runtime.edge)
    assert fresh.keys() == runtime.edge.adapter_state().keys()
    assert all(torch.equal(a, b) for a, b in zip(fresh.values(), initial_adapters(cfg, runtime.edge).values()))
    assert all(not v.any() for k, v in fresh.items() if k.endswith(".B.weight"))
    assert all(v.abs().sum() > 0 for k, v in fresh.items() if k.endswith(".A.weight"))
    runtime.edge.load_adapter_state(fresh)
    hf = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    batch = runtime.encoder(samples[:4], [s.answer for s in samples[:4]])
    with torch.no_grad():
        ours = runtime.backbone.logits(runtime.edge(batch), batch.attention_mask)
        theirs = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    pixel_values=batch.pixel_values).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_lora_gradients_equal_the_hf_model_with_peft_lora(runtime, samples, tiny_model_dir):
    state = _random_lora(runtime, seed=1)
    runtime.edge.load_adapter_state(state)
    hf = _hf_with_lora(tiny_model_dir, state)
    batch_samples = samples[:4]
    batch = runtime.encoder(batch_samples, [s.answer for s in batch_samples])

    params = dict(runtime.edge.adapters.named_parameters())
    for p in params.values():
        p.grad = None
    ours = split_step(runtime.encoder, runtime.backbone, batch_samples)
    theirs = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
                labels=batch.labels).loss
    theirs.backward()
    assert ours.loss == pytest.approx(theirs.item(), rel=1e-5)
    assert ours.bytes_up == ours.bytes_down == 0
    hf_lora = _hf_lora(hf)
    assert hf_lora.keys() == params.keys()
    for name, p in params.items():
        torch.testing.assert_close(p.grad, hf_lora[name].grad, rtol=1e-4, atol=1e-6)
    assert any(p.grad.abs().sum() > 0 for p in params.values())


@pytest.mark.parametrize(("override", "named"), [
    ("mode=federated", "mode='federated'"),
    ("backbone.mode=service", "backbone.mode='service'"),
    ("privacy.dp=true privacy.noise_multiplier=1.0", "privacy.dp=True"),
    ("backbone.private_labels=true", "backbone.private_labels=True"),
    ("strategy.name=hetero_rank", "strategy.name='hetero_rank'"),
    ("lora.rank=0", "lora.rank=0"),
    ("lora.target_modules=[]", "lora.target_modules=[]"),
])
def test_what_local_mode_cannot_do_is_refused_by_key(override, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_config("default", ["mode=whole_model", *override.split()])


def test_a_target_module_the_llm_lacks_is_named(tiny_model_dir):
    cfg = load_config(
        "default", ["mode=whole_model", f"model.path={tiny_model_dir}", "lora.target_modules=[qkv_fused]"]
    )
    with pytest.raises(ValueError, match=r"lora.target_modules=\['qkv_fused'\]"):
        runtime_for(cfg)


@pytest.mark.slow
def test_a_federated_run_in_local_mode_trains_lora_and_sends_no_activations(tmp_path_factory):
    """``anther simulate mode=whole_model`` with Fisher merging (each client's Fisher is of its LoRA)."""
    run_dir, result = shared_run(tmp_path_factory, "whole_model")
    adapters = load_file(str(run_dir / "checkpoints" / "round-0002" / "adapters.safetensors"))
    assert adapters and all(k.startswith("lora.layers-") for k in adapters)
    # B starts at zero: trained
    assert any(k.endswith(".B.weight") and v.abs().sum() > 0 for k, v in adapters.items())
    trained = result["rounds"][1:]
    assert all(r["activation_bytes_up"] == r["activation_bytes_down"] == 0 for r in trained)
    assert all(r["adapter_bytes_up"] > 0 and math.isfinite(r["train_loss"]) for r in trained)


def test_the_baselines_and_the_bench_report_run_in_local_mode(tiny_model_dir, tmp_path):
    """A micro grid of local-only and centralised in whole-model mode: LoRA trains in both, and the
    report has both (the strategies' federated runs are the end-to-end test below)."""
    write_split(shapes_vqa.generate(32, seed=1, prefix="train"), tmp_path / "data", "train")
    write_split(shapes_vqa.generate(6, seed=2, prefix="test"), tmp_path / "data", "test")
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "seeds": [0], "scenarios": ["iid"],
        "methods": {"local_only": ["baseline=local_only"], "centralised": ["baseline=centralised"]},
        "overrides": ["mode=whole_model", "lora.rank=2", "federation.num_clients=2", "federation.rounds=1",
                      "train.local_steps=2", "train.batch_size=4", "data.client_test_fraction=0.25",
                      "eval.server_test_size=6", "eval.generate=false", f"model.path={tiny_model_dir}",
                      f"data.path={tmp_path / 'data'}"]}))
    assert main(["bench", str(grid), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {c["method"] for c in report["cells"]} == {"local_only", "centralised"}
    for method in ("local_only", "centralised"):
        adapters = load_file(str(next((tmp_path / "out" / "cells").glob(f"{method}__*"))
                                  / "checkpoints" / "round-0001" / "adapters.safetensors"))
        # local-only keeps each client's own (client-K.lora...), centralised one set
        assert adapters and all(re.fullmatch(r"(client-\d+\.)?lora\.layers-.+", k) for k in adapters), method
