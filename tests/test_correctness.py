"""The correctness anchor (docs/design.md): NanoEdge + backbone == the Hugging Face model, for
every registered model family (each on its tiny checkpoint).

1. With fresh adapters, the split path gives the same logits (and loss) as the Hugging Face
   model called on its own processor's output, ``model(**processor(...)).logits``, for
   image+text, text-only and mixed batches.
2. The adapter gradients from the split exchange (client backward of the gradient
   the backbone returns) equal those of the composed model trained in one process.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForImageTextToText

from anther.backbone.in_process import InProcessBackbone
from anther.backbone.interface import causal_lm_loss
from anther.core.images import in_memory
from anther.model.chat_format import conversation
from anther.model.families import FAMILIES, load_processor
from anther.model.nano_adapter import NanoAdapterConfig
from anther.model.nano_edge import NanoEdge
from anther.model.sample_encoder import SampleEncoder


def _flat(pictures: list[list]) -> list | None:
    return [im for each in pictures for im in each] or None


# How each family's processor takes the pictures of a batch (a list per sample, maybe empty).
HF_IMAGES = {
    "llava": _flat,
    "llava_next": _flat,
    "idefics3": lambda pictures: [list(each) for each in pictures] if any(pictures) else None,
    "qwen2_vl": _flat,
    "qwen2_5_vl": _flat,
}


@pytest.fixture(scope="module")
def model_dir(family_model_dir):
    return family_model_dir


@pytest.fixture(scope="module")
def parts(model_dir):
    processor = load_processor(model_dir)
    hf = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    edge = NanoEdge.from_pretrained(model_dir, NanoAdapterConfig(rank=4, alpha=4))
    backbone = InProcessBackbone.from_pretrained(model_dir)
    return processor, hf, edge, backbone


def test_every_family_is_tested_here():
    assert sorted(HF_IMAGES) == sorted(FAMILIES)


def _batch(processor, edge, samples):
    encoder = SampleEncoder(edge, processor)
    return encoder(samples, [s.answer for s in samples])


def _hf(hf, processor, encoder, samples, labels=None):
    """The Hugging Face model on its own processor's output for ``samples``: each conversation and
    its answer rendered by the processor's own ``apply_chat_template``."""
    answer = [{"role": "assistant", "content": [{"type": "text", "text": s.answer}]} for s in samples]
    pictures = [encoder.pictures(s) for s in samples]  # several, or tiled into one for single-picture families
    texts = [processor.apply_chat_template(conversation(s, pictures=len(p)) + [a], tokenize=False)
             for s, p, a in zip(samples, pictures, answer)]
    images = HF_IMAGES[hf.config.model_type](pictures)
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return inputs, hf(**inputs, labels=labels)


def _reshaped(samples):
    """The samples' pictures stretched to other sizes and aspect ratios: tiling families pick
    other grids, pad tiles and unpad features per image."""
    sizes = [(48, 48), (64, 36), (30, 52), (80, 40)]
    return [dataclasses.replace(s, images=in_memory(s.image.resize(sizes[i % len(sizes)])))
            for i, s in enumerate(samples)]


def _multi_turn(samples):
    """Each sample after an earlier turn about the same picture, so conversations of several
    turns are templated as the model's own chat format renders them."""
    earlier = ("how many shapes are there?", "two")
    return [dataclasses.replace(s, history=[earlier] * (i % 3)) for i, s in enumerate(samples)]


def _multi_image(samples):
    """Samples with two or three pictures each (and some with one): families that take several
    get them all, in order; the others get them tiled into one numbered picture."""
    more = [[s.image.resize((40, 56 - 8 * k)) for k in range(i % 3)] for i, s in enumerate(samples)]
    return [dataclasses.replace(s, images=s.images + in_memory(*extra)) for s, extra in zip(samples, more)]


