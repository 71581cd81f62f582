"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``, LLaVA-1.6): CLIP vision tower, projector and
``image_newline`` on the client, the Llama decoder and LM head on the server.

"AnyRes" tiling: the processor picks the grid resolution closest to each image's size,
cuts the image into tower-sized tiles plus a downscaled base view, and writes as many image
tokens as the *unpadded* feature grid (with one newline token per row) holds, so the token
count depends on each image's original size. :meth:`LlavaNextFamily.encode` therefore
carries ``image_sizes`` per image next to the pixels (LLaVA's encoding, with that extra), and
:meth:`image_features` mirrors ``LlavaNextModel.get_image_features``: tower, feature layer, CLS
dropping, projector, then the model's own ``pack_image_features`` (unpadding and newlines), so
NanoEdge + backbone reproduce ``model(**inputs).logits`` (tests/test_correctness.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextModel,
    LlavaNextProcessor,
)
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from anther.model import chat_templates

from .base import EdgeParts, tiny_llama
from .llava import LlavaFamily, vision_features


class PackingConnector(nn.Module):
    """The client's connector: the model's projector and its learned ``image_newline`` (the same
    parameters, not copies), which the packing appends to every row of an image's features."""

    def __init__(self, projector: nn.Module, image_newline: nn.Parameter) -> None:
        super().__init__()
        self.projector = projector
        self.image_newline = image_newline


class LlavaNextFamily(LlavaFamily):
    """LLaVA's split, token placement and encoding, with AnyRes image features."""

    name = "llava_next"
    model_class = LlavaNextForConditionalGeneration
    processor_class = LlavaNextProcessor
    image_extra_keys = ("image_sizes",)
    multi_image = True

    def edge_parts(self, model: LlavaNextForConditionalGeneration) -> EdgeParts:
        return EdgeParts(
            vision_tower=model.model.vision_tower,
            connector=PackingConnector(model.model.multi_modal_projector, model.model.image_newline),
            embed_tokens=model.model.language_model.embed_tokens,
        )

    def image_tokens(self, config: LlavaNextConfig) -> int:
        """A square picture at the largest square grid: the base view, then the grid's feature
        rows, each with its newline (2928 for LLaVA-NeXT-7B's 672 px grid; other shapes unpad
        to fewer)."""
        per_tile = config.vision_config.image_size // config.vision_config.patch_size
        side = max(h for h, w in config.image_grid_pinpoints if h == w)
        rows = side // config.vision_config.image_size * per_tile
        return config.image_seq_length + rows * (rows + 1)

    def image_features(self, parts: EdgeParts, config: LlavaNextConfig, pixel_values: torch.Tensor,
                       extras: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        image_sizes = extras["image_sizes"]
        tiles = [image_size_to_num_patches(image_size=size, grid_pinpoints=config.image_grid_pinpoints,
                                           patch_size=config.vision_config.image_size) for size in image_sizes]
        pixels = torch.cat([p[:n] for p, n in zip(pixel_values, tiles)])  # the processor pads the tile axis
        feats = parts.connector.projector(vision_features(parts.vision_tower, config, pixels))
        # The model's own packing, called unbound: it reads nothing of the model but its config.
        packed, _ = LlavaNextModel.pack_image_features(
            SimpleNamespace(config=config), list(feats.split(tiles)), image_sizes,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            image_newline=parts.connector.image_newline,
        )
        return packed

    def tiny(self, tokenizer) -> tuple[LlavaNextConfig, LlavaNextProcessor]:
        """The tiny checkpoint's config and processor around ``tokenizer`` (anther.model.tiny_model):
        a 32 px tower in patches of 16 and the grids 32 x 64, 64 x 32 and 64 x 64, so the built-in
        48 px pictures become 2 x 2 tiles plus the base view, and other shapes other grids."""
        tile, patch = 32, 16
        pinpoints = [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints,
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
            vision_feature_select_strategy="default", image_token=tokenizer.image_token,
            num_additional_image_tokens=1, chat_template=chat_templates.LLAVA,
        )
        vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=tile, patch_size=patch, projection_dim=64)
        config = LlavaNextConfig(
            vision_config=vision, text_config=tiny_llama(tokenizer), image_token_id=tokenizer.image_token_id,
            image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default", vision_feature_layer=-1,
            image_seq_length=(tile // patch) ** 2, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        )
        return config, processor
