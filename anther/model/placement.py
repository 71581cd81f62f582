"""Where a model's modules compute, and in which precision.

A client places its NanoEdge (or, in ``mode=whole_model``, the whole MLLM) on
``model.client_device``: ``auto`` is the first CUDA device this process sees, else the CPU.
In a Flower simulation Ray sets ``CUDA_VISIBLE_DEVICES`` of each ClientApp to the GPUs it
assigned (``federation.client_gpus``), and a deployed SuperNode runs with its own, so ``auto``
is the GPU meant for this client. Frozen modules may compute under autocast
(``model.autocast``), where the device supports it; trainable adapters never do: they keep fp32
master weights and fp32 arithmetic, so their updates are not rounded away.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

AUTOCAST_DTYPES = ("none", "bfloat16", "float16")


class PlacementError(ValueError):
    """A device the config names does not exist in this process."""


def resolve_device(setting: str, key: str = "model.client_device") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device this process can use."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise PlacementError(f"{key}={setting!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible == 0 or (device.index or 0) >= visible:
            raise PlacementError(f"{key}={setting!r}: this process sees {visible} CUDA device(s) "
                                 "(CUDA_VISIBLE_DEVICES, or federation.client_gpus in a simulation)")
    return device


def supports_autocast(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether autocast to ``dtype`` runs on ``device``: CUDA takes float16 everywhere and bfloat16
    where the GPU has it (Ampere and later); the CPU takes both."""
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    return device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)


def autocaster(device: torch.device, setting: str) -> Callable[[], AbstractContextManager]:
    """A factory of the autocast context ``model.autocast`` asks for on ``device``; where the
    device cannot, full precision, with a warning naming both."""
    if setting == "none":
        return contextlib.nullcontext
    dtype = getattr(torch, setting)
    if not supports_autocast(device, dtype):
        warnings.warn(f"model.autocast={setting} is not supported on {device}; computing in the weights' dtype",
                      stacklevel=2)
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)
