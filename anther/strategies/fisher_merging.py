"""Fisher merging (FedNano, arXiv 2506.14824; Matena & Raffel, "Merging Models with
Fisher-Weighted Averaging", 2022).

Each client k replies with its adapters ``theta_k`` under ``"arrays"`` and the diagonal
empirical Fisher ``F_k`` of the same parameters, same names, under ``"fisher"`` (see
:func:`diagonal_fisher`, the client half below). Per parameter element the server takes

    theta = sum_k w_k (F_k + eps) theta_k / sum_k w_k (F_k + eps)

with ``w_k`` = the client's ``num-examples`` when ``weight_by_examples`` (else 1).

Why ``F_k + eps`` rather than ``sum_k w_k F_k theta_k / (sum_k w_k F_k + eps)``: the
latter sends every element whose Fisher is zero on all clients to 0, and that happens
in practice -- a NanoAdapter starts with ``up = 0``, so in round 1 no gradient reaches
``down`` and its Fisher is exactly zero everywhere; the global ``down`` would be wiped.
Adding ``eps`` to each F_k (Matena & Raffel's "Fisher floor") leaves well-estimated
elements as Fisher-weighted and degrades gracefully to the example-weighted FedAvg where
no client has information. ``eps = 0`` gives the plain formula (and divides by zero where
all Fishers vanish).

The Fisher is scale-free for merging: multiplying every client's F by the same constant
(e.g. by using per-batch rather than per-sample squared gradients) does not change theta,
apart from the relative weight of ``eps``.

Client half: diagonal empirical Fisher of a client's NanoAdapters, through the split exchange.

The client estimates the Fisher with the same
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
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from anther.client.api import ExtraContext, Record, after_training, batch_gradients
from anther.strategies.array_utils import NDArray, metric_value, numpy_arrays, reply_arrays
from anther.strategies.merging_fedavg import MergingFedAvg

FISHER_BATCHES = "fisher-batches"  # round-config key: how many batches; asks for a Fisher
FISHER = "fisher"  # reply key of the Fisher ArrayRecord


# ---------------------------------------------------------------- client half


def batch_indices(num_samples: int, batch_size: int, num_batches: int, seed: int) -> Iterator[list[int]]:
    """``num_batches`` batches of indices: reshuffled passes over the data, as the trainer draws them."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(num_batches):
        if len(order) < batch_size:
            order += rng.sample(range(num_samples), num_samples)
        idx, order = order[:batch_size], order[batch_size:]
        yield idx


def diagonal_fisher(ctx: ExtraContext, num_batches: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the NanoEdge's adapters on ``ctx.samples``, named like the adapters.

    The mean over ``num_batches`` batches of the squared gradient of the batch loss (see the
    module docstring for why per batch). Returns float32 tensors on the CPU, ready for
    ``ArrayRecord(...)`` under the reply key ``"fisher"``.
    """
    samples = ctx.samples
    if not samples:
        raise ValueError("this client has no samples to estimate the Fisher on")
    if num_batches < 1 or batch_size < 1:
        raise ValueError(f"num_batches and batch_size must be >= 1, got {num_batches}, {batch_size}")
    totals = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in ctx.parameters().items()}
    edge = ctx.runtime.edge
    was_training = edge.adapters.training
    edge.train(False)  # estimate the Fisher of the model as it will be merged (no dropout etc.)
    try:
        for idx in batch_indices(len(samples), batch_size, num_batches, seed):
            for name, grad in batch_gradients(ctx, [samples[i] for i in idx]).items():
                totals[name] += grad.float() ** 2
    finally:
        edge.train(was_training)
    return {name: (total / num_batches).cpu() for name, total in totals.items()}


@after_training(FISHER_BATCHES)
def fisher(ctx: ExtraContext) -> Mapping[str, Record]:
    """The diagonal Fisher of the adapters as trained, on the client's own data."""
    values = diagonal_fisher(ctx, int(ctx.config[FISHER_BATCHES]), ctx.experiment.train.batch_size, ctx.seed)
    return {FISHER: ArrayRecord(values)}


# ---------------------------------------------------------------- server half


class FisherMerging(MergingFedAvg):
    """FedAvg whose aggregation weighs every parameter element by the clients' diagonal Fisher.

    Parameters
    ----------
    eps:
        Fisher floor added to every client's Fisher (see the module docstring). Must be >= 0.
    weight_by_examples:
        Multiply each client's Fisher by its ``num-examples`` (``weighted_by_key``): the
        empirical Fisher is a per-sample mean, so this restores each client's share of the
        total evidence. With False every client counts the same.
    fisher_batches:
        Sent to clients as ``config["fisher-batches"]``: how many batches to estimate the
        Fisher on. Its presence is also how a client knows this round wants a Fisher.
    **fedavg_kwargs:
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    validate_replies = False  # replies carry two ArrayRecords; merge checks them itself

    def __init__(self, *, eps: float = 1e-8, weight_by_examples: bool = True, fisher_batches: int = 4,
                 **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if fisher_batches < 1:
            raise ValueError(f"fisher_batches must be >= 1, got {fisher_batches}")
        self.eps = float(eps)
        self.weight_by_examples = weight_by_examples
        self.fisher_batches = fisher_batches

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's messages; the config asks clients for a Fisher (as FedProx ships ``proximal-mu``)."""
        config[FISHER_BATCHES] = self.fisher_batches
        return super().configure_train(server_round, arrays, config, grid)

    def merge(self, replies: list[Message], clients: list[dict[str, NDArray]]) -> dict[str, NDArray]:
        """Fisher-weighted merge of the adapters."""
        contents = [m.content for m in replies]
        validate_message_reply_consistency(contents, self.weighted_by_key, check_arrayrecord=False)
        fishers = [self._fisher(c, theta) for c, theta in zip(contents, clients, strict=True)]
        weights = [metric_value(c, self.weighted_by_key) if self.weight_by_examples else 1.0
                   for c in contents]
        return fisher_merge(clients, fishers, weights, self.eps)

    def _fisher(self, content: RecordDict, theta: dict[str, NDArray]) -> dict[str, NDArray]:
        fisher = numpy_arrays(reply_arrays(content, FISHER))
        if set(theta) != set(fisher):
            raise InconsistentMessageReplies(
                reason=f"Fisher names differ from the weights': missing {sorted(set(theta) - set(fisher))}, "
                       f"extra {sorted(set(fisher) - set(theta))}")
        for name, value in theta.items():
            if fisher[name].shape != value.shape:
                raise InconsistentMessageReplies(
                    reason=f"Fisher of {name!r} has shape {fisher[name].shape}, weights {value.shape}")
        return fisher


def fisher_merge(thetas: list[dict[str, NDArray]], fishers: list[dict[str, NDArray]],
                 weights: list[float], eps: float) -> dict[str, NDArray]:
    """sum_k w_k (F_k + eps) theta_k / sum_k w_k (F_k + eps), per name and element, in float64."""
    names = list(thetas[0])
    if any(set(t) != set(names) for t in thetas):
        raise InconsistentMessageReplies(reason="clients sent different adapter names")
    merged: dict[str, NDArray] = {}
    for name in names:
        num = np.zeros(thetas[0][name].shape, dtype=np.float64)
        den = np.zeros_like(num)
        for theta, fisher, w in zip(thetas, fishers, weights, strict=True):
            f = w * (np.asarray(fisher[name], dtype=np.float64) + eps)
            num += f * theta[name]
            den += f
        merged[name] = num / den
    return merged
