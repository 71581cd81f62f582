"""What a client's local training is each round: the experiment's ``train`` section, read once,
and its rules (anther/client/local_optimiser.py builds the PyTorch optimiser and schedule from it).

Kept apart from the builders so that ``anther simulate`` checks a run's training settings before
it starts without importing PyTorch (over a second of CPU) when they name built-ins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import Container, OmegaConf

OPTIMISER_CLASSES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}  # name -> its torch.optim class
SCHEDULES = ("constant", "linear", "cosine")
HOOK_ORDERS = ("before_clipping", "after_clipping")


@dataclass(frozen=True)
class LocalTraining:
    """How a client trains its adapters in one round: the ``train`` section, read once."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # clip the batch gradient to this norm (0: no clipping)
    optimizer: Any = "adamw"  # a name or a mapping (local_optimiser.py says which)
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

    def check(self) -> None:
        """Refuse what no optimiser would take (raises ValueError naming the setting). A built-in
        optimiser and schedule named by strings are checked in full here, without PyTorch; keyword
        arguments and ``_target_`` classes are checked by building them (local_optimiser.build_trial)."""
        if self.hook_order not in HOOK_ORDERS:
            raise ValueError(f"train.hook_order={self.hook_order!r} must be before_clipping or after_clipping")
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps={self.warmup_steps} must be >= 0")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay={self.weight_decay} must be >= 0")
        if isinstance(self.optimizer, str) and self.optimizer.lower() not in OPTIMISER_CLASSES:
            raise ValueError(unknown_optimiser(self.optimizer.lower()))
        if isinstance(self.lr_schedule, str) and self.lr_schedule not in SCHEDULES:
            raise ValueError(unknown_schedule(self.lr_schedule))

    @property
    def names_builtins(self) -> bool:
        """Whether the optimiser and the schedule are built-ins named by a string: nothing of them
        needs building to be known good."""
        return isinstance(self.optimizer, str) and isinstance(self.lr_schedule, str)


def _plain(value: Any) -> Any:
    """An OmegaConf node as plain Python (a mapping stays a mapping, a string a string)."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def unknown_optimiser(name: str) -> str:
    return (f"train.optimizer name {name!r} is unknown: use one of {', '.join(OPTIMISER_CLASSES)}, "
            "or _target_: a torch.optim.Optimizer class")


def unknown_schedule(spec: Any) -> str:
    return (f"train.lr_schedule={spec!r} is unknown: use one of {', '.join(SCHEDULES)}, "
            "or {_target_: a torch.optim.lr_scheduler class, ...}")
