"""Request decoding and validation: every request is checked whole before it can reach the model.

A request that fails any check (a missing field, a shape that does not match the model or the
other fields, a value out of range, NaN or Inf, more than the service's limits) raises
:class:`anther.backbone.wire.WireError`, which the servicer turns into INVALID_ARGUMENT with the
message; nothing of it is queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from anther.backbone import wire
from anther.backbone.interface import IGNORE_INDEX, BackboneInfo
from anther.backbone.proto import backbone_pb2 as pb
from anther.backbone.wire import TooLarge, WireError
from anther.core.config import BackboneConfig

MiB = 1 << 20

# what a queued request asks for; "hidden" and "backward" are the two halves of a private-labels step
Kind = Literal["train", "score", "logits", "hidden", "backward", "generate"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (reported by Info; see backbone.proto)."""

    max_sequence_length: int | None = None  # None: the model's max_position_embeddings
    max_chunk_bytes: int = 4 * MiB
    max_request_bytes: int = 256 * MiB
    max_new_tokens: int = 256
    # sequences x tokens of one request, and of one batched pass: what bounds the memory a pass takes
    max_request_tokens: int = BackboneConfig.max_request_tokens
    # what one caller may hold at once (anther/backbone/service/admission.py)
    max_calls_per_client: int = BackboneConfig.max_calls_per_client
    max_inflight_bytes: int = BackboneConfig.max_inflight_mib * MiB
    read_timeout_s: float = BackboneConfig.read_timeout_s


@dataclass
class ForwardInputs:
    """A validated TrainStep, Score, NextTokenLogits, HiddenStates or BackwardFromHidden request,
    in the model's dtype."""

    embeds: torch.Tensor  # (B, T, H)
    mask: torch.Tensor  # (B, T) int64
    labels: torch.Tensor | None  # (B, T) int64
    grad_dtype: str = "float32"  # of the float tensor the reply carries
    grad_hidden: torch.Tensor | None = None  # (B, T, H), BackwardFromHidden only
    positions: torch.Tensor | None = None  # (B, T, P) int64; None: 0, 1, 2, ...

    @property
    def size(self) -> int:
        return self.embeds.shape[0]


@dataclass
class GenerateInputs:
    """A validated Generate request."""

    embeds: torch.Tensor
    mask: torch.Tensor
    max_new_tokens: int
    stop_token_ids: list[int]
    positions: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.embeds.shape[0]


