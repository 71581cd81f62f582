"""Client-side extras: what a strategy asks a client to do besides plain local training.

A strategy talks to its clients through the round config. Its ``configure_train`` (or
``configure_evaluate``) puts keys into the ConfigRecord it sends, as Flower's FedProx puts
``proximal-mu``, and may put more ArrayRecords and ConfigRecords into the message (a control
variate, say), which extras read by name (:meth:`ExtraContext.array`). The ClientApp runs every
extra registered under a key that config holds, at one of four points:

- :func:`regulariser` -- before local training: returns a term added to the local
  objective (:data:`anther.client.trainer.Regulariser`);
- :func:`gradient_hook` -- before local training: returns a function run at every local step
  once the task gradient is in the adapters' ``.grad``, before or after clipping
  (``train.hook_order``), that changes it in place (:data:`anther.client.trainer.GradientHook`);
- :func:`after_training` -- after local training: returns records for the train reply.
  Array and config records go in under their own names (a Fisher under ``fisher``);
  metric records are merged into the reply's ``metrics``, because Flower's strategies read
  exactly one MetricRecord;
- :func:`evaluation` -- around local evaluation: returns a context manager inside which the
  NanoEdge is evaluated (global + local adapter, say).

An extra lives in its strategy's module, next to the server half that sends its key. Every
ClientApp imports the modules the experiment's strategy names as its client modules
(:func:`import_client_modules`): for anther's own strategies the registry
(:mod:`anther.strategies.registry`) names them, for a plug-in its ``strategy.client_modules``
does. Both are registered by these decorators when imported, the same way.
Every key of a round config must mean the same to every client, so registering a second,
different function for a key that already has one is an error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from omegaconf import DictConfig

from anther.client.local_training import LocalTraining
from anther.client.runtime import ClientRuntime
from anther.client.trainer import GradientHook, Regulariser, TrainReport, regulariser_hook
from anther.core import protocol
from anther.core.sample import Sample

Record = ArrayRecord | MetricRecord | ConfigRecord


@dataclass
class ExtraContext:
    """What an extra may use: the round, the experiment, the client's runtime and its data."""

    config: ConfigRecord  # the round config the strategy sent (the keys extras are looked up by)
    experiment: DictConfig  # the whole experiment config
    runtime: ClientRuntime  # processor + NanoEdge (the global adapters loaded) + backbone
    samples: list[Sample]  # the local train split in training, the local test split in evaluation
    received: dict[str, torch.Tensor]  # the global adapters as the server sent them
    state: RecordDict  # the node's Flower Context.state: kept on the node between rounds of a run
    seed: int  # this client's seed for the round
    # The strategy's other records in the message (not the adapters, not the round config), by name.
    records: Mapping[str, ArrayRecord | ConfigRecord] = field(default_factory=dict)
    # This round's local training settings (steps, lr, optimiser...), as the trainer uses them.
    training: LocalTraining | None = None
    # What the local training did (its steps, learning rates, optimiser): set for after-training extras.
    report: TrainReport | None = None

    def parameters(self) -> dict[str, torch.nn.Parameter]:
        """The live trainable adapter weights, named as in the global adapters (``image.down.weight``...).
        A gradient hook reads and changes their ``.grad``; a regulariser is a function of them."""
        return {n: p for n, p in self.runtime.edge.adapters.named_parameters() if p.requires_grad}

    def kept(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors this node kept in its ``state`` under ``name``, one per adapter weight; zeros
        shaped like the weights before it kept any (a control variate's or a dual variable's start)."""
        stored = self.state.array_records.get(name)
        if stored is not None:
            return stored.to_torch_state_dict()
        return {n: torch.zeros_like(p) for n, p in self.parameters().items()}

    def array(self, name: str) -> dict[str, torch.Tensor]:
        """The ArrayRecord ``name`` the strategy sent with this message, as tensors."""
        record = self.records.get(name)
        if not isinstance(record, ArrayRecord):
            raise KeyError(f"the server sent no ArrayRecord named {name!r} with this message "
                           f"(it sent {sorted(self.records) or 'none'})")
        return record.to_torch_state_dict()


RegulariserFactory = Callable[[ExtraContext], Regulariser]
GradientHookFactory = Callable[[ExtraContext], GradientHook]
ReplyFactory = Callable[[ExtraContext], Mapping[str, Record]]
EvaluationFactory = Callable[[ExtraContext], AbstractContextManager[object]]
F = TypeVar("F", bound=Callable[..., object])

_REGULARISERS: dict[str, RegulariserFactory] = {}
_GRADIENT_HOOKS: dict[str, GradientHookFactory] = {}
_AFTER_TRAINING: dict[str, ReplyFactory] = {}
_EVALUATION: dict[str, EvaluationFactory] = {}


def _register(table: dict[str, F], point: str, key: str) -> Callable[[F], F]:
    def decorator(fn: F) -> F:
        old = table.get(key)
        same = old is not None and (old.__module__, old.__qualname__) == (fn.__module__, fn.__qualname__)
        if old is not None and not same:  # a module imported again re-registers the same function
            raise ValueError(f"config key {key!r} already has an extra for {point} "
                             f"({old.__module__}.{old.__qualname__}); cannot add {fn.__module__}.{fn.__qualname__}")
        table[key] = fn
        return fn

    return decorator


def regulariser(key: str) -> Callable[[RegulariserFactory], RegulariserFactory]:
    """Register ``fn(ctx) -> Regulariser``, built before local training when the round config has ``key``."""
    return _register(_REGULARISERS, "regulariser", key)


def gradient_hook(key: str) -> Callable[[GradientHookFactory], GradientHookFactory]:
    """Register ``fn(ctx) -> GradientHook``, built before local training when the round config has
    ``key`` and run at every local step once the task gradient is in ``.grad``."""
    return _register(_GRADIENT_HOOKS, "gradient_hook", key)


def after_training(key: str) -> Callable[[ReplyFactory], ReplyFactory]:
    """Register ``fn(ctx) -> {name: record}``, run after local training when the round config has ``key``."""
    return _register(_AFTER_TRAINING, "after_training", key)


def evaluation(key: str) -> Callable[[EvaluationFactory], EvaluationFactory]:
    """Register ``fn(ctx) -> context manager``, entered around local evaluation when the config has ``key``."""
    return _register(_EVALUATION, "evaluation", key)


def _wanted(table: Mapping[str, F], config: ConfigRecord) -> Iterable[tuple[str, F]]:
    """The extras the config asks for, in registration order (so every client runs them alike)."""
    return [(key, fn) for key, fn in table.items() if key in config]


def build_hooks(ctx: ExtraContext) -> list[GradientHook]:
    """The gradient hooks the round asks for, regularisers first (each adds its term's gradient),
    each group in registration order; build them after loading the global adapters."""
    return ([regulariser_hook(make(ctx)) for _, make in _wanted(_REGULARISERS, ctx.config)]
            + [make(ctx) for _, make in _wanted(_GRADIENT_HOOKS, ctx.config)])


def add_reply_records(ctx: ExtraContext, content: RecordDict, metrics_key: str = protocol.METRICS) -> None:
    """Run the after-training extras the round asks for and put what they return into ``content``."""
    for key, make in _wanted(_AFTER_TRAINING, ctx.config):
        for name, record in make(ctx).items():
            if isinstance(record, MetricRecord):
                clash = sorted(set(record) & set(content[metrics_key]))
                if clash:
                    raise ValueError(f"the {key!r} extra returned metrics {clash}, which the reply already has")
                content[metrics_key].update(record)
            elif name in content:
                raise ValueError(f"the {key!r} extra returned a record named {name!r}, "
                                 "which the reply already has")
            else:
                content[name] = record


@contextmanager
def evaluation_view(ctx: ExtraContext) -> Iterator[None]:
    """Inside the block, every evaluation extra the config asks for is active."""
    with ExitStack() as stack:
        for _, make in _wanted(_EVALUATION, ctx.config):
            stack.enter_context(make(ctx))
        yield


def import_client_modules(names: Iterable[str]) -> None:
    """Import the strategy's client modules, so the extras they hold are registered."""
    for name in names:
        try:
            importlib.import_module(str(name))
        except ImportError as e:
            raise ImportError(f"strategy.client_modules names {name!r}, which this client cannot import "
                              f"(is it on the node's PYTHONPATH?): {e}") from e

