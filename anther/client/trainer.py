"""Local training of a client's NanoAdapters against the backbone (the split exchange).

One step: the NanoEdge builds ``inputs_embeds`` with its adapters; the backbone
returns the loss and d loss / d inputs_embeds; the client backpropagates that
gradient into its adapters and steps its optimizer. Raw pixels and token ids never
leave this function.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from anther.backbone.interface import Backbone
from anther.client.dp import DPSGD, dp_optimizer, per_sample_cotangents, per_sample_grads, poisson_batch
from anther.core.sample import Sample
from anther.model.sample_encoder import SampleEncoder

# A term added to the local objective, a function of the adapters' current weights (a
# proximal pull towards the global weights, say). Its gradient is added to the task loss's.
Regulariser = Callable[[], torch.Tensor]


@dataclass
class TrainReport:
    loss: float  # mean task loss over the local steps (regularisers not included)
    steps: int
    examples: int  # samples seen (steps * batch size; with DP, what the Poisson batches held)
    activation_bytes_up: int  # inputs_embeds + mask + labels sent to the backbone (wire bytes)
    activation_bytes_down: int  # gradients received


@dataclass
class StepResult:
    loss: float
    bytes_up: int
    bytes_down: int


def split_step(encoder: SampleEncoder, backbone: Backbone, batch_samples: list[Sample],
               regularisers: Sequence[Regulariser] = ()) -> StepResult:
    """One exchange with the backbone; leaves d(task loss + regularisers)/d adapters in ``.grad``.

    The task loss's gradient reaches NanoAdapters through ``embeds.backward(grad)`` (LoRA inside
    the LLM, in ``mode=whole_model``, gets it inside the in-process backbone's ``train_step``); each
    regulariser is a purely local function of the weights, so its gradient is accumulated
    by its own ``backward()``.
    """
    embeds, _, grad, result = _exchange(encoder, backbone, batch_samples)
    if embeds.requires_grad:  # NanoAdapters; LoRA (mode=whole_model) got its gradient in train_step
        embeds.backward(grad.to(embeds.dtype))
    _add_gradients_of(regularisers)
    return result


def dp_split_step(encoder: SampleEncoder, backbone: Backbone, batch_samples: list[Sample],
                  params: Sequence[torch.Tensor]) -> StepResult | None:
    """One DP-SGD exchange (:mod:`anther.client.dp`): leaves each sample's task gradient in
    ``p.grad_sample`` (shape (samples, *p.shape)) for opacus's ``DPOptimizer`` to clip and
    noise. The backbone request is the plain one. An empty Poisson batch leaves zero samples
    (the optimizer's step is then noise alone) and returns None (no loss measured)."""
    if not batch_samples:
        for p in params:
            p.grad_sample = p.new_zeros((0, *p.shape))
        return None
    embeds, labels, grad, result = _exchange(encoder, backbone, batch_samples)
    cotangents = per_sample_cotangents(grad.to(embeds.dtype), labels)
    for p, g in zip(params, per_sample_grads(embeds, cotangents, params)):
        p.grad_sample = g
    return result


def _exchange(encoder: SampleEncoder, backbone: Backbone,
              batch_samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, StepResult]:
    """The batch embedded by the NanoEdge and sent in one TrainStep: (embeddings, labels,
    d loss / d embeddings, the loss and the bytes as the wire counted them)."""
    batch = encoder(batch_samples, [s.answer for s in batch_samples])
    embeds = encoder.edge(batch)
    up0, down0 = backbone.bytes_up, backbone.bytes_down
    loss, grad = backbone.train_step(embeds.detach(), batch.attention_mask, batch.labels, batch.position_ids)
    return embeds, batch.labels, grad, StepResult(loss, backbone.bytes_up - up0, backbone.bytes_down - down0)


def _add_gradients_of(regularisers: Sequence[Regulariser]) -> None:
    """Add each regulariser's gradient to the weights' ``.grad``. Under DP this runs after
    clipping and noise: a regulariser is a function of the weights only, not of any sample, so
    it does not touch the guarantee."""
    for regulariser in regularisers:
        term = regulariser()
        if term.requires_grad:  # a term over no trainable weight is a constant
            term.backward()


def train_adapters(encoder: SampleEncoder, backbone: Backbone, samples: list[Sample], steps: int,
                   batch_size: int, lr: float, seed: int, weight_decay: float = 0.0,
                   max_grad_norm: float = 1.0, show_progress: bool = False,
                   regularisers: Sequence[Regulariser] = (), dp: DPSGD | None = None) -> TrainReport:
    """Run ``steps`` split-learning steps on batches drawn from ``samples``, minimising the task
    loss plus ``regularisers``. Optimises the adapter parameters that require grad.

    Without ``dp``: shuffled batches of ``batch_size`` drawn with ``seed``, the batch gradient
    clipped to ``max_grad_norm``. With ``dp``: Poisson batches from ``dp.sampler`` (not
    ``seed``: the server knows it) and opacus's DP-SGD steps (``dp`` clips per sample).
    """
    if not samples:
        raise ValueError("this client has no training samples")
    edge = encoder.edge
    params = [p for p in edge.adapters.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if dp is not None:  # opacus clips and noises; the regularisers' gradients join after that
        opt = dp_optimizer(opt, dp)
        opt.attach_step_hook(lambda _: _add_gradients_of(regularisers))
    rng = random.Random(seed)
    order: list[int] = []
    losses, up, down, seen = [], 0, 0, 0
    edge.train()
    for _ in tqdm(range(steps), desc="local training", unit="step", disable=not show_progress, leave=False):
        opt.zero_grad(set_to_none=True)
        if dp is None:
            if len(order) < batch_size:
                order += rng.sample(range(len(samples)), len(samples))
            idx, order = order[:batch_size], order[batch_size:]
            step = split_step(encoder, backbone, [samples[i] for i in idx], regularisers)
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        else:
            idx = poisson_batch(dp.sampler, len(samples), dp.sample_rate)
            step = dp_split_step(encoder, backbone, [samples[i] for i in idx], params)
        opt.step()
        seen += len(idx)
        if step is None:
            continue
        losses.append(step.loss)
        up += step.bytes_up
        down += step.bytes_down
    edge.eval()
    loss = sum(losses) / len(losses) if losses else float("nan")
    return TrainReport(loss, steps, seen, up, down)
