"""FedProx's client half: the proximal term, over all of a client's trainable parameters or a range of them.

Flower's :class:`flwr.serverapp.strategy.FedProx` is the server half (``strategy: {name: fedprox}``):
it aggregates as FedAvg and ships ``proximal-mu`` in every training round. A client that gets that
key adds, per local step,

    (mu / 2) * sum_{n in range} || w_n - w_n^global ||^2

to its objective: the squared L2 distance (as in FedProx, Li et al. 2020), not the norm that
Flower's FedProx docstring sketches. In split mode the task loss's gradient reaches the adapters
through ``embeds.backward(grad)``; the proximal term is a purely local function of the weights, so
its gradient is added by a second ``proximal_term(...).backward()`` before ``optimizer.step()``.

The range is every trainable parameter unless the round config also carries ``proximal-start``
and ``proximal-end``, fractions of the ordered trainable parameters: FedMLLM's adaptive
regularisation (:mod:`anther.strategies.adaptive_regularisation`) sends them to pull only the
middle of the stack.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from anther.client.api import ExtraContext, Regulariser, regulariser

# Round-config keys: Flower's FedProx ships "proximal-mu"; the range is FedMLLM's (adaptive_reg).
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


@regulariser(PROXIMAL_MU)
def proximal(ctx: ExtraContext) -> Regulariser:
    """FedProx's term; with a range (adaptive_reg) FedMLLM's, on the middle of the stack only."""
    return MiddleProximal(ctx.parameters(), float(ctx.config[PROXIMAL_MU]),
                          float(ctx.config.get(PROXIMAL_START, 0.0)), float(ctx.config.get(PROXIMAL_END, 1.0)))
