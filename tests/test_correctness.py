"""The correctness anchor (DESIGN.md): NanoEdge + backbone == the Hugging Face model.

1. With fresh adapters, the split path gives the same logits as
   ``LlavaForConditionalGeneration(**inputs).logits``.
2. The adapter gradients from the split exchange (client backward of the gradient
   the backbone returns) equal those of the composed model trained in one process.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from anther.adapters.nano_adapter import NanoAdapterConfig
from anther.client.inference import Encoder
from anther.client.nano_edge import NanoEdge
from anther.server.backbone import LocalBackbone, causal_lm_loss


@pytest.fixture(scope="module")
def parts(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    edge = NanoEdge.from_pretrained(tiny_model_dir, NanoAdapterConfig(rank=4, alpha=4))
    backbone = LocalBackbone.from_pretrained(tiny_model_dir)
    return processor, hf, edge, backbone


def _batch(processor, edge, samples):
    encoder = Encoder(edge, processor)
    return encoder(samples, [s.answer for s in samples])


def test_fresh_adapters_reproduce_hf_logits(parts, samples):
    processor, hf, edge, backbone = parts
    batch = _batch(processor, edge, samples)
    with torch.no_grad():
        expected = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      pixel_values=batch.pixel_values).logits
        got = backbone.logits(edge(batch), batch.attention_mask)
    mask = batch.attention_mask.bool()
    assert got.shape == expected.shape
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-5, atol=1e-5)


def test_text_only_and_mixed_batches_reproduce_hf_logits(parts, samples):
    """Samples without an image carry no image tokens; the split still matches HF."""
    processor, hf, edge, backbone = parts
    mixed = [s if i % 2 else s.without_image() for i, s in enumerate(samples)]
    batch = _batch(processor, edge, mixed)
    assert batch.pixel_values is not None and batch.pixel_values.shape[0] == len(samples) // 2
    with torch.no_grad():
        expected = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      pixel_values=batch.pixel_values).logits
        got = backbone.logits(edge(batch), batch.attention_mask)
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-5, atol=1e-5)


def test_split_loss_matches_hf_loss(parts, samples):
    processor, hf, edge, backbone = parts
    batch = _batch(processor, edge, samples)
    with torch.no_grad():
        expected = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      pixel_values=batch.pixel_values, labels=batch.labels).loss
    loss, _ = backbone.train_step(edge(batch), batch.attention_mask, batch.labels)
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def _perturbed_edge(tiny_model_dir, seed: int) -> NanoEdge:
    """Adapters with non-zero up projections, so gradients reach every adapter weight."""
    edge = NanoEdge.from_pretrained(tiny_model_dir, NanoAdapterConfig(rank=4, alpha=4))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in edge.adapters.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return edge


def test_split_gradients_equal_one_process_training(tiny_model_dir, parts, samples):
    processor, _, _, backbone = parts
    split_edge = _perturbed_edge(tiny_model_dir, seed=1)
    joint_edge = NanoEdge.from_pretrained(tiny_model_dir, NanoAdapterConfig(rank=4, alpha=4))
    joint_edge.load_adapter_state(split_edge.adapter_state())
    batch = _batch(processor, split_edge, samples)

    # split exchange: backbone returns d loss / d inputs_embeds, the client backpropagates it
    embeds = split_edge(batch)
    _, grad = backbone.train_step(embeds.detach(), batch.attention_mask, batch.labels)
    embeds.backward(grad)

    # one process: the composed model, autograd end to end
    joint = causal_lm_loss(backbone.logits(joint_edge(batch), batch.attention_mask), batch.labels)
    joint.backward()

    for (name, p_split), (_, p_joint) in zip(split_edge.adapters.named_parameters(),
                                             joint_edge.adapters.named_parameters()):
        assert p_split.grad is not None and p_split.grad.abs().sum() > 0, name
        torch.testing.assert_close(p_split.grad, p_joint.grad, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")
    assert all(p.grad is None for p in backbone.parameters()), "the backbone must stay frozen"


def test_fresh_adapters_are_the_identity(parts, samples):
    """Zero-initialised up projections: a fresh NanoEdge outputs the model's own embeddings."""
    processor, hf, edge, _ = parts
    batch = _batch(processor, edge, samples)
    with torch.no_grad():
        merged = hf.model.get_input_embeddings()(batch.input_ids)
        features = hf.model.get_image_features(pixel_values=batch.pixel_values).pooler_output
        image = torch.cat(list(features), dim=0)
        merged = merged.masked_scatter((batch.input_ids == hf.config.image_token_id).unsqueeze(-1), image)
        torch.testing.assert_close(edge(batch), merged)
