"""The public client API: everything a strategy's client half may use, and nothing else.

A strategy is one module with two halves (docs/strategies.md): the server half, a Flower
``Strategy``, and the client half, functions registered here under round-config keys, which
every ClientApp runs when the round config it receives holds the key::

    from anther.client.api import ExtraContext, gradient_hook

    @gradient_hook("my-correction")
    def correction(ctx: ExtraContext):
        c = ctx.array("my-control")           # an ArrayRecord the server put into the message
        params = ctx.parameters()             # the live adapter weights, by name
        def hook():                           # every local step, once the task gradient is in .grad
            for name, p in params.items():
                p.grad.add_(c[name])
        return hook

The four points (each decorator registers ``fn(ctx)``):

=====================  ==========================  ===============================================
decorator              ``fn(ctx)`` returns          runs
=====================  ==========================  ===============================================
:func:`regulariser`    ``() -> tensor``              its gradient joins the task gradient each step
:func:`gradient_hook`  ``() -> None``                each step, changes ``.grad`` in place
:func:`after_training` ``{name: record}``            after training; records go into the reply
:func:`evaluation`     a context manager             around the client's own evaluation
=====================  ==========================  ===============================================

Hooks and regularisers run after the task gradient and before clipping and the optimiser's
step, or after clipping with ``train.hook_order=after_clipping``; under DP-SGD always after
opacus clipped and noised the per-sample gradients. :class:`ExtraContext` holds the round
config, the experiment, the runtime, the local samples, the global adapters as received
(``received``), the strategy's other records (``records``, :meth:`ExtraContext.array`), the
node's persistent ``state``, the round's :class:`LocalTraining` settings and, after training,
its :class:`TrainReport`. The helpers below run the split model for an extra: one batch's
gradients (:func:`batch_gradients`), more local training (:func:`train_more`), an evaluation
(:func:`evaluate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from anther.client.extras import (
    ExtraContext,
    Record,
    after_training,
    evaluation,
    gradient_hook,
    regulariser,
)
from anther.client.inference import evaluate_samples
from anther.client.local_optimiser import optimiser_class
from anther.client.local_training import LocalTraining
from anther.client.trainer import GradientHook, Regulariser, TrainReport, split_step, train_adapters
from anther.core.sample import Sample

__all__ = [
    "ExtraContext", "GradientHook", "LocalTraining", "Record", "Regulariser", "TrainReport", "after_training",
    "batch_gradients", "evaluate", "evaluation", "gradient_hook", "optimiser_class", "regulariser", "train_more",
]


def batch_gradients(ctx: ExtraContext, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """The gradient of the task loss on ``samples`` (one batch, one split forward and backward
    through the backbone), per trainable adapter weight, named as in the adapters; ``.grad`` is left
    as it was found. A weight the batch does not reach (the image adapter on text-only samples) gets
    zeros."""
    params = ctx.parameters()
    saved = {n: p.grad for n, p in params.items()}
    for p in params.values():
        p.grad = None
    try:
        split_step(ctx.runtime.encoder, ctx.runtime.backbone, list(samples))
        return {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for n, p in params.items()}
    finally:
        for n, p in params.items():
            p.grad = saved[n]


def train_more(ctx: ExtraContext, steps: int, seed: int, hooks: Sequence[GradientHook] = ()) -> TrainReport:
    """``steps`` more local steps on ``ctx.samples`` with the round's settings (optimiser, schedule,
    clipping; a fresh optimiser), training whatever adapter weights require grad."""
    training = ctx.training or LocalTraining.from_config(ctx.experiment.train)
    return train_adapters(ctx.runtime.encoder, ctx.runtime.backbone, ctx.samples, replace(training, steps=steps),
                          seed, hooks=hooks)


def evaluate(ctx: ExtraContext, samples: Sequence[Sample] | None = None) -> dict[str, float]:
    """Multiple-choice metrics of the adapters as loaded now on ``samples`` (default ``ctx.samples``)."""
    return evaluate_samples(ctx.runtime.encoder, ctx.runtime.backbone, list(ctx.samples if samples is None
                                                                            else samples),
                            generate=False, batch_size=ctx.experiment.eval.batch_size)
