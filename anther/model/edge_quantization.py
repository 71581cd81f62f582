"""The edge profile's int8 client: the frozen vision tower and connector quantised for the CPU.

A site without a GPU (a phone, a small box) spends most of a step in the vision tower. PyTorch's
dynamic quantisation stores every ``nn.Linear`` of the frozen tower and connector as int8 with a
per-tensor scale and quantises activations on the fly, which quarters their memory and uses the
CPU's int8 kernels. Only frozen modules are quantised: the NanoAdapters keep fp32 weights, and
the token embeddings are a table lookup. ``model.vision_quantization=int8`` turns it on
(``+profile=edge`` with one thread and the feature cache); it runs on the CPU, on fp32 weights.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

VISION_QUANTIZATIONS = ("none", "int8")


def quantize_for_cpu(module: nn.Module) -> nn.Module:
    """``module`` with its linear layers in dynamic int8 (``torch.ao.quantization.quantize_dynamic``)."""
    with warnings.catch_warnings():  # torch.ao points at torchao; its eager quantize_dynamic is what runs here
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)
