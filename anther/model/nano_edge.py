"""NanoEdge: what a client runs. The model's own frozen vision encoder, connector and
token embeddings, plus two trainable NanoAdapters:

- NanoAdapter-I on the connector's image-token embeddings,
- NanoAdapter-T on the text-token embeddings.

Its output is the merged ``inputs_embeds`` the backbone consumes. Raw pixels and
token ids stay here; only embeddings (and, for training, labels) go to the backbone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn

from anther.model.families import family_for
from anther.model.families.base import EdgeParts, EncodedBatch, ModelFamily
from anther.model.feature_cache import FeatureCache
from anther.model.nano_adapter import NanoAdapter, NanoAdapterConfig
from anther.model.side_loading import load_side


def build_adapters(dim: int, config: NanoAdapterConfig, seed: int | None = None) -> nn.ModuleDict:
    """NanoAdapter-I and NanoAdapter-T; with ``seed``, initialised identically everywhere."""
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return nn.ModuleDict({"image": NanoAdapter(dim, config), "text": NanoAdapter(dim, config)})


def initial_adapter_state(dim: int, config: NanoAdapterConfig, seed: int) -> dict[str, torch.Tensor]:
    """The round-0 global adapters of a run."""
    return build_adapters(dim, config, seed).state_dict()


class NanoEdge(nn.Module):
    def __init__(self, parts: EdgeParts, family: ModelFamily, model_config, adapter: NanoAdapterConfig) -> None:
        super().__init__()
        self.vision_tower = parts.vision_tower
        self.connector = parts.connector
        self.embed_tokens = parts.embed_tokens
        self.family = family
        self.model_config = model_config
        self.image_token_id = family.image_token_id(model_config)
        for frozen in (self.vision_tower, self.connector, self.embed_tokens):
            frozen.requires_grad_(False)
            frozen.eval()
        self.adapters = build_adapters(self.embed_tokens.embedding_dim, adapter).to(self.device)
        self.feature_cache: FeatureCache | None = None  # set by the runtime when the config asks for it
        # the frozen modules' autocast (model.autocast, anther.model.placement); adapters never autocast
        self.autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, adapter: NanoAdapterConfig,
                        dtype: torch.dtype = torch.float32, device: str = "cpu") -> NanoEdge:
        """The NanoEdge of the checkpoint at ``model_dir``, read without the LLM's decoder layers
        and head (:mod:`anther.model.side_loading`)."""
        return cls.from_model(load_side(model_dir, "client", dtype=dtype), adapter).to(device)

    @classmethod
    def from_model(cls, model: nn.Module, adapter: NanoAdapterConfig) -> NanoEdge:
        """The client half of an already loaded MLLM, with fresh adapters."""
        family = family_for(model.config.model_type)
        return cls(family.edge_parts(model), family, model.config, adapter)

    @property
    def device(self) -> torch.device:
        """Where every module of this NanoEdge is, and every tensor of its steps."""
        return self.embed_tokens.weight.device

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The frozen modules' weights' dtype (``model.dtype``); the adapters' are fp32."""
        return self.embed_tokens.weight.dtype

    def train(self, mode: bool = True) -> NanoEdge:
        """Only the adapters switch mode; the frozen modules stay in eval."""
        self.adapters.train(mode)
        return self

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        """Frozen encoder + connector output of every image, concatenated: (image tokens, hidden);
        read from the feature cache where it holds them."""
        if self.feature_cache is None:
            return torch.cat(self._encode_images(pixel_values, extras))
        return torch.cat(self.feature_cache.features(pixel_values, extras, self._encode_images))

    def _encode_images(self, pixel_values: torch.Tensor, extras: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        parts = EdgeParts(self.vision_tower, self.connector, self.embed_tokens)
        with self.autocast():
            return self.family.image_features(parts, self.model_config, pixel_values.to(self.frozen_dtype), extras)

    def adapt(self, modality: str, embeds: torch.Tensor) -> torch.Tensor:
        """``embeds`` through that modality's NanoAdapter; unchanged where there is none (in
        ``mode=whole_model`` the adapters are LoRA inside the LLM, see :mod:`anther.model.lora`)."""
        return self.adapters[modality](embeds) if modality in self.adapters else embeds

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Adapted token embeddings: what training and generation feed the LLM for text."""
        with torch.no_grad():
            text = self.embed_tokens(input_ids)
        return self.adapt("text", text.to(self.adapter_dtype))

    @property
    def adapter_dtype(self) -> torch.dtype:
        """What the adapters hold and compute in: their fp32 master weights (the whole model's
        dtype in ``mode=whole_model``, whose LoRA lives in the LLM)."""
        return next(self.adapters.parameters()).dtype if "text" in self.adapters else self.frozen_dtype

    @property
    def rank(self) -> int:
        """The rank of this client's adapters (NanoAdapters', or LoRA's in ``mode=whole_model``)."""
        if "text" in self.adapters:
            return self.adapters["text"].config.rank
        return self.adapters["lora"].rank

    def forward(self, batch: EncodedBatch) -> torch.Tensor:
        """Merged ``inputs_embeds`` with both adapters applied, shape (B, T, hidden)."""
        embeds = self.embed_text(batch.input_ids)
        if batch.pixel_values is not None:
            features = self.image_features(batch.pixel_values, batch.image_extras)
            image = self.adapt("image", features.to(embeds.dtype))
            mask = batch.input_ids == self.image_token_id
            if int(mask.sum()) != image.shape[0]:
                raise ValueError(
                    f"batch has {int(mask.sum())} image-token positions but {image.shape[0]} "
                    "image features: prompts and pixel_values disagree"
                )
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), image)
        return embeds

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights, named ``image.down.weight`` and so on."""
        return {k: v.detach().clone() for k, v in self.adapters.state_dict().items()}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        self.adapters.load_state_dict(state, strict=True)
