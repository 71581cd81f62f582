"""NanoAdapter: the small trainable residual bottleneck that a NanoEdge client owns.

``h + scale * up(act(down(h)))`` with ``up`` initialised to zero, so a fresh adapter
is exactly the identity and the composed model starts as the pretrained one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass
class NanoAdapterConfig:
    """Shape of one NanoAdapter; ``alpha / rank`` scales its output as in LoRA."""

    rank: int = 16
    alpha: float = 16.0
    activation: str = "gelu"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"adapter rank must be >= 1, got {self.rank}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"unknown adapter activation {self.activation!r}; choose from {sorted(_ACTIVATIONS)}")


class NanoAdapter(nn.Module):
    """Low-rank residual adapter on token embeddings of width ``dim``."""

    def __init__(self, dim: int, config: NanoAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.down = nn.Linear(dim, config.rank)
        self.act = _ACTIVATIONS[config.activation]()
        self.up = nn.Linear(config.rank, dim)
        self.scale = config.alpha / config.rank
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.scale * self.up(self.act(self.down(h)))
