"""The wire, emulated for an in-process backbone: what a client would send and receive were it remote.

With ``backbone.mode=in_process`` nothing crosses a network, yet a simulation should train on
exactly what a deployment's client would: embeddings as they arrive at the service and gradients
as they come back, in the wire dtype the experiment chose (``backbone.wire_dtype``: a cast for
bfloat16 or float16, per-row quantisation for float8 and int8, :mod:`anther.backbone.wire`). This
backbone puts every tensor the client sends or receives through the wire's own encode and decode,
and counts the bytes the encoded tensors take, so a simulation's accuracy and traffic at each
wire setting are a deployment's. Masks, labels and positions travel as they are, as the remote
client sends them; scores and logits as float32, as the proto says.
"""

from __future__ import annotations

from typing import Any

import torch

from anther.backbone import wire
from anther.backbone.interface import Positions


def _through(t: torch.Tensor, dtype: str) -> tuple[torch.Tensor, int]:
    """``t`` as the other side decodes it from ``dtype``, in ``t``'s own dtype and device, and its wire bytes.
    A tensor already in ``dtype`` arrives as it is, so it is not copied through the codec."""
    if dtype == wire.dtype_name(t.dtype):
        return t, t.numel() * t.element_size()
    msg = wire.encode(t, dtype)
    back = wire.decode(msg, "tensor", (dtype,), ndim=t.dim()).to(t.device, t.dtype)
    return back, len(msg.data) + len(msg.scale)


def _plain_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class WireEmulation:
    """A :class:`~anther.backbone.interface.Backbone` that sends ``inner``'s inputs and outputs through
    the wire in ``wire_dtype``; anything else (``info``, ``device``...) is ``inner``'s."""

    def __init__(self, inner: Any, wire_dtype: str) -> None:
        if wire_dtype not in wire.WIRE_DTYPES:
            raise ValueError(f"wire dtype {wire_dtype!r} is not one of {', '.join(wire.WIRE_DTYPES)}")
        self.inner, self.wire_dtype = inner, wire_dtype
        self.bytes_up = 0
        self.bytes_down = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _up(self, inputs_embeds: torch.Tensor, *plain: torch.Tensor | None) -> torch.Tensor:
        sent, size = _through(inputs_embeds, self.wire_dtype)
        self.bytes_up += size + _plain_bytes(*plain)
        return sent

    def train_step(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                   position_ids: Positions = None) -> tuple[float, torch.Tensor]:
        sent = self._up(inputs_embeds, attention_mask, labels, position_ids)
        loss, grad = self.inner.train_step(sent, attention_mask, labels, position_ids)
        received, size = _through(grad, self.wire_dtype)
        self.bytes_down += size
        return loss, received

    def score(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
              position_ids: Positions = None) -> torch.Tensor:
        scores = self.inner.score(self._up(inputs_embeds, attention_mask, labels, position_ids), attention_mask,
                                  labels, position_ids)
        self.bytes_down += scores.numel() * 4
        return scores

    def next_token_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                          position_ids: Positions = None) -> torch.Tensor:
        logits = self.inner.next_token_logits(self._up(inputs_embeds, attention_mask, position_ids), attention_mask,
                                              position_ids)
        self.bytes_down += logits.numel() * 4
        return logits

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: Positions = None) -> torch.Tensor:
        hidden = self.inner.hidden_states(self._up(inputs_embeds, attention_mask, position_ids), attention_mask,
                                          position_ids)
        received, size = _through(hidden, self.wire_dtype)
        self.bytes_down += size
        return received

    def backward_from_hidden(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                             grad_hidden: torch.Tensor, position_ids: Positions = None) -> torch.Tensor:
        sent = self._up(inputs_embeds, attention_mask, position_ids)
        grad_sent, size = _through(grad_hidden, self.wire_dtype)
        self.bytes_up += size
        grad = self.inner.backward_from_hidden(sent, attention_mask, grad_sent, position_ids)
        received, size = _through(grad, self.wire_dtype)
        self.bytes_down += size
        return received
