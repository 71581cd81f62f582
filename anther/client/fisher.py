"""Diagonal empirical Fisher of a client's NanoAdapters, through the split exchange.

FedNano merges client adapters weighted by their diagonal Fisher information (see
:mod:`anther.strategies.fisher_merging`). The client estimates it with the same
exchange it trains with: the NanoEdge builds ``inputs_embeds``, the backbone returns the
loss and d loss / d inputs_embeds, and the client pulls that gradient back into its
adapters (``torch.autograd.grad(embeds, params, grad)``, i.e. ``embeds.backward(grad)``
without touching ``.grad``, so an optimizer's state is never disturbed).

Choice of estimator: the mean over ``num_batches`` mini-batches of the *squared batch
gradient* (of the batch-mean loss), not the mean of per-sample squared gradients.
Per-sample gradients would cost one backbone round trip per sample (``batch_size`` times
the traffic and latency of a training step). The per-batch estimate is smaller by about a
factor of the batch size, but that factor is common to every client using the same batch
size, and Fisher merging is invariant to a common scale of the Fishers; it is what
FedNano-style implementations compute in practice. Labels are the reference answers (the
*empirical* Fisher), as in training.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from anther.backbone.interface import Backbone
    from anther.client.inference import Encoder
    from anther.core.sample import Sample


def batch_indices(num_samples: int, batch_size: int, num_batches: int, seed: int) -> Iterator[list[int]]:
    """``num_batches`` batches of indices: reshuffled passes over the data, as the trainer draws them."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(num_batches):
        if len(order) < batch_size:
            order += rng.sample(range(num_samples), num_samples)
        idx, order = order[:batch_size], order[batch_size:]
        yield idx


def _squared_batch_gradient(encoder: Encoder, backbone: Backbone, batch_samples: Sequence[Sample],
                            params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """One split-exchange step, returning the squared gradient of every adapter parameter
    (through ``embeds`` for NanoAdapters; LoRA in ``mode=local`` gets its own in ``train_step``)."""
    for p in params.values():
        p.grad = None
    batch = encoder(list(batch_samples), [s.answer for s in batch_samples])
    embeds = encoder.edge(batch)
    _, grad = backbone.train_step(embeds.detach(), batch.attention_mask, batch.labels, batch.position_ids)
    if embeds.requires_grad:
        embeds.backward(grad.to(embeds.dtype))
    # An adapter the batch never used (the image one, on a text-only batch) has zero gradient.
    squared = {name: torch.zeros_like(p) if p.grad is None else p.grad.detach() ** 2 for name, p in params.items()}
    for p in params.values():
        p.grad = None
    return squared


def diagonal_fisher(encoder: Encoder, backbone: Backbone, samples: Sequence[Sample], num_batches: int,
                    batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the NanoEdge's adapters, named like ``adapter_state()``.

    The mean over ``num_batches`` batches of the squared gradient of the batch loss (see the
    module docstring for why per batch). Returns float32 tensors on the CPU, ready for
    ``ArrayRecord(...)`` under the reply key ``"fisher"``.
    """
    if not samples:
        raise ValueError("this client has no samples to estimate the Fisher on")
    if num_batches < 1 or batch_size < 1:
        raise ValueError(f"num_batches and batch_size must be >= 1, got {num_batches}, {batch_size}")
    edge = encoder.edge
    params = {n: p for n, p in edge.adapters.named_parameters() if p.requires_grad}
    totals = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = edge.adapters.training
    edge.train(False)  # estimate the Fisher of the model as it will be merged (no dropout etc.)
    try:
        for idx in batch_indices(len(samples), batch_size, num_batches, seed):
            squared = _squared_batch_gradient(encoder, backbone, [samples[i] for i in idx], params)
            for name, value in squared.items():
                totals[name] += value.float()
    finally:
        edge.train(was_training)
    return {name: (total / num_batches).cpu() for name, total in totals.items()}
