"""Where a client computes and in which precision (anther/model/placement.py).

No GPU is assumed where anther is built, so the device plumbing is tested on the CPU: the NanoEdge
goes where ``model.client_device`` says, a device that is not there is refused by name, and a
whole step (training, DP, private labels, scoring, generation) runs with PyTorch's default device
set to ``meta``: any tensor made without naming the client's device lands there and the first
operation that mixes it with the client's tensors fails, as it would on a GPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import FAMILY_FIXTURES

from anther.backbone.in_process import InProcessBackbone
from anther.client.dp import DPSGD
from anther.client.inference import greedy_answers, option_scores
from anther.client.local_training import LocalTraining
from anther.client.private_labels import PrivateLabelBackbone
from anther.client.runtime import runtime_for
from anther.client.trainer import dp_split_step, split_step, train_adapters
from anther.core.config import TINY_MODEL_MARKER, wire_dtype
from anther.model.families import FAMILIES, load_processor
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import NanoEdge
from anther.model.placement import PlacementError, autocaster, resolve_device
from anther.model.sample_encoder import SampleEncoder
from anther.model.side_loading import load_side
from anther.simulations.experiment import load_config


def _perturbed(edge: NanoEdge) -> NanoEdge:
    with torch.no_grad():
        for p in edge.adapters.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    return edge


# Qwen2.5-VL is left out by name: transformers' own vision window index for it is built on the
# default device and moved afterwards, so a meta default breaks HF's code, not anther's.
ON_ONE_DEVICE = sorted(set(FAMILIES) - {"qwen2_5_vl"})


@pytest.mark.parametrize("family", ON_ONE_DEVICE)
def test_every_tensor_of_a_step_is_made_on_the_clients_device(family, request, samples):
    family_model_dir = request.getfixturevalue(FAMILY_FIXTURES[family])
    edge = _perturbed(NanoEdge.from_pretrained(family_model_dir, NanoAdapterConfig(rank=4), device="cpu"))
    encoder = SampleEncoder(edge, load_processor(family_model_dir))
    backbone = InProcessBackbone.from_pretrained(family_model_dir)
    head = load_side(family_model_dir, "server").lm_head
    params = [p for p in edge.adapters.parameters()]
    batch = [s if i % 2 else s.without_image() for i, s in enumerate(samples[:4])]
    with torch.device("meta"):
        plain = split_step(encoder, backbone, batch)
        private = split_step(encoder, PrivateLabelBackbone(backbone, head), batch)
        noised = dp_split_step(encoder, backbone, batch, params)
        scores = option_scores(encoder, backbone, batch)
        answers = greedy_answers(encoder, backbone, batch, max_new_tokens=3)
    assert plain.loss == pytest.approx(private.loss, rel=1e-5) and noised.loss == pytest.approx(plain.loss, rel=1e-5)
    assert all(p.grad is not None and p.grad.device.type == "cpu" for p in params)
    assert len(scores) == 4 and all(torch.isfinite(torch.tensor(s)).all() for s in scores) and len(answers) == 4


def test_a_dp_training_round_runs_on_the_clients_device(tiny_model_dir, samples):
    edge = NanoEdge.from_pretrained(tiny_model_dir, NanoAdapterConfig(rank=4), device="cpu")
    encoder = SampleEncoder(edge, load_processor(tiny_model_dir))
    dp = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5, expected_batch_size=6.0,
               generator=torch.Generator().manual_seed(0))
    backbone = InProcessBackbone.from_pretrained(tiny_model_dir)
    with torch.device("meta"):
        report = train_adapters(encoder, backbone, samples, LocalTraining(2, 4, 1e-2), seed=0, dp=dp)
    assert report.steps == 2 and all(p.device.type == "cpu" for p in edge.adapters.parameters())


def test_the_client_is_placed_as_the_config_says_with_fp32_adapters(tiny_model_dir):
    cfg = load_config("default", [f"model.path={tiny_model_dir}", "model.client_device=cpu", "model.dtype=bfloat16"])
    runtime = runtime_for(cfg)
    edge = runtime.edge
    assert edge.device == torch.device("cpu")
    frozen = [*edge.vision_tower.parameters(), *edge.connector.parameters(), *edge.embed_tokens.parameters()]
    assert {p.dtype for p in frozen} == {torch.bfloat16}
    assert {p.dtype for p in edge.adapters.parameters()} == {torch.float32}  # fp32 master weights


def test_a_bf16_client_and_backbone_train_a_step_into_fp32_adapters(tiny_model_dir, samples):
    """The bf16 path end to end (the frozen modules and the backbone in bf16, the adapters in fp32),
    at the tiny model's size, where it is quick on a CPU with or without bfloat16 arithmetic."""
    cfg = load_config("default", [f"model.path={tiny_model_dir}", "model.client_device=cpu", "model.dtype=bfloat16",
                                  "backbone.wire_dtype=bfloat16"])
    runtime = runtime_for(cfg)
    before = {k: v.clone() for k, v in runtime.edge.adapter_state().items()}
    report = train_adapters(runtime.encoder, runtime.backbone, samples[:4], LocalTraining(1, 4, 1e-2), seed=0)
    after = runtime.edge.adapter_state()
    assert report.steps == 1 and torch.isfinite(torch.tensor(report.loss))
    assert {v.dtype for v in after.values()} == {torch.float32}
    assert any(not torch.equal(before[k], after[k]) for k in before), "the bf16 step did not reach the adapters"



