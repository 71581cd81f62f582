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
from typing import Any

import torch
from tqdm.auto import tqdm

from anther.backbone.interface import Backbone
from anther.client.dp import DPSGD, dp_optimizer, per_sample_cotangents, per_sample_grads, poisson_batch
from anther.client.local_optimiser import build_optimiser, build_schedule
from anther.client.local_training import LocalTraining
from anther.core.sample import Sample
from anther.model.sample_encoder import SampleEncoder

# A term added to the local objective, a function of the adapters' current weights (a
# proximal pull towards the global weights, say). Its gradient is added to the task loss's.
Regulariser = Callable[[], torch.Tensor]
# Called once per local step, when the task gradient is in the adapters' ``.grad``: it changes
# ``.grad`` in place (adds a correction, say). Runs before or after clipping (``train.hook_order``).
GradientHook = Callable[[], None]


def regulariser_hook(regulariser: Regulariser) -> GradientHook:
    """The hook that adds ``regulariser``'s gradient to ``.grad`` (by its own ``backward()``)."""
    def hook() -> None:
        term = regulariser()
        if term.requires_grad:  # a term over no trainable weight is a constant
            term.backward()
    return hook


@dataclass
class TrainReport:
    loss: float  # mean task loss over the local steps (regularisers not included)
    steps: int
    examples: int  # samples seen (steps * batch size; with DP, what the Poisson batches held)
    activation_bytes_up: int  # inputs_embeds + mask + labels sent to the backbone (wire bytes)
    activation_bytes_down: int  # gradients received
    lrs: list[float]  # the learning rate of each step, as the schedule set it
    optimiser: str  # its class name (``SGD``, ``AdamW``...)
    hyperparameters: dict[str, Any]  # its first parameter group's settings (momentum, nesterov, betas...)


@dataclass
class StepResult:
    loss: float
    bytes_up: int
    bytes_down: int


def split_step(encoder: SampleEncoder, backbone: Backbone, batch_samples: list[Sample],
               hooks: Sequence[GradientHook] = ()) -> StepResult:
    """One exchange with the backbone; leaves d(task loss)/d adapters in ``.grad``, then runs ``hooks``.

    The task loss's gradient reaches NanoAdapters through ``embeds.backward(grad)`` (LoRA inside
    the LLM, in ``mode=whole_model``, gets it inside the in-process backbone's ``train_step``).
    """
    embeds, _, grad, result = _exchange(encoder, backbone, batch_samples)
    if embeds.requires_grad:  # NanoAdapters; LoRA (mode=whole_model) got its gradient in train_step
        embeds.backward(grad.to(embeds.dtype))
    _run(hooks)
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


def _run(hooks: Sequence[GradientHook]) -> None:
    for hook in hooks:
        hook()


def train_adapters(encoder: SampleEncoder, backbone: Backbone, samples: list[Sample], training: LocalTraining,
                   seed: int, hooks: Sequence[GradientHook] = (), dp: DPSGD | None = None,
                   show_progress: bool = False) -> TrainReport:
    """Run ``training.steps`` split-learning steps on batches drawn from ``samples``, optimising the
    adapter parameters that require grad with the configured optimiser and schedule.

    Each step: the task gradient lands in ``.grad``; the ``hooks`` run (a regulariser's gradient,
    SCAFFOLD's correction...) before or after the batch gradient is clipped to
    ``training.max_grad_norm``, as ``training.hook_order`` says; then the optimiser and the
    schedule step. Without ``dp`` batches are shuffled with ``seed``. With ``dp``: Poisson batches
    from ``dp.sampler`` (not ``seed``: the server knows it) and opacus's DP-SGD steps, which clip
    per sample and add noise; the hooks then always run after the noise (they are functions of the
    weights and the server's tensors, not of any sample, so the guarantee holds).
    """
    if not samples:
        raise ValueError("this client has no training samples")
    edge = encoder.edge
    params = [p for p in edge.adapters.parameters() if p.requires_grad]
    opt = build_optimiser(params, training)
    schedule = build_schedule(opt, training)
    if dp is not None:
        opt = dp_optimizer(opt, dp)
        opt.attach_step_hook(lambda _: _run(hooks))
    before = training.hook_order == "before_clipping"
    rng = random.Random(seed)
    order: list[int] = []
    losses, lrs, up, down, seen = [], [], 0, 0, 0
    edge.train()
    for _ in tqdm(range(training.steps), desc="local training", unit="step", disable=not show_progress,
                  leave=False):
        opt.zero_grad(set_to_none=True)
        if dp is None:
            if len(order) < training.batch_size:
                order += rng.sample(range(len(samples)), len(samples))
            idx, order = order[:training.batch_size], order[training.batch_size:]
            step = split_step(encoder, backbone, [samples[i] for i in idx], hooks if before else ())
            if training.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
            if not before:
                _run(hooks)
        else:
            idx = poisson_batch(dp.sampler, len(samples), dp.sample_rate)
            step = dp_split_step(encoder, backbone, [samples[i] for i in idx], params)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
        seen += len(idx)
        if step is None:
            continue
        losses.append(step.loss)
        up += step.bytes_up
        down += step.bytes_down
    edge.eval()
    loss = sum(losses) / len(losses) if losses else float("nan")
    hyper = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    return TrainReport(loss, training.steps, seen, up, down, lrs, type(_inner(opt)).__name__, hyper)


def _inner(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimiser opacus wraps, or ``opt`` itself."""
    return getattr(opt, "original_optimizer", opt)
