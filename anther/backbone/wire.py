"""Tensors on the wire and requests split into chunks, as ``backbone.proto`` specifies.

Server and client share this module so that both sides agree byte for byte on what
a ``Tensor`` message means. Decoding never trusts the sender: every check that keeps
a malformed message from reaching the model raises :class:`WireError`, whose text is
sent back to the client as the INVALID_ARGUMENT detail.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator
from typing import TypeVar

import torch
from google.protobuf.message import Message

from anther.backbone.proto import backbone_pb2 as pb
from anther.core.config import SCALED_WIRE_DTYPES
from anther.core.config import WIRE_DTYPES as CONFIG_WIRE_DTYPES

# Element types the wire knows. "bool" travels as one byte and decodes to uint8, so
# that a byte other than 0 or 1 can be caught instead of becoming an undefined bool.
# Scaled dtypes: one byte an element and a float32 scale a row (proto: Scaled wire dtypes),
# with the largest value each takes, which a row's largest magnitude is scaled to.
SCALED_DTYPES = dict(zip(SCALED_WIRE_DTYPES, (448.0, 57344.0, 127.0), strict=True))
WIRE_DTYPES = CONFIG_WIRE_DTYPES  # embeddings and gradients
MASK_DTYPES = ("int64", "int32", "bool")
ID_DTYPES = ("int64", "int32")
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in (*WIRE_DTYPES, *ID_DTYPES)} | {
    "bool": torch.uint8}

# Room left in every chunk for field tags, lengths and the other scalar fields.
_CHUNK_OVERHEAD = 1024

M = TypeVar("M", bound=Message)


class Undecodable:
    """What the service's deserializer returns for bytes that are not the message they should be,
    so the handler can refuse them like any other malformed request (gRPC would answer INTERNAL and
    log a traceback for each)."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind, self.reason = kind, reason


class WireError(ValueError):
    """A message that does not follow ``backbone.proto``; the text says what is wrong."""


class TooLarge(WireError):
    """A well-formed request that asks for more than the service's limits allow (RESOURCE_EXHAUSTED)."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def encode(t: torch.Tensor, dtype: str | None = None) -> pb.Tensor:
    """``t`` as a Tensor message, converted to ``dtype`` (default: its own) first; a scaled dtype is
    quantised row by row (:func:`quantise`)."""
    name = dtype or dtype_name(t.dtype)
    if name not in DTYPES:
        raise WireError(f"dtype {name!r} cannot travel; use one of {', '.join(DTYPES)}")
    if name in SCALED_DTYPES:
        q, scale = quantise(t, name)
        return pb.Tensor(data=_bytes(q), dtype=name, shape=list(t.shape), scale=_bytes(scale))
    t = t.detach().to("cpu", torch.bool if name == "bool" else DTYPES[name]).contiguous()
    return pb.Tensor(data=_bytes(t), dtype=name, shape=list(t.shape))


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def quantise(t: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` in the scaled dtype ``name``: (one byte an element, a float32 scale a row), the row's
    largest magnitude mapped to the format's largest value (an all-zero row has scale 0)."""
    x = t.detach().to("cpu", torch.float32)
    scale = x.abs().amax(dim=-1) / SCALED_DTYPES[name]
    scaled = x / torch.where(scale > 0, scale, 1.0).unsqueeze(-1)
    q = scaled.round().clamp(-127, 127).to(torch.int8) if name == "int8" else scaled.to(DTYPES[name])
    return q, scale


def dequantise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values of a scaled tensor: each row's elements times its scale."""
    return q.to(torch.float32) * scale.unsqueeze(-1)