def test_the_wire_is_bf16_for_a_real_checkpoint_and_fp32_for_the_tiny_one(tmp_path, tiny_model_dir):
    real = tmp_path / "real"
    real.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name != TINY_MODEL_MARKER:  # a checkpoint anther did not make
            (real / f.name).write_bytes(f.read_bytes())
    assert wire_dtype(load_config("default", [f"model.path={real}"])) == "bfloat16"
    assert wire_dtype(load_config("default", [f"model.path={tiny_model_dir}"])) == "float32"
    assert wire_dtype(load_config("default")) == "float32"
    assert wire_dtype(load_config("default", [f"model.path={real}", "backbone.wire_dtype=float16"])) == "float16"


def test_a_device_that_is_not_there_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(PlacementError, match=r"model.client_device='cuda:1': this process sees 0 CUDA device"):
        resolve_device("cuda:1")
    with pytest.raises(PlacementError, match="is not a device"):
        resolve_device("gpu7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")  # the one Ray or CUDA_VISIBLE_DEVICES left visible
    with pytest.raises(PlacementError, match="sees 1 CUDA device"):
        resolve_device("cuda:1")


def test_autocast_runs_where_the_device_has_it_and_warns_where_not(monkeypatch):
    with autocaster(torch.device("cpu"), "bfloat16")():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        context = autocaster(torch.device("cuda"), "bfloat16")
    assert "model.autocast=bfloat16 is not supported on cuda" in str(caught[0].message)
    with context():
        assert not torch.is_autocast_enabled("cuda")


def test_a_bf16_client_and_backbone_stay_close_to_fp32(tiny_model_dir, samples):
    """bf16 keeps 8 bits of mantissa: each rounding is off by up to 2**-8 relative, and a few
    hundred of them across the tiny model's layers leave log-probabilities within about 0.1 of
    fp32's (measured: 0.046 at most, and the loss 0.1% off, on these samples, for bf16 weights
    and for bf16 autocast alike). So the bound is 0.15 on every
    log-probability of the answer tokens and 2% on the loss; fp32 itself is held to 1e-5 by the
    correctness anchor."""
    def run(dtype: torch.dtype, autocast: str) -> tuple[float, torch.Tensor]:
        edge = _perturbed(NanoEdge.from_pretrained(tiny_model_dir, NanoAdapterConfig(rank=4), dtype=dtype))
        edge.autocast = autocaster(edge.device, autocast)
        backbone = InProcessBackbone.from_pretrained(tiny_model_dir, dtype=dtype, autocast=autocast)
        encoder = SampleEncoder(edge, load_processor(tiny_model_dir))
        batch = encoder(samples, [s.answer for s in samples])
        loss, _ = backbone.train_step(edge(batch), batch.attention_mask, batch.labels, batch.position_ids)
        with torch.no_grad():
            logp = torch.log_softmax(backbone.logits(edge(batch), batch.attention_mask).float(), dim=-1)
        picked = logp[:, :-1].gather(-1, batch.labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return loss, picked[batch.labels[:, 1:] != -100]

    loss32, logp32 = run(torch.float32, "none")
    for dtype, autocast in ((torch.bfloat16, "none"), (torch.float32, "bfloat16")):
        loss, logp = run(dtype, autocast)
        assert loss == pytest.approx(loss32, rel=0.02), (dtype, autocast)
        assert (logp - logp32).abs().max() < 0.15, (dtype, autocast, (logp - logp32).abs().max())
