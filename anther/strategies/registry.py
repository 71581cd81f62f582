"""Strategies by name, or any Strategy class of your own by ``_target_``.

``strategy: {name: fedprox, proximal_mu: 0.01}`` builds a built-in;
``strategy: {_target_: my_lab.strategies.MyStrategy, some_arg: 1}`` builds yours (any subclass
of ``flwr.serverapp.strategy.Strategy``), with no change to anther. A built-in's name is only
a short form of such a spec: :data:`STRATEGIES` says, for each name, the class to build and the
module that holds its client half, and :func:`resolve` turns ``{name: ...}`` into
``{_target_: ..., client_modules: [...]}``, so anther's strategies are built and reach their
clients exactly the way a plug-in does (docs/strategies.md).

Client sampling is done by anther's round loop, so built-ins are made to take every node they
are offered. One key is not passed to the strategy: ``client_modules``, the modules every
ClientApp imports so that the client extras they register exist (:mod:`anther.client.extras`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import Strategy
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate

CLIENT_MODULES = "client_modules"
_FLOWER = "flwr.serverapp.strategy"


@dataclass(frozen=True)
class BuiltIn:
    """A strategy name's class and the module with its client half (None: plain local training)."""

    target: str
    client_module: str | None = None


STRATEGIES: dict[str, BuiltIn] = {
    "fedavg": BuiltIn(f"{_FLOWER}.FedAvg"),
    "fedprox": BuiltIn(f"{_FLOWER}.FedProx", "anther.strategies.fedprox"),
    "fedavgm": BuiltIn(f"{_FLOWER}.FedAvgM"),
    "fedadagrad": BuiltIn(f"{_FLOWER}.FedAdagrad"),
    "fedyogi": BuiltIn(f"{_FLOWER}.FedYogi"),
    "fedadam": BuiltIn(f"{_FLOWER}.FedAdam"),
    "fedmedian": BuiltIn(f"{_FLOWER}.FedMedian"),
    "fedtrimmedavg": BuiltIn(f"{_FLOWER}.FedTrimmedAvg"),
    "krum": BuiltIn(f"{_FLOWER}.Krum"),
    "multikrum": BuiltIn(f"{_FLOWER}.MultiKrum"),
    "fisher": BuiltIn("anther.strategies.fisher_merging.FisherMerging", "anther.strategies.fisher_merging"),
    "modality_aware": BuiltIn("anther.strategies.modality_aware.ModalityAwareFedAvg"),
    "hetero_rank": BuiltIn("anther.strategies.hetero_rank.HeteroRankFedAvg"),
    "adaptive_reg": BuiltIn("anther.strategies.adaptive_regularisation.AdaptiveRegularisation",
                            "anther.strategies.fedprox"),
    "personalised": BuiltIn("anther.strategies.personalised.PersonalisedFedAvg", "anther.strategies.personalised"),
    "scaffold": BuiltIn("anther.strategies.scaffold.Scaffold", "anther.strategies.scaffold"),
    "feddyn": BuiltIn("anther.strategies.feddyn.FedDyn", "anther.strategies.feddyn"),
    "fednova": BuiltIn("anther.strategies.fednova.FedNova", "anther.strategies.fednova"),
}

# Flower's strategies that cannot aggregate adapters, and why (refused before a run starts).
NOT_FOR_ADAPTERS = {
    f"{_FLOWER}.FedXgbBagging": "it aggregates XGBoost models sent as one byte array, not adapter tensors",
    f"{_FLOWER}.FedXgbCyclic": "it passes one XGBoost model sent as a byte array around, not adapter tensors",
}

# The round loop samples clients itself; a built-in takes all it is offered.
_TAKE_ALL = {"fraction_train": 1.0, "min_train_nodes": 1, "min_available_nodes": 1,
             "fraction_evaluate": 1.0, "min_evaluate_nodes": 1}


def resolve(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``_target_`` form of a config's ``strategy`` section (a plug-in's is returned as it is)."""
    spec = dict(spec)
    if spec.get("name", "") is None:  # an experiment file's _target_ replacing the default's name
        del spec["name"]
    if "_target_" in spec and "name" in spec:
        raise ValueError(f"strategy has both name={spec['name']!r} and _target_={spec['_target_']!r}; "
                         "keep one (on the command line: ~strategy.name +strategy._target_=...)")
    if "_target_" in spec:
        if spec["_target_"] in NOT_FOR_ADAPTERS:
            raise ValueError(f"strategy _target_={spec['_target_']} cannot train adapters: "
                             f"{NOT_FOR_ADAPTERS[spec['_target_']]}")
        return spec
    if "name" not in spec:
        raise ValueError("strategy needs a 'name' (built-in) or a '_target_' (your own class)")
    name = spec.pop("name")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; built-in: {sorted(STRATEGIES)}")
    built_in = STRATEGIES[name]
    modules = [built_in.client_module] if built_in.client_module else []
    return {"_target_": built_in.target, **spec, **_TAKE_ALL,
            CLIENT_MODULES: [*modules, *spec.get(CLIENT_MODULES, [])]}


def client_modules(spec: Mapping[str, Any]) -> list[str]:
    """The modules a ClientApp imports for this strategy: its client half and any listed."""
    return [str(m) for m in resolve(spec).get(CLIENT_MODULES) or []]


def strategy_class(spec: Mapping[str, Any]) -> type:
    """The class a config's ``strategy`` section builds, without building it."""
    return get_class(resolve(spec)["_target_"])


def build_strategy(spec: Mapping[str, Any]) -> Strategy:
    """Build the strategy a config's ``strategy`` section describes."""
    kwargs = resolve(spec)
    kwargs.pop(CLIENT_MODULES, None)
    try:
        strategy = instantiate(kwargs, _convert_="all")
    except InstantiationException as e:  # the strategy's own error (a bad argument), not Hydra's wrapper
        raise (e.__cause__ or e) from None
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy {type(strategy).__name__} is not a flwr.serverapp.strategy.Strategy")
    return strategy
