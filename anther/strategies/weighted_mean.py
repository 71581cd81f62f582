"""Which strategies aggregate by a weighted mean, and which reply metric weighs each parameter.

Client-level DP and secure aggregation both rest on the aggregate being a weighted mean of
the clients' adapters (followed, for FedAvgM / FedAdam / FedAdagrad / FedYogi, by a server
optimiser step that only sees that mean):

- the DP wrappers add noise of std ``z * C / m`` to the mean, which is calibrated to one
  client's clipped update moving a mean of ``m`` clients by at most ``C / m``; a median, a
  Krum pick or a Fisher-weighted merge moves differently (and Fisher merging ships each
  client's Fisher, computed from its data, with no noise at all);
- SecAgg+ reveals only sums, so the server can compute ``sum_k w_k theta_k / sum_k w_k`` and
  nothing that needs the individual ``theta_k``.

A strategy qualifies when its ``aggregate_train`` is one of Flower's weighted means below, or
when it says per parameter which metric weighs it (``weight_key(name)``, as
:class:`anther.strategies.modality_aware.ModalityAwareFedAvg` does); anything else is
refused by the privacy layer with an error that names the strategy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi, Strategy

# aggregate_train implementations that are "FedAvg's weighted mean, then maybe a server step"
_MEAN_AGGREGATES = {cls.aggregate_train for cls in (FedAvg, FedAvgM, FedAdagrad, FedAdam, FedYogi)}


@runtime_checkable
class PerParameterWeights(Protocol):
    """A weighted-mean strategy whose weight depends on the parameter (e.g. per modality)."""

    def weight_key(self, name: str) -> str:
        """The reply metric that weighs parameter ``name``."""


def is_weighted_mean(strategy: Strategy | type) -> bool:
    """Whether ``strategy`` (an instance, or a class: the config check has no instance yet)
    aggregates by a weighted mean of the clients' arrays."""
    cls = strategy if isinstance(strategy, type) else type(strategy)
    if callable(getattr(cls, "weight_key", None)):
        return True
    return issubclass(cls, FedAvg) and cls.aggregate_train in _MEAN_AGGREGATES


def weight_keys(strategy: Strategy, names: Iterable[str]) -> dict[str, str]:
    """For each parameter name, the reply metric that weighs it in ``strategy``'s mean."""
    if isinstance(strategy, PerParameterWeights):
        return {name: strategy.weight_key(name) for name in names}
    if isinstance(strategy, FedAvg):
        return dict.fromkeys(names, strategy.weighted_by_key)
    raise TypeError(f"{type(strategy).__name__} does not aggregate by a weighted mean")


def describe(strategy: Strategy) -> str:
    """The strategy's class, for error messages."""
    return f"{type(strategy).__module__}.{type(strategy).__name__}"
