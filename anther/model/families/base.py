"""What a model family must say about itself so anther can split it into NanoEdge and backbone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image
from torch import nn
from transformers import LlamaConfig


@dataclass
class EncodedBatch:
    """Token ids, masks and pixels for one batch, as the family's own processor makes them.

    ``labels`` is -100 everywhere but the target tokens; ``pixel_values`` holds the
    images of only those samples that have one, one image per row, in prompt order (None
    when no sample does). ``image_extras`` holds what else the family's encoder needs of each
    image, one row per image as well: Idefics3's ``pixel_attention_mask`` (its tiles are
    padded), LLaVA-NeXT's ``image_sizes`` (its features depend on the original size).
    ``position_ids`` (B, T, P) is set only by families whose positions are not 0, 1, 2, ...
    (Qwen2-VL's M-RoPE); it travels to the backbone with the embeddings.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    image_extras: dict[str, torch.Tensor] = field(default_factory=dict)
    position_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device) -> EncodedBatch:
        """This batch with every tensor on ``device`` (where the NanoEdge computes)."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)
        return EncodedBatch(move(self.input_ids), move(self.attention_mask), move(self.labels),
                            move(self.pixel_values), {k: v.to(device) for k, v in self.image_extras.items()},
                            move(self.position_ids))


@dataclass
class EdgeParts:
    """The frozen client-side modules of one MLLM: encoder, connector and embedding table."""

    vision_tower: nn.Module
    connector: nn.Module
    embed_tokens: nn.Embedding


class ModelFamily(Protocol):
    """One Hugging Face MLLM class and how it splits."""

    name: str
    model_class: type
    processor_class: type  # its ``from_pretrained`` loads the checkpoint's processor

    def edge_parts(self, model: nn.Module) -> EdgeParts: ...

    def backbone_parts(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(decoder taking ``inputs_embeds``, LM head)."""
        ...

    def image_features(self, parts: EdgeParts, config: object, pixel_values: torch.Tensor,
                       extras: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Connector output for a batch of images (rows of ``pixel_values`` and ``extras``): one
        (tokens, hidden) tensor per image, in order; images may differ in token count."""
        ...

    def image_token_id(self, config: object) -> int: ...

    def position_ids(self, config: object, batch: EncodedBatch) -> torch.Tensor | None:
        """(B, T, P) token positions where they are not 0, 1, 2, ... (Qwen2-VL's M-RoPE), else None."""
        ...

    def image_tokens(self, config: object) -> int:
        """Image tokens one image (one tile, for families that tile) takes in the prompt."""
        ...

    def tiny(self, tokenizer: object) -> tuple[object, object]:
        """(config, processor) of this family's tiny checkpoint around anther's trained
        ``tokenizer`` (which the family may give its own special tokens)."""
        ...

    multi_image: bool  # whether its processor and model take several pictures in one prompt

    def encode(self, processor: object, prompts: list[str], images: list[list[Image.Image]],
               targets: list[str] | None) -> EncodedBatch:
        """The batch of ``prompts`` (+ ``targets``), ``images[i]`` the pictures of prompt ``i`` in
        the order of its image tokens (none for a text-only prompt)."""
        ...


def processed_batch(processor, enc, targets: list[str] | None, pixel_values: torch.Tensor | None,
                    image_extras: dict[str, torch.Tensor]) -> EncodedBatch:
    """The batch of a processor's output ``enc``: its token ids and mask, labels on ``targets``,
    and the images one per row as the family lists them."""
    return EncodedBatch(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        labels=target_labels(processor.tokenizer, enc["input_ids"], enc["attention_mask"], targets),
        pixel_values=pixel_values,
        image_extras=image_extras,
    )


def target_labels(tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  targets: list[str] | None) -> torch.Tensor:
    """-100 everywhere but each row's last ``len(tokenize(target))`` real tokens (right padding):
    the loss covers the answer only, never the prompt or the image tokens."""
    labels = torch.full_like(input_ids, -100)
    if targets is None:
        return labels
    lengths = attention_mask.sum(dim=1)
    for i, target in enumerate(targets):
        n = len(tokenizer(target, add_special_tokens=False)["input_ids"])
        end = int(lengths[i])
        labels[i, end - n:end] = input_ids[i, end - n:end]
    return labels


def tiny_llama(tokenizer) -> LlamaConfig:
    """The LLM of every family's tiny checkpoint: a 4-layer Llama of width 128 over ``tokenizer``.

    It has 8 attention heads of 16: with 4 of 32 (same parameter count) the tiny LLaVA never
    learned to answer yes/no questions about the picture in pretraining (README, Results)."""
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
