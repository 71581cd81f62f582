"""Model families: each module says how one Hugging Face MLLM class splits into NanoEdge and backbone.

Adding a family is one module here plus one entry in ``FAMILIES``.
"""

from __future__ import annotations

from .base import EdgeParts, EncodedBatch, ModelFamily
from .idefics3 import Idefics3Family
from .llava import LlavaFamily
from .llava_next import LlavaNextFamily

# Hugging Face config.model_type -> family
FAMILIES: dict[str, ModelFamily] = {"llava": LlavaFamily(), "llava_next": LlavaNextFamily(),
                                    "idefics3": Idefics3Family()}


def family_for(model_type: str) -> ModelFamily:
    """The family registered for a Hugging Face ``config.model_type``."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(
            f"model type {model_type!r} has no anther family; known: {sorted(FAMILIES)}"
        ) from None


__all__ = ["FAMILIES", "EdgeParts", "EncodedBatch", "ModelFamily", "family_for"]
