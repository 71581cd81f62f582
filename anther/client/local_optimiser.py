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
from typing import Any

import torch

from anther.client.local_training import (
    OPTIMISER_CLASSES,
    SCHEDULES,
    LocalTraining,
    unknown_optimiser,
    unknown_schedule,
)


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
        raise TypeError(f"train.optimizer={spec!r} must be a name ({', '.join(OPTIMISER_CLASSES)}) or a mapping")
    kwargs = dict(spec)
    if "_target_" in kwargs:
        cls = _import(kwargs.pop("_target_"), "train.optimizer")
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise ValueError(f"train.optimizer _target_={spec['_target_']!r} is not a torch.optim.Optimizer class")
        return cls, kwargs
    name = str(kwargs.pop("name", "")).lower()
    if name not in OPTIMISER_CLASSES:
        raise ValueError(unknown_optimiser(name))
    return getattr(torch.optim, OPTIMISER_CLASSES[name]), kwargs


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
        raise ValueError(unknown_schedule(spec))
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


def build_trial(training: LocalTraining) -> None:
    """Build the optimiser and schedule once over a dummy weight: a bad class or keyword raises
    ValueError (or TypeError) naming it, before a run starts."""
    build_schedule(build_optimiser([torch.nn.Parameter(torch.zeros(1))], training), training)
