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
``mix = 0`` is always the global model. FedDPA-F: after (or between) federated rounds, train
the local adapter on local data with the global one frozen, and answer with both. The local
part is saved to and loaded from a client-side folder (safetensors), so it survives between
rounds and runs.

Server side there is nothing new: the strategy is plain FedAvg (or any other) over the
global part, because the client's train reply contains only the global adapters. Use
``strategy: {name: fedavg}``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from anther.adapters.nano_adapter import NanoAdapter

LOCAL_FILE = "local_adapters.safetensors"


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
    folder:
        Client-side folder the local part lives in (one per client, e.g. per partition id).
    mix:
        Weight of the local branch, in ``[0, 1]``.
    seed:
        Initialisation of a fresh local part (when the folder holds none yet).
    """

    def __init__(self, adapters: nn.ModuleDict, folder: str | Path, mix: float = 0.5, seed: int = 0) -> None:
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {mix}")
        self.adapters, self.folder, self.mix = adapters, Path(folder), mix
        self.local = nn.ModuleDict({name: _local_copy(adapter, seed + i)
                                    for i, (name, adapter) in enumerate(adapters.items())})
        self.load()

    @property
    def path(self) -> Path:
        return self.folder / LOCAL_FILE

    def local_parameters(self) -> Iterator[nn.Parameter]:
        """What a personalisation step optimises."""
        return self.local.parameters()

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

    def save(self) -> Path:
        """Write the local part atomically (a crash mid-write never leaves a torn file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in self.local_state().items()}, str(tmp))
        os.replace(tmp, self.path)
        return self.path

    def load(self) -> bool:
        """Load the local part if this client saved one; False (fresh local adapters) if not."""
        if not self.path.exists():
            return False
        self.local.load_state_dict(load_file(str(self.path)), strict=True)
        return True
