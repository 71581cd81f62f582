"""Model families: each module says how one Hugging Face MLLM class splits into NanoEdge and backbone.

``FAMILIES`` maps a checkpoint's ``config.model_type`` to its family. A family's module (and the
transformers model code it imports, about a second each) loads the first time that family is asked
for: a process that runs LLaVA never imports Idefics3, and one that only checks a config (the CLI
before it starts a run) imports no model code at all. A family of one's own is one module with a
class like those here, registered by ``register_family("my_type", "my_pkg.my_family:MyFamily")``
(or with an instance) in the process that splits the model; the processes Flower starts for a
run know the entries of ``FAMILIES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import ModelFamily


class FamilyRegistry(Mapping[str, "ModelFamily"]):
    """``config.model_type`` -> family; a family given as ``"module:Class"`` is imported and made
    when first looked up, then kept (the same instance every time)."""

    def __init__(self, where: Mapping[str, str]) -> None:
        self._where: dict[str, str] = dict(where)
        self._made: dict[str, ModelFamily] = {}

    def register(self, model_type: str, family: ModelFamily | str) -> None:
        """Add (or replace) the family for ``model_type``: an instance, or ``"module:Class"``."""
        self._made.pop(model_type, None)
        if isinstance(family, str):
            if ":" not in family:
                raise ValueError(f"family {family!r} for {model_type!r} must be 'module:Class'")
            self._where[model_type] = family
        else:
            self._where[model_type] = f"{type(family).__module__}:{type(family).__qualname__}"
            self._made[model_type] = family

    def __getitem__(self, model_type: str) -> ModelFamily:
        if model_type not in self._made:
            module, _, cls = self._where[model_type].partition(":")
            self._made[model_type] = getattr(importlib.import_module(module), cls)()
        return self._made[model_type]

    def __contains__(self, model_type: object) -> bool:  # without importing the family (Mapping's would)
        return model_type in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


FAMILIES = FamilyRegistry({
    "llava": "anther.model.families.llava:LlavaFamily",
    "llava_next": "anther.model.families.llava_next:LlavaNextFamily",
    "idefics3": "anther.model.families.idefics3:Idefics3Family",
    "qwen2_vl": "anther.model.families.qwen2_vl:Qwen2VLFamily",
    "qwen2_5_vl": "anther.model.families.qwen2_vl:Qwen2_5_VLFamily",
})


def register_family(model_type: str, family: ModelFamily | str) -> None:
    """Make checkpoints whose ``config.model_type`` is ``model_type`` split by ``family``."""
    FAMILIES.register(model_type, family)


def family_for(model_type: str) -> ModelFamily:
    """The family registered for a Hugging Face ``config.model_type``."""
    if model_type not in FAMILIES:
        raise ValueError(f"model type {model_type!r} has no anther family; known: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def load_processor(model_dir: str | Path) -> object:
    """The checkpoint's processor, built by its family's processor class (``AutoProcessor`` would
    build Qwen2-VL's with a video processor, which needs torchvision)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    return family_for(config.model_type).processor_class.from_pretrained(model_dir)


__all__ = ["FAMILIES", "FamilyRegistry", "family_for", "load_processor", "register_family"]
