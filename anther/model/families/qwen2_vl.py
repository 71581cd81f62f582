"""Qwen2-VL / Qwen2.5-VL style (``Qwen2VLForConditionalGeneration``): the native-resolution vision
transformer with its patch merger on the client, the Qwen2 decoder and LM head on the server.

Two things set it apart from the LLaVA-style families:

- *Dynamic resolution.* The processor cuts each picture, at (close to) its own size, into
  patches and returns them flat, all images' patches in one (patches, channels x patch size^2)
  tensor, with each image's (t, h, w) patch grid in ``image_grid_thw``. :meth:`encode` puts
  each image's patches in a row of its own (padded), so a batch keeps one row per image like
  every family's, and :meth:`image_features` takes them out again for the vision tower.
- *M-RoPE.* Every token has three position coordinates (temporal, height, width): text tokens
  count up in all three, an image's tokens take their grid coordinates. :meth:`position_ids`
  computes them with the model's own ``get_rope_index`` (called with only the config), and they
  travel to the backbone with the embeddings (``EncodedBatch.position_ids``).

tests/test_correctness.py holds NanoEdge + backbone to ``model(**processor(...)).logits``.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import torch
from PIL import Image
from torch import nn
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLModel,
    Qwen2VLProcessor,
)

from anther.model import chat_templates

from .base import EdgeParts, EncodedBatch, processed_batch, tiny_llama

CHATML_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]  # the tiny template's
REFERENCE_PICTURE = 448  # px, square: the picture the size report counts image tokens for


class Qwen2VLImageTextProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor for pictures and text, without its video processor: transformers
    builds that one with torchvision, which anther does not need otherwise. It loads from any
    Qwen2-VL checkpoint (its image processor and tokenizer) and processes exactly as
    ``Qwen2VLProcessor`` does."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageTextProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor for pictures and text, without its video processor (as above)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


class Qwen2VLFamily:
    name = "qwen2_vl"
    model_class = Qwen2VLForConditionalGeneration
    processor_class = Qwen2VLImageTextProcessor
    config_class = Qwen2VLConfig
    inner_model_class = Qwen2VLModel  # whose get_rope_index computes the positions
    multi_image = True

    def edge_parts(self, model: Qwen2VLForConditionalGeneration) -> EdgeParts:
        visual = model.model.visual
        return EdgeParts(vision_tower=visual, connector=visual.merger,
                         embed_tokens=model.model.language_model.embed_tokens)

    def backbone_parts(self, model: Qwen2VLForConditionalGeneration) -> tuple[nn.Module, nn.Module]:
        return model.model.language_model, model.lm_head

    def image_token_id(self, config: Qwen2VLConfig) -> int:
        return config.image_token_id

    def image_tokens(self, config: Qwen2VLConfig) -> int:
        """For a 448 px square picture: (448 / patch)^2 patches, merged ``spatial_merge_size``^2 to
        one token (256 for Qwen2-VL-7B); other sizes take other counts."""
        v = config.vision_config
        return (REFERENCE_PICTURE // v.patch_size) ** 2 // v.spatial_merge_size**2

    def image_features(self, parts: EdgeParts, config: Qwen2VLConfig, pixel_values: torch.Tensor,
                       extras: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        grids = extras["image_grid_thw"]
        patches = grids.prod(dim=-1)
        flat = torch.cat([rows[:n] for rows, n in zip(pixel_values, patches.tolist())])
        dtype = next(parts.vision_tower.parameters()).dtype
        merged = parts.vision_tower(flat.to(dtype), grid_thw=grids).pooler_output
        return list(merged.split((patches // config.vision_config.spatial_merge_size**2).tolist()))

    def position_ids(self, config: Qwen2VLConfig, batch: EncodedBatch) -> torch.Tensor | None:
        """(B, T, 3) M-RoPE positions, 0 on padding, as ``Qwen2VLModel`` computes them; None for a
        batch without images, whose positions are 0, 1, 2, ... in every coordinate."""
        if batch.pixel_values is None:
            return None
        inner = self.inner_model_class
        model = SimpleNamespace(config=config)
        model.get_vision_position_ids = partial(inner.get_vision_position_ids, model)
        token_types = (batch.input_ids == config.image_token_id).int()
        positions, _ = inner.get_rope_index(model, batch.input_ids, mm_token_type_ids=token_types,
                                                   image_grid_thw=batch.image_extras["image_grid_thw"],
                                                   attention_mask=batch.attention_mask)
        return positions.permute(1, 2, 0)

    def tiny(self, tokenizer) -> tuple[Qwen2VLConfig, Qwen2VLImageTextProcessor]:
        """The tiny checkpoint's config and processor around ``tokenizer`` (anther.model.tiny_model):
        8 px patches merged 2 x 2, so the built-in 48 px pictures take 9 image tokens and other
        sizes other counts; the tiny Llama's shape as a Qwen2 decoder with M-RoPE."""
        patch, merge = 8, 2
        image_processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=merge, temporal_patch_size=2,
                                                   min_pixels=(2 * patch * merge) ** 2, max_pixels=96 * 96)
        tokenizer.add_special_tokens({"additional_special_tokens": CHATML_TOKENS})
        llama = tiny_llama(tokenizer)
        head_dim = llama.hidden_size // llama.num_attention_heads
        text = {key: getattr(llama, key) for key in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")}
        quarter = head_dim // 2 // 4  # M-RoPE splits the rotary half: temporal 1/4, height and width 3/8 each
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                                   "mrope_section": [quarter, (head_dim // 2 - quarter) // 2,
                                                     head_dim // 2 - quarter - (head_dim // 2 - quarter) // 2]}
        vision = {"depth": 2, "num_heads": 4, "patch_size": patch, "spatial_merge_size": merge,
                  "temporal_patch_size": 2, **self._tiny_vision_width(llama.hidden_size)}
        config = self.config_class(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id,
                                   tie_word_embeddings=False)
        processor = self.processor_class(image_processor=image_processor, tokenizer=tokenizer,
                                         chat_template=chat_templates.QWEN2_VL)
        return config, processor

    def _tiny_vision_width(self, llm_width: int) -> dict:
        """The tiny vision transformer's widths: 64 wide, MLP 2x, merged into the LLM's width."""
        return {"embed_dim": 64, "mlp_ratio": 2, "hidden_size": llm_width}

    def encode(self, processor, prompts: list[str], images: list[list[Image.Image]],
               targets: list[str] | None) -> EncodedBatch:
        """Tokenise prompt (+ target) with the Qwen2-VL processor; each image's patches in a row."""
        texts = prompts if targets is None else [p + t for p, t in zip(prompts, targets)]
        present = [im for pictures in images for im in pictures]
        enc = processor(images=present or None, text=texts, return_tensors="pt", padding=True)
        pixel_values, extras = None, {}
        if present:
            grids = enc["image_grid_thw"]
            per_image = enc["pixel_values"].split(grids.prod(dim=-1).tolist())
            pixel_values = nn.utils.rnn.pad_sequence(list(per_image), batch_first=True)
            extras["image_grid_thw"] = grids
        return processed_batch(processor, enc, targets, pixel_values,
                               extras)


class Qwen2_5_VLFamily(Qwen2VLFamily):
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): Qwen2-VL's split, processing and
    M-RoPE; its vision transformer attends within windows but in a few full-attention blocks,
    which the tiny checkpoint keeps (windows of 2 x 2 merged patches, block 1 full)."""

    name = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration
    processor_class = Qwen2_5_VLImageTextProcessor
    config_class = Qwen2_5_VLConfig
    inner_model_class = Qwen2_5_VLModel

    def _tiny_vision_width(self, llm_width: int) -> dict:
        return {"hidden_size": 64, "intermediate_size": 128, "out_hidden_size": llm_width, "window_size": 32,
                "fullatt_block_indexes": [1]}
