"""LLaVA (``LlavaForConditionalGeneration``): CLIP vision tower + projector on the client,
the Llama decoder and LM head on the server.

The client-side feature path mirrors ``LlavaModel.get_image_features`` (feature layer,
CLS dropping, projector) and the placement mirrors its ``masked_scatter`` of image
features into the image-token positions, so NanoEdge + backbone reproduce
``model(**inputs).logits`` exactly (tests/test_correctness.py holds it to that).
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from anther.model import chat_templates

from .base import EdgeParts, EncodedBatch, processed_batch, tiny_llama


class LlavaFamily:
    name = "llava"
    model_class = LlavaForConditionalGeneration
    processor_class: type = LlavaProcessor
    image_extra_keys: tuple[str, ...] = ()  # processor outputs the encoder needs per image, besides pixels
    multi_image = False  # LLaVA-1.5 was tuned on one picture per conversation

    def edge_parts(self, model: LlavaForConditionalGeneration) -> EdgeParts:
        return EdgeParts(
            vision_tower=model.model.vision_tower,
            connector=model.model.multi_modal_projector,
            embed_tokens=model.model.language_model.embed_tokens,
        )

    def backbone_parts(self, model: LlavaForConditionalGeneration) -> tuple[nn.Module, nn.Module]:
        return model.model.language_model, model.lm_head

    def image_token_id(self, config: LlavaConfig) -> int:
        return config.image_token_id

    def position_ids(self, config: object, batch: EncodedBatch) -> None:
        return None  # 0, 1, 2, ...

    def image_tokens(self, config: LlavaConfig) -> int:
        return config.image_seq_length

    def image_features(self, parts: EdgeParts, config: LlavaConfig, pixel_values: torch.Tensor,
                       extras: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return list(parts.connector(vision_features(parts.vision_tower, config, pixel_values)))

    def tiny(self, tokenizer) -> tuple[LlavaConfig, LlavaProcessor]:
        """The tiny checkpoint's config and processor around ``tokenizer`` (anther.model.tiny_model):
        a small but complete LLaVA-1.5, CLIP ViT, 2-layer MLP projector and Llama."""
        image_size, patch_size = 48, 16
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        )
        processor = LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
            vision_feature_select_strategy="default", image_token=tokenizer.image_token,
            num_additional_image_tokens=1, chat_template=chat_templates.LLAVA,
        )
        vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=image_size, patch_size=patch_size, projection_dim=64)
        config = LlavaConfig(
            vision_config=vision, text_config=tiny_llama(tokenizer), image_token_id=tokenizer.image_token_id,
            projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-1,
            image_seq_length=(image_size // patch_size) ** 2, pad_token_id=tokenizer.pad_token_id,
        )
        return config, processor

    def encode(self, processor, prompts: list[str], images: list[list[Image.Image]],
               targets: list[str] | None) -> EncodedBatch:
        """Tokenise prompt (+ target) with the family's processor; labels cover the target only."""
        texts = prompts if targets is None else [p + t for p, t in zip(prompts, targets)]
        present = [im for pictures in images for im in pictures]
        enc = processor(images=present or None, text=texts, return_tensors="pt", padding=True)
        return processed_batch(processor, enc, targets, enc["pixel_values"] if present else None,
                               {key: enc[key] for key in self.image_extra_keys} if present else {})


def vision_features(tower: nn.Module, config: LlavaConfig, pixel_values: torch.Tensor) -> torch.Tensor:
    """The tower's hidden states at ``vision_feature_layer`` (several layers concatenated), CLS
    dropped under the ``default`` strategy: what LLaVA and LLaVA-NeXT feed their projector."""
    out = tower(pixel_values, output_hidden_states=True)
    layers = config.vision_feature_layer
    if isinstance(layers, int):
        feats = out.hidden_states[layers]
    else:
        feats = torch.cat([out.hidden_states[i] for i in layers], dim=-1)
    return feats[:, 1:] if config.vision_feature_select_strategy == "default" else feats