def decode(msg: pb.Tensor, name: str, allowed: Collection[str], ndim: int) -> torch.Tensor:
    """The tensor a Tensor message holds, after checking dtype, shape and byte count.

    ``name`` is the field's name, used in error messages; ``allowed`` the dtypes this
    field accepts; ``ndim`` the number of dimensions it must have.
    """
    if msg.dtype not in allowed:
        raise WireError(f"{name} has dtype {msg.dtype!r}; expected one of {', '.join(allowed)}")
    shape = list(msg.shape)
    if len(shape) != ndim:
        raise WireError(f"{name} has shape {shape}; expected {ndim} dimensions")
    if any(d < 1 for d in shape):
        raise WireError(f"{name} has shape {shape}; every dimension must be at least 1")
    dtype = DTYPES[msg.dtype]
    expected = math.prod(shape) * dtype.itemsize
    if len(msg.data) != expected:
        raise WireError(f"{name} holds {len(msg.data)} bytes of data, but shape {shape} of "
                        f"{msg.dtype} needs {expected} (truncated or mislabelled)")
    values = torch.frombuffer(bytearray(msg.data), dtype=dtype).reshape(shape)
    if msg.dtype not in SCALED_DTYPES:
        if msg.scale:
            raise WireError(f"{name} has a scale, but {msg.dtype} is not a scaled dtype")
        return values
    return dequantise(values, _scale(msg, name, shape))


def _scale(msg: pb.Tensor, name: str, shape: list[int]) -> torch.Tensor:
    """The per-row scale of a scaled tensor, checked: one finite float32 >= 0 a row."""
    rows = math.prod(shape[:-1])
    if len(msg.scale) != rows * 4:
        raise WireError(f"{name} ({msg.dtype}) holds {len(msg.scale)} bytes of scale; shape {shape} has {rows} "
                        f"rows, which need {rows * 4} (one float32 each)")
    scale = torch.frombuffer(bytearray(msg.scale), dtype=torch.float32).reshape(shape[:-1])
    if not bool((torch.isfinite(scale) & (scale >= 0)).all()):
        raise WireError(f"{name} ({msg.dtype}) has a scale that is negative, NaN or Inf")
    return scale


def _tensor_fields(msg: Message) -> list[str]:
    return [f.name for f in msg.DESCRIPTOR.fields if f.message_type is pb.Tensor.DESCRIPTOR]


def chunks(msg: M, max_chunk_bytes: int) -> Iterator[M]:
    """``msg`` split into messages of at most ``max_chunk_bytes`` each (proto: Chunking).

    A message that fits is sent whole; otherwise a header (everything but tensor data)
    comes first, then each tensor's data in pieces, one piece per chunk.
    """
    if msg.ByteSize() <= max_chunk_bytes:
        yield msg
        return
    piece = max(1, max_chunk_bytes - _CHUNK_OVERHEAD)
    fields = [f for f in _tensor_fields(msg) if msg.HasField(f)]  # touching an unset one would set it
    header = type(msg)()
    header.CopyFrom(msg)
    for f in fields:
        getattr(header, f).ClearField("data")
    yield header
    for f in fields:
        data = getattr(msg, f).data
        for start in range(0, len(data), piece):
            yield type(msg)(**{f: pb.Tensor(data=data[start:start + piece])})


def assemble(stream: Iterable[M], max_bytes: int | None = None) -> M:
    """The whole message a stream of chunks carries; stops reading past ``max_bytes``."""
    first: M | None = None
    parts: dict[str, list[bytes]] = {}
    total = 0
    for i, chunk in enumerate(stream):
        if isinstance(chunk, Undecodable):
            raise WireError(f"chunk {i} of the request is not a valid {chunk.kind} ({chunk.reason})")
        total += chunk.ByteSize()
        if max_bytes is not None and total > max_bytes:
            raise WireError(f"request is over the limit of {max_bytes} bytes (Info.max_request_bytes)")
        if first is None:
            first, parts = chunk, {f: [] for f in _tensor_fields(chunk)}
        for f, pieces in parts.items():
            pieces.append(getattr(chunk, f).data)
    if first is None:
        raise WireError("empty request: the stream carried no chunks")
    for f, pieces in parts.items():
        if first.HasField(f):
            getattr(first, f).data = b"".join(pieces)
    return first