def _decode_embeds(
    msg: pb.ForwardRequest | pb.GenerateRequest | pb.HiddenBackwardRequest,
    info: BackboneInfo,
    max_len: int,
    dtype: torch.dtype,
    limit: str = "Info.max_sequence_length",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """inputs_embeds, attention_mask and position_ids, checked against the model and each other."""
    if not msg.HasField("inputs_embeds"):
        raise WireError("inputs_embeds is missing")
    if not msg.HasField("attention_mask"):
        raise WireError("attention_mask is missing")
    embeds = wire.decode(msg.inputs_embeds, "inputs_embeds", wire.WIRE_DTYPES, ndim=3)
    batch, length, hidden = embeds.shape
    if hidden != info.hidden_size:
        raise WireError(f"inputs_embeds has hidden size {hidden}; this backbone's is {info.hidden_size}")
    if length > max_len:
        raise WireError(f"sequence length {length} is over the limit of {max_len} ({limit})")
    if not bool(torch.isfinite(embeds).all()):
        raise WireError("inputs_embeds contains NaN or Inf")
    embeds = embeds.to(dtype)
    if not bool(torch.isfinite(embeds).all()):  # finite on the wire, past the model dtype's range
        raise WireError(f"inputs_embeds has values beyond the range of the model's dtype {wire.dtype_name(dtype)}")
    mask = wire.decode(msg.attention_mask, "attention_mask", wire.MASK_DTYPES, ndim=2)
    if tuple(mask.shape) != (batch, length):
        raise WireError(f"attention_mask has shape {list(mask.shape)}; "
                        f"inputs_embeds needs [{batch}, {length}]")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise WireError("attention_mask values must be 0 or 1")
    if not bool(mask.any(dim=1).all()):
        raise WireError("attention_mask has a row with no attended position")
    return embeds, mask.long(), _decode_positions(msg, batch, length, info)


def _decode_positions(msg: pb.ForwardRequest | pb.GenerateRequest | pb.HiddenBackwardRequest, batch: int,
                      length: int, info: BackboneInfo) -> torch.Tensor | None:
    if not msg.HasField("position_ids"):
        return None
    positions = wire.decode(msg.position_ids, "position_ids", wire.ID_DTYPES, ndim=3).long()
    if tuple(positions.shape) != (batch, length, info.position_dims):
        raise WireError(f"position_ids has shape {list(positions.shape)}; this backbone needs "
                        f"[{batch}, {length}, {info.position_dims}] (Info.position_dims coordinates per token)")
    if not bool(((positions >= 0) & (positions < info.max_sequence_length)).all()):
        raise WireError(f"position_ids must be in [0, {info.max_sequence_length})")
    return positions


def _decode_labels(msg: pb.ForwardRequest, shape: torch.Size, vocab_size: int) -> torch.Tensor:
    if not msg.HasField("labels"):
        raise WireError("labels is missing")
    labels = wire.decode(msg.labels, "labels", wire.ID_DTYPES, ndim=2).long()
    if labels.shape != shape:
        raise WireError(f"labels has shape {list(labels.shape)}; inputs_embeds needs {list(shape)}")
    valid = (labels == IGNORE_INDEX) | ((labels >= 0) & (labels < vocab_size))
    if not bool(valid.all()):
        bad = int(labels[~valid][0])
        raise WireError(f"labels must be {IGNORE_INDEX} or a token id in [0, {vocab_size}); found {bad}")
    return labels


def _reply_dtype(msg: pb.ForwardRequest | pb.HiddenBackwardRequest) -> str:
    grad_dtype = msg.grad_dtype or msg.inputs_embeds.dtype
    if grad_dtype not in wire.WIRE_DTYPES:
        raise WireError(f"grad_dtype {grad_dtype!r} is not one of {', '.join(wire.WIRE_DTYPES)}")
    return grad_dtype


def check_tokens(msg: pb.ForwardRequest | pb.GenerateRequest | pb.HiddenBackwardRequest, max_tokens: int) -> None:
    """Refuse, before anything is decoded, a request of more sequences x tokens than one pass may
    hold (:class:`anther.backbone.wire.TooLarge`: RESOURCE_EXHAUSTED). A Generate request counts the
    tokens it asks for too."""
    shape = list(msg.inputs_embeds.shape)
    if len(shape) != 3:
        return  # malformed: decoding says how
    new = msg.max_new_tokens if isinstance(msg, pb.GenerateRequest) else 0
    tokens = shape[0] * (shape[1] + new)
    if tokens > max_tokens:
        raise TooLarge(f"the request has {shape[0]} sequences x {shape[1] + new} tokens = {tokens}; this service "
                       f"takes at most {max_tokens} per request (Info.max_request_tokens): send it in parts")


def decode_forward(msg: pb.ForwardRequest, info: BackboneInfo, max_len: int, dtype: torch.dtype,
                   kind: Kind) -> ForwardInputs:
    """Validate a ForwardRequest for ``kind`` ("train", "score", "logits" or "hidden"; the last two
    read no labels)."""
    embeds, mask, positions = _decode_embeds(msg, info, max_len, dtype)
    labels = _decode_labels(msg, mask.shape, info.vocab_size) if kind in ("train", "score") else None
    if kind == "train" and not bool((labels[:, 1:] != IGNORE_INDEX).any()):
        raise WireError("labels has no labelled token after the causal shift (position 0 is never predicted)")
    return ForwardInputs(embeds, mask, labels, _reply_dtype(msg), positions=positions)


def decode_hidden_backward(msg: pb.HiddenBackwardRequest, info: BackboneInfo, max_len: int,
                           dtype: torch.dtype) -> ForwardInputs:
    """Validate a BackwardFromHidden request: grad_hidden must match inputs_embeds and be finite
    in the model's dtype, like the embeddings themselves."""
    embeds, mask, positions = _decode_embeds(msg, info, max_len, dtype)
    if not msg.HasField("grad_hidden"):
        raise WireError("grad_hidden is missing")
    grad = wire.decode(msg.grad_hidden, "grad_hidden", wire.WIRE_DTYPES, ndim=3)
    if grad.shape != embeds.shape:
        raise WireError(f"grad_hidden has shape {list(grad.shape)}; inputs_embeds needs {list(embeds.shape)}")
    if not bool(torch.isfinite(grad.to(dtype)).all()):
        raise WireError(f"grad_hidden contains NaN or Inf (in the model's dtype {wire.dtype_name(dtype)})")
    return ForwardInputs(embeds, mask, None, _reply_dtype(msg), grad.to(dtype), positions)


def decode_generate(msg: pb.GenerateRequest, info: BackboneInfo, max_len: int, dtype: torch.dtype,
                    max_new_tokens: int) -> GenerateInputs:
    """Validate a GenerateRequest; the prompt plus the new tokens must fit ``max_len``."""
    if not 1 <= msg.max_new_tokens <= max_new_tokens:
        raise WireError(f"max_new_tokens is {msg.max_new_tokens}; it must be in [1, {max_new_tokens}]")
    embeds, mask, positions = _decode_embeds(msg, info, max_len - msg.max_new_tokens, dtype,
                                             limit="Info.max_sequence_length minus max_new_tokens")
    return GenerateInputs(embeds, mask, msg.max_new_tokens, list(msg.stop_token_ids), positions)
