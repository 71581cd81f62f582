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
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from .base import EdgeParts, EncodedBatch, target_labels


class LlavaFamily:
    name = "llava"
    model_class = LlavaForConditionalGeneration

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

    def image_tokens(self, config: LlavaConfig) -> int:
        return config.image_seq_length

    def image_features(self, parts: EdgeParts, config: LlavaConfig, pixel_values: torch.Tensor,
                       extras: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        out = parts.vision_tower(pixel_values, output_hidden_states=True)
        layers = config.vision_feature_layer
        if isinstance(layers, int):
            feats = out.hidden_states[layers]
        else:
            feats = torch.cat([out.hidden_states[i] for i in layers], dim=-1)
        if config.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        return list(parts.connector(feats))

    def tiny(self, tokenizer) -> tuple[LlavaConfig, LlavaProcessor]:
        """The tiny checkpoint's config and processor around ``tokenizer`` (anther.adapters.tiny_model)."""
        image_size, patch_size = 48, 16
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        )
        processor = LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
            vision_feature_select_strategy="default", image_token=tokenizer.image_token,
            num_additional_image_tokens=1,
        )
        config = tiny_config(
            vocab_size=len(tokenizer), image_token_id=tokenizer.image_token_id,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, image_size=image_size, patch_size=patch_size,
        )
        return config, processor

    def encode(self, processor, prompts: list[str], images: list[Image.Image | None],
               targets: list[str] | None) -> EncodedBatch:
        """Tokenise prompt (+ target) with the LLaVA processor; labels cover the target only."""
        texts = prompts if targets is None else [p + t for p, t in zip(prompts, targets)]
        present = [im for im in images if im is not None]
        enc = processor(images=present or None, text=texts, return_tensors="pt", padding=True)
        return EncodedBatch(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            labels=target_labels(processor.tokenizer, enc["input_ids"], enc["attention_mask"], targets),
            pixel_values=enc.get("pixel_values") if present else None,
        )


def tiny_config(vocab_size: int, image_token_id: int, pad_token_id: int, bos_token_id: int,
                eos_token_id: int, image_size: int = 48, patch_size: int = 16) -> LlavaConfig:
    """A small but architecturally complete LLaVA-1.5: CLIP ViT, 2-layer MLP projector, Llama.

    The Llama has 8 attention heads of 16: with 4 of 32 (same parameter count) it never learned
    to answer yes/no questions about the picture in pretraining (README, Results)."""
    vision = CLIPVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=patch_size, projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
        pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id,
        projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=-1, image_seq_length=(image_size // patch_size) ** 2,
        pad_token_id=pad_token_id,
    )
