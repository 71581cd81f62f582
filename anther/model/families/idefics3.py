"""Idefics3 / SmolVLM (``Idefics3ForConditionalGeneration``, SmolVLM-Instruct's class): the SigLIP
vision transformer and the pixel-shuffle connector on the client, the Llama text model and LM
head on the server.

The processor splits each image into tiles plus a downscaled global view, pads them to a
common size (``pixel_attention_mask`` marks the real pixels) and writes ``image_seq_len``
image tokens per tile, framed by ``<fake_token_around_image>`` and ``<row_r_col_c>`` /
``<global-img>`` tokens. :meth:`Idefics3Family.encode` keeps the processor's token ids as
they are and lists the real tiles one per row, dropping the all-zero padding tiles the way
``Idefics3Model.get_image_features`` does; :meth:`image_features` then mirrors that method's
patch mask, encoder and connector, so NanoEdge + backbone reproduce ``model(**inputs).logits``
(tests/test_correctness.py).
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
)

from anther.model import chat_templates

from .base import EdgeParts, EncodedBatch, processed_batch, tiny_llama


class Idefics3Family:
    name = "idefics3"
    model_class = Idefics3ForConditionalGeneration
    processor_class = Idefics3Processor
    multi_image = True

    def edge_parts(self, model: Idefics3ForConditionalGeneration) -> EdgeParts:
        return EdgeParts(
            vision_tower=model.model.vision_model,
            connector=model.model.connector,
            embed_tokens=model.model.text_model.embed_tokens,
        )

    def backbone_parts(self, model: Idefics3ForConditionalGeneration) -> tuple[nn.Module, nn.Module]:
        return model.model.text_model, model.lm_head

    def image_token_id(self, config: Idefics3Config) -> int:
        return config.image_token_id

    def position_ids(self, config: object, batch: EncodedBatch) -> None:
        return None  # 0, 1, 2, ...

    def image_tokens(self, config: Idefics3Config) -> int:
        """Per tile, after the pixel shuffle: (image_size / patch)^2 / scale^2 (81 for SmolVLM's
        384 px tiles); the processor adds 3 framing tokens per tile."""
        v = config.vision_config
        return (v.image_size // v.patch_size) ** 2 // config.scale_factor**2

    def image_features(self, parts: EdgeParts, config: Idefics3Config, pixel_values: torch.Tensor,
                       extras: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        pixel_mask = extras["pixel_attention_mask"]
        patch = config.vision_config.patch_size
        subgrid = pixel_mask.unfold(dimension=1, size=patch, step=patch).unfold(dimension=2, size=patch, step=patch)
        patch_mask = subgrid.sum(dim=(-1, -2)) > 0
        dtype = next(parts.vision_tower.parameters()).dtype
        hidden = parts.vision_tower(pixel_values=pixel_values.to(dtype),
                                    patch_attention_mask=patch_mask).last_hidden_state
        return list(parts.connector(hidden))

    def tiny(self, tokenizer) -> tuple[Idefics3Config, Idefics3Processor]:
        """The tiny checkpoint's config and processor around ``tokenizer`` (anther.model.tiny_model):
        the built-in 48 px pictures are resized to 64 px and split into 2 x 2 tiles of 32 px plus
        the global view, 5 tiles of 4 image tokens each, as SmolVLM splits its 1536 px inputs
        into 384 px tiles."""
        tile, patch, scale = 32, 8, 2
        tokenizer.add_special_tokens({"additional_special_tokens": [
            "<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
            *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]]})
        image_processor = Idefics3ImageProcessorPil(
            size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile}, do_image_splitting=True,
        )
        vision = Idefics3VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, image_size=tile, patch_size=patch)
        config = Idefics3Config(
            vision_config=vision.to_dict(), text_config=tiny_llama(tokenizer).to_dict(),
            image_token_id=tokenizer.image_token_id, scale_factor=scale, tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                      image_seq_len=self.image_tokens(config), chat_template=chat_templates.IDEFICS3)
        return config, processor

    def encode(self, processor, prompts: list[str], images: list[list[Image.Image]],
               targets: list[str] | None) -> EncodedBatch:
        """Tokenise prompt (+ target) with the Idefics3 processor; the real tiles one per row."""
        texts = prompts if targets is None else [p + t for p, t in zip(prompts, targets)]
        nested = [list(pictures) for pictures in images]
        has_images = any(nested)
        enc = processor(images=nested if has_images else None, text=texts, return_tensors="pt", padding=True)
        pixel_values, extras = None, {}
        if has_images:
            tiles = enc["pixel_values"].flatten(0, 1)
            real = (tiles != 0).flatten(1).any(dim=1)  # the processor pads with all-zero tiles
            pixel_values = tiles[real]
            extras["pixel_attention_mask"] = enc["pixel_attention_mask"].flatten(0, 1)[real].bool()
        return processed_batch(processor, enc, targets, pixel_values,
                               extras)
