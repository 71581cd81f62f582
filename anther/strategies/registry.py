"""Strategies by name, or any Strategy class of your own by ``_target_``.

``strategy: {name: fedprox, proximal_mu: 0.01}`` builds a built-in;
``strategy: {_target_: my_lab.strategies.MyStrategy, some_arg: 1}`` builds yours
(any subclass of ``flwr.serverapp.strategy.Strategy``), with no change to anther.
Client sampling is done by anther's round loop, so strategies are built to take
every node they are offered.

One key is not passed to the strategy: ``client_modules``, the modules every ClientApp
imports so that the client-side extras they register exist (see
:mod:`anther.client.extras`); the server never needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)
from hydra.utils import instantiate

STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadagrad": FedAdagrad,
    "fedyogi": FedYogi,
    "fedadam": FedAdam,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
}

# The round loop samples clients itself; the strategy takes all it is offered.
_TAKE_ALL = {"fraction_train": 1.0, "min_train_nodes": 1, "min_available_nodes": 1,
             "fraction_evaluate": 1.0, "min_evaluate_nodes": 1}


CLIENT_MODULES = "client_modules"


def register(name: str, factory: Callable[..., Strategy]) -> None:
    """Make ``factory`` selectable as ``strategy.name=<name>``."""
    STRATEGIES[name] = factory


def build_strategy(spec: dict[str, Any]) -> Strategy:
    """Build the strategy a config's ``strategy`` section describes."""
    spec = dict(spec)
    spec.pop(CLIENT_MODULES, None)
    if "_target_" in spec and "name" in spec:
        raise ValueError(f"strategy has both name={spec['name']!r} and _target_={spec['_target_']!r}; "
                         "keep one (on the command line: ~strategy.name +strategy._target_=...)")
    if "_target_" in spec:
        strategy = instantiate(spec, _convert_="all")
    else:
        name = spec.pop("name")
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; built-in: {sorted(STRATEGIES)}")
        strategy = STRATEGIES[name](**{**spec, **_TAKE_ALL})
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy {type(strategy).__name__} is not a flwr.serverapp.strategy.Strategy")
    return strategy


# anther's own strategies register themselves by name; imported last, once ``register`` exists.
import anther.strategies.builtin  # noqa: F401
