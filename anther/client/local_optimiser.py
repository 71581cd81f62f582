"""The local optimiser and its learning-rate schedule, as the experiment's ``train`` section names them.

``train.optimizer`` is a name or a mapping::

    optimizer: adamw                                    # the default
    optimizer: {name: sgd, momentum: 0.9, nesterov: true}
    optimizer: {_target_: torch.optim.RMSprop, alpha: 0.9}   # any torch.optim.Optimizer class

``train.lr`` and ``train.weight_decay`` are passed to it unless the mapping gives its own.
``train.lr_schedule`` shapes the learning rate over a round's local steps (each round starts
again from ``train.lr``, as every client of every round starts from the global adapters):
``constant``, ``linear`` (to 0), ``cosine`` (to 0), or ``{_target_: a torch.optim.lr_scheduler
class, ...}`` stepped once per local step; ``train.warmup_steps`` ramps the first steps up
linearly before any of them.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import Container, OmegaConf

OPTIMISERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}
SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class LocalTraining:
    """How a client trains its adapters in one round: the ``train`` section, read once."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # clip the batch gradient to this norm (0: no clipping)
    optimizer: Any = "adamw"  # a name or a mapping (module docstring)
    lr_schedule: Any = "constant"
    warmup_steps: int = 0
    # Where the gradient hooks (and regularisers) run: before clipping (clipped with the task
    # gradient) or after it (added to the clipped task gradient, unclipped).
    hook_order: str = "before_clipping"

    @classmethod
    def from_config(cls, train: Mapping[str, Any], steps: int | None = None) -> LocalTraining:
        """From the experiment's ``train`` section; ``steps`` overrides ``train.local_steps``."""
        return cls(steps=int(steps or train["local_steps"]), batch_size=int(train["batch_size"]),
                   lr=float(train["lr"]), weight_decay=float(train["weight_decay"]),
                   max_grad_norm=float(train["max_grad_norm"]), optimizer=_plain(train.get("optimizer", "adamw")),
                   lr_schedule=_plain(train.get("lr_schedule", "constant")),
                   warmup_steps=int(train.get("warmup_steps", 0)),
                   hook_order=str(train.get("hook_order", "before_clipping")))


def _plain(value: Any) -> Any:
    """An OmegaConf node as plain Python (a mapping stays a mapping, a string a string)."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def _import(path: str, what: str) -> type:
    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"{what} _target_={path!r} cannot be imported: {e}") from None


def optimiser_class(spec: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimiser class ``spec`` names and its keyword arguments (besides lr and weight decay)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(f"train.optimizer={spec!r} must be a name ({', '.join(OPTIMISERS)}) or a mapping")
    kwargs = dict(spec)
    if "_target_" in kwargs:
        cls = _import(kwargs.pop("_target_"), "train.optimizer")
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise ValueError(f"train.optimizer _target_={spec['_target_']!r} is not a torch.optim.Optimizer class")
        return cls, kwargs
    name = str(kwargs.pop("name", "")).lower()
    if name not in OPTIMISERS:
        raise ValueError(f"train.optimizer name {name!r} is unknown: use one of {', '.join(OPTIMISERS)}, "
                         "or _target_: a torch.optim.Optimizer class")
    return OPTIMISERS[name], kwargs


def build_optimiser(params: Iterable[torch.nn.Parameter], training: LocalTraining) -> torch.optim.Optimizer:
    """The configured optimiser over ``params``; a keyword it does not take is named in the error."""
    cls, kwargs = optimiser_class(training.optimizer)
    kwargs = {"lr": training.lr, "weight_decay": training.weight_decay, **kwargs}
    try:
        return cls(list(params), **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"train.optimizer={training.optimizer!r} cannot be built ({cls.__name__}): {e}") from None


def build_schedule(optimiser: torch.optim.Optimizer, training: LocalTraining) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule over ``training.steps`` local steps, after ``warmup_steps``."""
    spec, steps, warmup = training.lr_schedule, training.steps, training.warmup_steps
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        if "_target_" not in kwargs:
            raise ValueError(f"train.lr_schedule={spec!r}: a mapping needs _target_ "
                             "(a torch.optim.lr_scheduler class)")
        cls = _import(kwargs.pop("_target_"), "train.lr_schedule")
        try:
            main = cls(optimiser, **kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"train.lr_schedule={spec!r} cannot be built ({cls.__name__}): {e}") from None
        return _with_warmup(optimiser, main, warmup)
    if spec not in SCHEDULES:
        raise ValueError(f"train.lr_schedule={spec!r} is unknown: use one of {', '.join(SCHEDULES)}, "
                         "or {_target_: a torch.optim.lr_scheduler class, ...}")
    decay = max(steps - warmup, 1)
    shape = {
        "constant": lambda t: 1.0,
        "linear": lambda t: 1.0 - t / decay,
        "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t / decay)),
    }[spec]
    return torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: (step + 1) / (warmup + 1) if step < warmup else shape(step - warmup))


def _with_warmup(optimiser: torch.optim.Optimizer, main: torch.optim.lr_scheduler.LRScheduler,
                 warmup: int) -> torch.optim.lr_scheduler.LRScheduler:
    if not warmup:
        return main
    ramp = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: (step + 1) / (warmup + 1))
    return torch.optim.lr_scheduler.SequentialLR(optimiser, [ramp, main], milestones=[warmup])


def check_local_training(train: Mapping[str, Any]) -> None:
    """Build the configured optimiser and schedule once over a dummy weight, so that a bad name,
    class or keyword is refused before a run starts (raises ValueError naming it)."""
    training = LocalTraining.from_config(train)
    if training.hook_order not in ("before_clipping", "after_clipping"):
        raise ValueError(f"train.hook_order={training.hook_order!r} must be before_clipping or after_clipping")
    if training.warmup_steps < 0:
        raise ValueError(f"train.warmup_steps={training.warmup_steps} must be >= 0")
    build_schedule(build_optimiser([torch.nn.Parameter(torch.zeros(1))], training), training)