@pytest.mark.parametrize("kind", ["image+text", "mixed", "text-only", "mixed sizes", "multi-turn", "multi-image"])
def test_fresh_adapters_reproduce_hf_logits(parts, samples, kind):
    """Samples without an image carry no image tokens; the split matches HF on any mix."""
    processor, hf, edge, backbone = parts
    if kind == "mixed sizes":
        samples = _reshaped(samples)
    if kind == "multi-turn":
        samples = _multi_turn(samples)
    if kind == "multi-image":
        samples = _multi_image(samples)
    keep = {"mixed": lambda i: i % 2 == 1, "text-only": lambda i: False}.get(kind, lambda i: True)
    samples = [s if keep(i) else s.without_image() for i, s in enumerate(samples)]
    batch = _batch(processor, edge, samples)
    inputs, expected = _hf(hf, processor, SampleEncoder(edge, processor), samples)
    assert torch.equal(batch.input_ids, inputs["input_ids"])
    assert (batch.pixel_values is None) == (kind == "text-only")
    with torch.no_grad():
        got = backbone.logits(edge(batch), batch.attention_mask, batch.position_ids)
    mask = batch.attention_mask.bool()
    assert got.shape == expected.logits.shape
    torch.testing.assert_close(got[mask], expected.logits[mask], rtol=1e-5, atol=1e-5)


def test_split_loss_matches_hf_loss(parts, samples):
    processor, hf, edge, backbone = parts
    batch = _batch(processor, edge, samples)
    _, expected = _hf(hf, processor, SampleEncoder(edge, processor), samples, labels=batch.labels)
    loss, _ = backbone.train_step(edge(batch), batch.attention_mask, batch.labels, batch.position_ids)
    assert loss == pytest.approx(expected.loss.item(), rel=1e-5)


def _perturbed_edge(model_dir, seed: int) -> NanoEdge:
    """Adapters with non-zero up projections, so gradients reach every adapter weight."""
    edge = NanoEdge.from_pretrained(model_dir, NanoAdapterConfig(rank=4, alpha=4))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in edge.adapters.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return edge


def test_split_gradients_equal_one_process_training(model_dir, parts, samples):
    processor, _, _, backbone = parts
    split_edge = _perturbed_edge(model_dir, seed=1)
    joint_edge = NanoEdge.from_pretrained(model_dir, NanoAdapterConfig(rank=4, alpha=4))
    joint_edge.load_adapter_state(split_edge.adapter_state())
    batch = _batch(processor, split_edge, samples)

    # split exchange: backbone returns d loss / d inputs_embeds, the client backpropagates it
    embeds = split_edge(batch)
    _, grad = backbone.train_step(embeds.detach(), batch.attention_mask, batch.labels, batch.position_ids)
    embeds.backward(grad)

    # one process: the composed model, autograd end to end
    joint = causal_lm_loss(backbone.logits(joint_edge(batch), batch.attention_mask, batch.position_ids), batch.labels)
    joint.backward()

    for (name, p_split), (_, p_joint) in zip(split_edge.adapters.named_parameters(),
                                             joint_edge.adapters.named_parameters()):
        assert p_split.grad is not None and p_split.grad.abs().sum() > 0, name
        torch.testing.assert_close(
            p_split.grad, p_joint.grad, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}"
        )
    assert all(p.grad is None for p in backbone.parameters()), "the backbone must stay frozen"


def test_fresh_adapters_are_the_identity(parts, samples):
    """Zero-initialised up projections: a fresh NanoEdge outputs the model's own embeddings."""
    processor, hf, edge, _ = parts
    batch = _batch(processor, edge, samples)
    inputs, _ = _hf(hf, processor, SampleEncoder(edge, processor), samples)
    image_inputs = {k: v for k, v in inputs.items() if k.startswith("pixel_") or k in ("image_sizes", "image_grid_thw")}
    with torch.no_grad():
        merged = hf.model.get_input_embeddings()(batch.input_ids)
        features = hf.model.get_image_features(**image_inputs).pooler_output
        image = torch.cat(list(features), dim=0)
        merged = merged.masked_scatter((batch.input_ids == hf.config.image_token_id).unsqueeze(-1), image)
        torch.testing.assert_close(edge(batch), merged)
