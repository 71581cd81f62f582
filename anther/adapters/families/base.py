"""What a model family must say about itself so anther can split it into NanoEdge and backbone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image
from torch import nn


@dataclass
class EncodedBatch:
    """Token ids, masks and pixels for one batch, as the family's own processor makes them.

    ``labels`` is -100 everywhere but the target tokens; ``pixel_values`` holds the
    images of only those samples that have one (None when no sample does).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class EdgeParts:
    """The frozen client-side modules of one MLLM: encoder, connector and embedding table."""

    vision_tower: nn.Module
    connector: nn.Module
    embed_tokens: nn.Embedding


class ModelFamily(Protocol):
    """One Hugging Face MLLM class and how it splits."""

    name: str

    def edge_parts(self, model: nn.Module) -> EdgeParts: ...

    def backbone_parts(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(decoder taking ``inputs_embeds``, LM head)."""
        ...

    def image_features(self, parts: EdgeParts, config: object, pixel_values: torch.Tensor) -> torch.Tensor:
        """Connector output for a batch of images: (n_images * tokens_per_image, hidden)."""
        ...

    def image_token_id(self, config: object) -> int: ...

    def encode(self, processor: object, prompts: list[str], images: list[Image.Image | None],
               targets: list[str] | None) -> EncodedBatch: ...
