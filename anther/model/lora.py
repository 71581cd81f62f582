"""LoRA inside the LLM, for ``mode=whole_model``: peft's layers, gathered so a client can train, send
and load them exactly as it does its NanoAdapters.

In whole-model mode a client holds the whole MLLM (FedMLLM's and OpenFedLLM's setting, and what split
mode is measured against). peft injects LoRA into the decoder's target projections in place;
:class:`LoraWeights` registers those same A and B matrices (and each layer's dropout) under one
module, so ``NanoEdge.adapters = {"lora": LoraWeights}`` makes ``adapter_state()``, the
optimiser, the Fisher and every strategy see LoRA and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ADAPTER = "default"  # peft's adapter name; one adapter per decoder


@dataclass(frozen=True)
class LoraSettings:
    """Rank, scale (``alpha / rank``), dropout and the decoder modules LoRA goes into."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


class LoraWeights(nn.ModuleDict):
    """The LoRA layers of one decoder, keyed by the path of the layer they adapt with ``-`` for
    ``.`` (``layers-0-self_attn-q_proj``), each ``{"A", "B", "dropout"}``: the very modules the
    decoder runs, so training these trains the decoder's LoRA."""

    def __init__(self, decoder: nn.Module) -> None:
        from peft.tuners.lora import LoraLayer  # peft is imported where LoRA is used (whole-model mode)

        layers = {name.replace(".", "-"): nn.ModuleDict({"A": m.lora_A[ADAPTER], "B": m.lora_B[ADAPTER],
                                                         "dropout": m.lora_dropout[ADAPTER]})
                  for name, m in decoder.named_modules() if isinstance(m, LoraLayer)}
        if not layers:
            raise ValueError("LoRA found no target module in the decoder")
        super().__init__(layers)

    @property
    def rank(self) -> int:
        return next(iter(self.values()))["A"].out_features

    def initial_state(self, seed: int) -> dict[str, torch.Tensor]:
        """Fresh LoRA weights as peft initialises them (A Kaiming-uniform, B zero, so the model
        starts as the pretrained one), the same everywhere for one ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        state = {}
        for name, value in self.state_dict().items():
            fresh = torch.zeros_like(value)
            if name.endswith(".A.weight"):
                bound = math.sqrt(6 / ((1 + 5) * value.shape[1]))  # kaiming_uniform_(a=sqrt(5)), fan_in
                fresh = torch.empty_like(value).uniform_(-bound, bound, generator=generator)
            state[name] = fresh
        return state


def inject_lora(decoder: nn.Module, settings: LoraSettings) -> LoraWeights:
    """Put trainable LoRA into ``decoder``'s target modules (in place) and return its weights.
    Every other weight of the decoder stays frozen."""
    import peft

    config = peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=list(settings.target_modules))
    try:
        peft.inject_adapter_in_model(config, decoder, adapter_name=ADAPTER)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"lora.target_modules={list(settings.target_modules)}: {e}") from None
    weights = LoraWeights(decoder)
    for name, param in decoder.named_parameters():
        param.requires_grad_(".lora_" in f".{name}")
    return weights
