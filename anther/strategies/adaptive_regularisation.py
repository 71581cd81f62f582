"""FedMLLM's adaptive regularisation (arXiv 2411.14717): a FedProx term on the middle part of
the trainable stack only.

FedMLLM observes that under modality heterogeneity the layers nearest the input (which see
each client's modality mix directly) and nearest the output (which must fit the local task)
should move freely, while the middle of the stack carries the shared, modality-agnostic
representation that client drift damages most. So the proximal pull towards the global
weights is applied to the middle of the ordered trainable parameters only.

Client side, per local step::

    loss_total = task_loss + (mu / 2) * sum_{n in middle} || w_n - w_n^global ||^2

In split mode the task loss's gradient reaches the adapters through ``embeds.backward(grad)``;
the proximal term is a purely local function of the weights, so its gradient is added by a
second ``proximal_term(...).backward()`` before ``optimizer.step()``.

The term is the squared L2 distance (as in FedProx, Li et al. 2020), not the norm that
Flower's FedProx docstring sketches. Server side the strategy is FedProx, which aggregates as
FedAvg; :class:`AdaptiveRegularisation` (``strategy: {name: adaptive_reg}``) is FedProx that
also ships the range, ``proximal-start`` and ``proximal-end``, next to ``proximal-mu``. A
client that gets ``proximal-mu`` without a range (plain ``fedprox``) regularises everything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedProx

# Round-config keys: Flower's FedProx ships "proximal-mu"; the range is anther's.
PROXIMAL_MU, PROXIMAL_START, PROXIMAL_END = "proximal-mu", "proximal-start", "proximal-end"


def middle_range(names: Sequence[str], start: float = 0.25, end: float = 0.75) -> list[str]:
    """The names lying within fractions ``[start, end]`` of the ordered list.

    Name i spans ``[i/n, (i+1)/n)`` of the stack and is taken when that span lies inside
    ``[start, end]``: ``names[ceil(start * n) : floor(end * n)]``. With 8 parameters and
    (0.25, 0.75) that is positions 2..5; with 3, only the middle one. If no name fits
    entirely (very short lists), the one holding the interval's midpoint is taken.
    """
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"need 0 <= start < end <= 1, got start={start}, end={end}")
    n = len(names)
    lo, hi = math.ceil(start * n), math.floor(end * n)
    if lo < hi or n == 0:
        return list(names[lo:hi])
    return [names[min(int((start + end) / 2 * n), n - 1)]]


def proximal_term(params: Mapping[str, torch.Tensor], global_params: Mapping[str, torch.Tensor],
                  names_in_range: Iterable[str], mu: float) -> torch.Tensor:
    """(mu / 2) * sum over ``names_in_range`` of ||params[n] - global_params[n]||^2.

    Differentiable in ``params``; the global weights are treated as constants.
    """
    names = list(names_in_range)
    missing = [n for n in names if n not in params or n not in global_params]
    if missing:
        raise KeyError(f"proximal term over unknown parameters: {missing}")
    if not names:
        return torch.zeros(())
    total = sum(((params[n] - global_params[n].detach().to(params[n])) ** 2).sum() for n in names)
    return (mu / 2.0) * total


class MiddleProximal:
    """The adaptive-regularisation term for one round: snapshot of the global weights + the middle names.

    Build it right after loading the global adapters and before training::

        reg = MiddleProximal(dict(edge.adapters.named_parameters()), mu, start, end)
        ...  # each step, after embeds.backward(grad):
        reg().backward()
    """

    def __init__(self, params: Mapping[str, torch.Tensor], mu: float, start: float = 0.25,
                 end: float = 0.75) -> None:
        self.params = dict(params)
        self.global_params = {n: p.detach().clone() for n, p in self.params.items()}
        self.names = middle_range(list(self.params), start, end)
        self.mu = mu

    def __call__(self) -> torch.Tensor:
        return proximal_term(self.params, self.global_params, self.names, self.mu)


class AdaptiveRegularisation(FedProx):
    """FedProx that tells clients to apply the proximal term to the middle of their stack only.

    Parameters
    ----------
    proximal_mu:
        The proximal weight, shipped as ``proximal-mu``.
    proximal_start, proximal_end:
        The fractions of the ordered trainable parameters, shipped as ``proximal-start`` and
        ``proximal-end`` (clients apply :class:`MiddleProximal` with them).
    **fedprox_kwargs:
        Passed to :class:`flwr.serverapp.strategy.FedProx`.
    """

    def __init__(self, *, proximal_mu: float = 0.01, proximal_start: float = 0.25, proximal_end: float = 0.75,
                 **fedprox_kwargs: Any) -> None:
        middle_range([], proximal_start, proximal_end)  # validates the fractions
        super().__init__(proximal_mu=proximal_mu, **fedprox_kwargs)
        self.proximal_start, self.proximal_end = proximal_start, proximal_end

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[PROXIMAL_START], config[PROXIMAL_END] = self.proximal_start, self.proximal_end
        return super().configure_train(server_round, arrays, config, grid)
