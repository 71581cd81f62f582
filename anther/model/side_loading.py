"""Load one side of the split from a checkpoint, reading none of the other side's weights.

A NanoEdge client needs the vision tower, the connector and the token embedding table; the
backbone needs the LLM (decoder, which holds the embedding table too for server-side generation,
and LM head). Loading the whole MLLM on each side and dropping half would read, and for a moment
hold, weights that side never uses: the 7B LLM on an edge device.

So each side loads a *pruned* model class: the family's own Hugging Face class whose
``__init__`` sets every submodule the side does not use to ``None``. ``from_pretrained`` then
works as usual (same key renaming from old checkpoint layouts, same dtype, device map and
quantisation), and since it only materialises checkpoint tensors that the model has a
parameter for, the other side's tensors are never read: ``tests/test_side_loading.py`` records
which tensors each side reads from a sharded checkpoint and compares them with its index.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedModel

from anther.model.families import family_for
from anther.model.families.base import ModelFamily

Side = Literal["client", "server", "both"]
SIDES: tuple[str, ...] = ("client", "server", "both")


def side_modules(family: ModelFamily, model: nn.Module, side: Side, head: bool = False) -> list[nn.Module]:
    """The modules ``side`` runs: the NanoEdge's parts (plus the LM head with ``head``, for private
    labels, or when the head is tied to the embedding table and so costs nothing), the
    backbone's, or both."""
    decoder, lm_head = family.backbone_parts(model)
    if side == "server":
        return [decoder, lm_head]
    edge = family.edge_parts(model)
    client = [edge.vision_tower, edge.connector, edge.embed_tokens]
    if side == "client":
        tied = getattr(model.config, "tie_word_embeddings", False)  # what transformers ties by
        return [*client, lm_head] if head or tied else client
    return [*client, decoder, lm_head]


def prune_to(model: nn.Module, keep: list[nn.Module]) -> None:
    """Set every submodule of ``model`` that neither is in ``keep`` nor lies inside or above one
    of them to ``None``; a parameter held outside them that no kept module uses (LLaVA-NeXT's
    ``image_newline`` sits on the model above both sides) becomes an empty plain tensor, which
    weight initialisation may still touch but loading skips."""
    needed = {id(m) for part in keep for m in part.modules()}
    needed_params = {id(p) for part in keep for p in part.parameters()}
    _prune(model, needed, needed_params)


def _prune(module: nn.Module, needed: set[int], needed_params: set[int]) -> None:
    for name, param in list(module._parameters.items()):
        if param is not None and id(param) not in needed_params:
            del module._parameters[name]
            setattr(module, name, torch.empty(0))
    for name, child in list(module.named_children()):
        if id(child) in needed:
            continue
        if any(id(m) in needed for m in child.modules()):
            _prune(child, needed, needed_params)
        else:
            module._modules[name] = None


@cache
def side_class(model_type: str, side: Side, head: bool = False) -> type[PreTrainedModel]:
    """The family's model class with only ``side``'s modules: a subclass that prunes itself
    right after construction (on the meta device, inside ``from_pretrained``)."""
    family = family_for(model_type)
    base = family.model_class
    if side == "both":
        return base

    def __init__(self: PreTrainedModel, config: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, config, *args, **kwargs)
        prune_to(self, side_modules(family, self, side, head))

    # Loading looks key renamings up by class name and skips them for classes defined outside
    # transformers: the pruned class must load exactly as its base does. The other side's
    # checkpoint tensors are expected to go unused; a tensor of this side that the checkpoint
    # lacks is still reported missing.
    return type(base.__name__, (base,), {
        "__init__": __init__, "__module__": __name__,
        "is_custom_code": classmethod(lambda cls: base.is_custom_code()),
        "_keys_to_ignore_on_load_unexpected": [r".*"]})


def load_side(model_dir: str | Path, side: Side, head: bool = False, **from_pretrained: Any) -> PreTrainedModel:
    """``from_pretrained`` of the checkpoint at ``model_dir`` with only ``side``'s modules
    (keyword arguments go to ``from_pretrained``: ``dtype``, ``device_map``, ...)."""
    if side not in SIDES:
        raise ValueError(f"side {side!r}: expected one of {SIDES}")
    config = AutoConfig.from_pretrained(model_dir)
    return side_class(config.model_type, side, head).from_pretrained(model_dir, **from_pretrained)


def checkpoint_fingerprint(model_dir: Path) -> str:
    """Hash of config and weight-file metadata: clients and server must agree on it."""
    model_dir = Path(model_dir)
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]
