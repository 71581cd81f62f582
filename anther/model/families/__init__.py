"""Model families: each module says how one Hugging Face MLLM class splits into NanoEdge and backbone.

Adding a family is one module here plus one entry in ``FAMILIES``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig

from .base import EdgeParts, EncodedBatch, ModelFamily
from .idefics3 import Idefics3Family
from .llava import LlavaFamily
from .llava_next import LlavaNextFamily
from .qwen2_vl import Qwen2_5_VLFamily, Qwen2VLFamily

# Hugging Face config.model_type -> family
FAMILIES: dict[str, ModelFamily] = {"llava": LlavaFamily(), "llava_next": LlavaNextFamily(),
                                    "idefics3": Idefics3Family(), "qwen2_vl": Qwen2VLFamily(),
                                    "qwen2_5_vl": Qwen2_5_VLFamily()}


def load_processor(model_dir: str | Path) -> object:
    """The checkpoint's processor, built by its family's processor class (``AutoProcessor`` would
    build Qwen2-VL's with a video processor, which needs torchvision)."""
    config = AutoConfig.from_pretrained(model_dir)
    return family_for(config.model_type).processor_class.from_pretrained(model_dir)


def family_for(model_type: str) -> ModelFamily:
    """The family registered for a Hugging Face ``config.model_type``."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(
            f"model type {model_type!r} has no anther family; known: {sorted(FAMILIES)}"
        ) from None


__all__ = ["FAMILIES", "EdgeParts", "EncodedBatch", "ModelFamily", "family_for", "load_processor"]
