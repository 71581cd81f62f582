"""FedDPA-style personalisation (Yang et al., "Dual-Personalizing Adapter for Federated
Foundation Models", NeurIPS 2024): a global adapter learnt by the federation plus a local
adapter that never leaves the client, combined at inference.

Client side, :class:`PersonalisedAdapters` keeps, next to each global NanoAdapter
(``image``, ``text``), a local one of the same shape, and while :meth:`combined` is active
replaces each by

    h + global_branch(h) + mix * local_branch(h)

(``branch(h) = scale * up(act(down(h)))``, the adapter minus its residual). The local
adapter is a correction on top of the global one rather than a convex partner: it starts
with ``up = 0``, so an untrained local part leaves the global model exactly as it is, and
``mix = 0`` is always the global model.

Server side, :class:`PersonalisedFedAvg` (``strategy: {name: personalised}``) aggregates the
global part as FedAvg -- the train reply carries only the global adapters -- and tells the
clients, through the round config, to personalise (FedDPA-F): ``personal-steps`` asks each
client, after its usual local training, to train its local adapter that many steps with the
global one frozen; ``personal-mix`` (in training and evaluation configs) is the mix, and
asks the client to evaluate global + local. The client keeps its local adapter in its
Flower ``Context.state``, which lives on the node for the whole run (:func:`personal_training`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from anther.client.api import ExtraContext, Record, after_training, evaluation, train_more
from anther.core import protocol
from anther.model.nano_adapter import NanoAdapter

PERSONAL_STEPS, PERSONAL_MIX = "personal-steps", "personal-mix"  # round-config keys
# Context.state keys: the FedDPA local part, and how many rounds have trained it
LOCAL_ADAPTERS, LOCAL_ROUNDS = "personal-local-adapters", "personal-rounds"


def branch(adapter: NanoAdapter, h: torch.Tensor) -> torch.Tensor:
    """The adapter's residual branch, ``scale * up(act(down(h)))``, computed directly (not adapter(h) - h)."""
    return adapter.scale * adapter.up(adapter.act(adapter.down(h)))


class DualAdapter(nn.Module):
    """A global and a local NanoAdapter on the same tokens, their branches mixed by ``mix``."""

    def __init__(self, global_adapter: NanoAdapter, local_adapter: NanoAdapter, mix: float) -> None:
        super().__init__()
        self.global_adapter, self.local_adapter, self.mix = global_adapter, local_adapter, mix

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + branch(self.global_adapter, h) + self.mix * branch(self.local_adapter, h)


def _local_copy(adapter: NanoAdapter, seed: int) -> NanoAdapter:
    """A fresh local adapter shaped like ``adapter``: random ``down``, zero ``up`` (NanoAdapter's init).

    Seeded in a forked RNG so creating it neither depends on nor disturbs the training RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        local = NanoAdapter(adapter.up.out_features, adapter.config)
    return local.to(device=adapter.up.weight.device, dtype=adapter.up.weight.dtype)


class PersonalisedAdapters:
    """The client's local adapters beside the global ``adapters`` (a NanoEdge's ``edge.adapters``).

    Parameters
    ----------
    adapters:
        The global NanoAdapters by name (``image``, ``text``); they are what the client sends.
    mix:
        Weight of the local branch, in ``[0, 1]``.
    local_state:
        The local part as :meth:`local_state` returned it last round; None for fresh local
        adapters.
    seed:
        Initialisation of fresh local adapters.
    """

    def __init__(self, adapters: nn.ModuleDict, mix: float = 0.5,
                 local_state: Mapping[str, torch.Tensor] | None = None, seed: int = 0) -> None:
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {mix}")
        self.adapters, self.mix = adapters, mix
        self.local = nn.ModuleDict({name: _local_copy(adapter, seed + i)
                                    for i, (name, adapter) in enumerate(adapters.items())})
        if local_state is not None:
            self.local.load_state_dict(dict(local_state), strict=True)

    def local_state(self) -> dict[str, torch.Tensor]:
        """The local part, named like the global one (``image.down.weight``...). Never sent."""
        return {k: v.detach().clone() for k, v in self.local.state_dict().items()}

    @contextmanager
    def combined(self, freeze_global: bool = False) -> Iterator[nn.ModuleDict]:
        """Within the block the global adapters' slots hold DualAdapters, so the NanoEdge (forward,
        generation, training) uses global + local. ``freeze_global`` leaves only the local part
        trainable (FedDPA-F). Everything is restored on exit, so ``adapter_state()`` taken outside
        the block is the global part alone."""
        originals = {name: self.adapters[name] for name in self.local}
        flags = {id(p): p.requires_grad for a in originals.values() for p in a.parameters()}
        try:
            for name, global_adapter in originals.items():
                if freeze_global:
                    global_adapter.requires_grad_(False)
                self.adapters[name] = DualAdapter(global_adapter, self.local[name], self.mix)
            yield self.adapters
        finally:
            for name, global_adapter in originals.items():
                self.adapters[name] = global_adapter
                for p in global_adapter.parameters():
                    p.requires_grad_(flags[id(p)])


# ---------------------------------------------------------------- client half


def _personal(ctx: ExtraContext) -> PersonalisedAdapters:
    """This node's local adapters as it left them (fresh in its first round)."""
    stored = ctx.state.array_records.get(LOCAL_ADAPTERS)
    return PersonalisedAdapters(ctx.runtime.edge.adapters, float(ctx.config[PERSONAL_MIX]),
                                None if stored is None else stored.to_torch_state_dict(), ctx.seed)


@after_training(PERSONAL_STEPS)
def personal_training(ctx: ExtraContext) -> Mapping[str, Record]:
    """FedDPA-F: train the local adapter on top of the frozen, freshly trained global one."""
    personal = _personal(ctx)
    with personal.combined(freeze_global=True):
        report = train_more(ctx, int(ctx.config[PERSONAL_STEPS]), ctx.seed + 1)
    rounds = int(ctx.state.config_records.get(LOCAL_ROUNDS, ConfigRecord({"n": 0}))["n"]) + 1
    ctx.state[LOCAL_ADAPTERS] = ArrayRecord(personal.local_state())
    ctx.state[LOCAL_ROUNDS] = ConfigRecord({"n": rounds})
    return {protocol.METRICS: MetricRecord({"personal_loss": report.loss, "personal_rounds": rounds})}


@evaluation(PERSONAL_MIX)
def personal_view(ctx: ExtraContext) -> AbstractContextManager[object]:
    """Evaluate with global + mix * local."""
    return _personal(ctx).combined()


# ---------------------------------------------------------------- server half


class PersonalisedFedAvg(FedAvg):
    """FedAvg over the global adapters that asks clients to personalise (FedDPA-F).

    Parameters
    ----------
    personal_steps:
        Local-adapter steps each client takes per round after its global training, shipped
        as ``personal-steps``.
    mix:
        Weight of the local branch, shipped as ``personal-mix`` to training and evaluation.
    **fedavg_kwargs:
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, *, personal_steps: int = 10, mix: float = 0.5, **fedavg_kwargs: Any) -> None:
        if personal_steps < 1:
            raise ValueError(f"personal_steps must be >= 1, got {personal_steps}")
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {mix}")
        super().__init__(**fedavg_kwargs)
        self.personal_steps, self.mix = personal_steps, mix

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[PERSONAL_STEPS], config[PERSONAL_MIX] = self.personal_steps, self.mix
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        config[PERSONAL_MIX] = self.mix
        return super().configure_evaluate(server_round, arrays, config, grid)
