"""FedMLLM's adaptive regularisation (arXiv 2411.14717): a FedProx term on the middle part of
the trainable stack only.

FedMLLM observes that under modality heterogeneity the layers nearest the input (which see
each client's modality mix directly) and nearest the output (which must fit the local task)
should move freely, while the middle of the stack carries the shared, modality-agnostic
representation that client drift damages most. So the proximal pull towards the global
weights is applied to the middle of the ordered trainable parameters only.

Server side the strategy is FedProx, which aggregates as FedAvg; :class:`AdaptiveRegularisation`
(``strategy: {name: adaptive_reg}``) is FedProx that also ships the range, ``proximal-start`` and
``proximal-end``, next to ``proximal-mu``. Its client half is FedProx's proximal term over that
range (:mod:`anther.strategies.fedprox`, which also defines the range's keys), so the registry
names that module as this strategy's client module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedProx

from anther.strategies.fedprox import PROXIMAL_END, PROXIMAL_START, middle_range


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
