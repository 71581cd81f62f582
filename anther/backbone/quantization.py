"""8-bit or 4-bit backbones through bitsandbytes, on a CUDA GPU only.

The frozen LLM is the server's whole memory bill, and it never trains, so it can be held
quantised: LLM.int8() (``8bit``) or NF4 with compute in the model dtype (``4bit``). The
backbone is loaded without the vision tower and connector (:mod:`anther.model.side_loading`)
and its LM head stays in the model dtype; the NanoEdge never runs on a quantised model
(``backbone.mode=in_process`` refuses quantisation). bitsandbytes kernels need CUDA, so where there is no GPU, or no
bitsandbytes, the message says so before anything is loaded.
"""

from __future__ import annotations

import importlib.util

import torch
from transformers import BitsAndBytesConfig

from anther.core.config import QUANTIZATIONS

KEPT_IN_DTYPE = ["lm_head"]  # every family's head; its logits feed the loss directly


def check_quantization(quantization: str, device: str) -> None:
    """Raise a message naming the setting if ``quantization`` cannot run on ``device`` here."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"backbone quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"backbone.quantization={quantization} needs a CUDA GPU (bitsandbytes kernels), "
                           "and this machine has none: serve the backbone on a GPU machine, or set "
                           "backbone.quantization=none")
    if not device.startswith("cuda"):
        raise ValueError(f"backbone.quantization={quantization} runs on a CUDA device, not model.device="
                           f"{device!r}: set model.device=cuda (or cuda:N)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"backbone.quantization={quantization} needs bitsandbytes: "
                           "pip install 'anther[gpu]' (or pip install bitsandbytes)")


def quantization_config(quantization: str, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """The ``from_pretrained`` quantisation config for ``quantization`` (None for ``none``). The
    backbone is loaded without the client's modules, so what stays in ``dtype`` is the head."""
    if quantization == "none":
        return None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=KEPT_IN_DTYPE)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                              llm_int8_skip_modules=KEPT_IN_DTYPE)
