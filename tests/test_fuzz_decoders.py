"""Property-based fuzzing of every request decoder of the backbone service (issue 7, bad input).

Whatever a client sends, decoding either yields inputs the model can run (checked below) or
raises :class:`WireError`, which the service turns into INVALID_ARGUMENT; any other exception
would be an INTERNAL error or a crash. Requests are built from values as well as from raw
bytes, so that most of them get past the byte-count check and reach the deeper checks
(finite embeddings, a 0/1 mask with an attended position per row, labels in the vocabulary),
in each dtype the model may compute in.
"""

from __future__ import annotations

import math
from concurrent import futures
from types import SimpleNamespace

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anther.backbone import wire
from anther.backbone.interface import IGNORE_INDEX, BackboneInfo
from anther.backbone.proto import backbone_pb2 as pb
from anther.backbone.service.decode import (
    ForwardInputs,
    GenerateInputs,
    Limits,
    decode_forward,
    decode_generate,
    decode_hidden_backward,
)
from anther.backbone.service.servicer import BackboneService
from anther.backbone.wire import WireError

INFO = BackboneInfo(fingerprint="fuzz", hidden_size=4, vocab_size=16, dtype="float32", max_sequence_length=8)
MAX_NEW_TOKENS = 4
MODEL_DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])
DTYPE_NAMES = st.sampled_from([*wire.DTYPES, "", "float64", "int8", "Float32"]) | st.text(max_size=6)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# values that sit on every boundary a decoder checks: mask 0/1, label -100 / vocab edges,
# floats that overflow half precision (7e4) or even bfloat16 (3e38), NaN and Inf
INT_VALUES = st.sampled_from([0, 1, 2, -1, IGNORE_INDEX, INFO.vocab_size - 1, INFO.vocab_size, 2**31 - 1])
FLOAT_VALUES = st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, 1.0, 7e4, 3e38])
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
FORWARD_KINDS = ["train", "score", "logits", "hidden"]  # what a ForwardRequest may be decoded for


def _often(draw: st.DrawFn) -> bool:
    """True seven times in eight: keeps most requests near-valid so they reach the deep checks."""
    return draw(st.sampled_from([True] * 7 + [False]))


def _shape(draw: st.DrawFn, valid: list[int]) -> list[int]:
    """The field's valid shape for this request most of the time; any shape at all otherwise."""
    junk = st.lists(st.integers(-2, 5) | st.integers(-(2**63), 2**63 - 1), max_size=4)
    near = st.sampled_from([valid, valid[:-1], [*valid, 1], [d + 1 for d in valid]])
    return valid if _often(draw) else draw(near | junk)


@st.composite
def tensors(draw: st.DrawFn, dtypes: tuple[str, ...], valid: list[int],
            ints: st.SearchStrategy = INT_VALUES) -> pb.Tensor | None:
    """A Tensor field, or None (missing): mostly one of the field's ``dtypes`` and its ``valid``
    shape holding real values (``ints`` in an integer dtype, now and then any boundary value),
    otherwise any dtype name, shape and bytes."""
    if not _often(draw):
        return None
    dtype = draw(st.sampled_from(dtypes)) if _often(draw) else draw(DTYPE_NAMES)
    shape = _shape(draw, valid)
    if dtype in wire.DTYPES and all(0 < d <= 16 for d in shape) and len(shape) <= 4 and _often(draw):
        n = math.prod(shape)
        floating = wire.DTYPES[dtype].is_floating_point
        if floating:
            elements = FLOAT_VALUES if _often(draw) else FLOAT_VALUES | NON_FINITE
        else:
            elements = ints if _often(draw) else INT_VALUES
        values = draw(st.lists(elements, min_size=n, max_size=n))
        if dtype == "bool":  # one byte each; anything but 0 or 1 must be refused
            return pb.Tensor(data=bytes(v & 0xFF for v in values), dtype=dtype, shape=shape)
        t = torch.tensor(values, dtype=torch.float64 if floating else torch.int64).reshape(shape)
        return wire.encode(t, dtype)
    return pb.Tensor(data=draw(st.binary(max_size=80)), dtype=dtype, shape=shape)


def _fields(draw: st.DrawFn) -> dict[str, pb.Tensor | None]:
    """inputs_embeds, attention_mask and labels of one request, sharing (batch, length)."""
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, INFO.max_sequence_length + 1))
    return {"inputs_embeds": draw(tensors(wire.WIRE_DTYPES, [b, t, INFO.hidden_size])),
            "attention_mask": draw(tensors(wire.MASK_DTYPES, [b, t], st.sampled_from([0, 1, 1, 1]))),
            "labels": draw(tensors(wire.ID_DTYPES, [b, t], st.sampled_from([IGNORE_INDEX, 0, 5, 15])))}


@st.composite
def forward_requests(draw: st.DrawFn) -> pb.ForwardRequest:
    grad_dtype = draw(st.sampled_from(["", *wire.WIRE_DTYPES])) if _often(draw) else draw(DTYPE_NAMES)
    return pb.ForwardRequest(**_fields(draw), grad_dtype=grad_dtype)


@st.composite
def generate_requests(draw: st.DrawFn) -> pb.GenerateRequest:
    fields = _fields(draw)
    del fields["labels"]
    new = draw(st.integers(1, MAX_NEW_TOKENS) if _often(draw) else st.integers(-(2**31), 2**31 - 1))
    stop = draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3))
    return pb.GenerateRequest(**fields, max_new_tokens=new, stop_token_ids=stop)


@st.composite
def hidden_backward_requests(draw: st.DrawFn) -> pb.HiddenBackwardRequest:
    fields = _fields(draw)
    shape = list(fields["inputs_embeds"].shape) if fields["inputs_embeds"] is not None else [1, 1, INFO.hidden_size]
    grad_dtype = draw(st.sampled_from(["", *wire.WIRE_DTYPES])) if _often(draw) else draw(DTYPE_NAMES)
    return pb.HiddenBackwardRequest(inputs_embeds=fields["inputs_embeds"], attention_mask=fields["attention_mask"],
                                    grad_hidden=draw(tensors(wire.WIRE_DTYPES, shape)), grad_dtype=grad_dtype)


def _check_embeds(embeds: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype, max_len: int) -> None:
    """What the model may assume of any decoded request."""
    assert embeds.dtype == dtype and embeds.dim() == 3 and embeds.shape[2] == INFO.hidden_size
    assert 1 <= embeds.shape[1] <= max_len and embeds.shape[0] >= 1
    assert bool(torch.isfinite(embeds).all()), "non-finite embeddings reached the model"
    assert mask.dtype == torch.int64 and mask.shape == embeds.shape[:2]
    assert bool(((mask == 0) | (mask == 1)).all()) and bool(mask.any(dim=1).all())


def _check_forward(out: ForwardInputs, dtype: torch.dtype, kind: str) -> None:
    _check_embeds(out.embeds, out.mask, dtype, INFO.max_sequence_length)
    assert out.grad_dtype in wire.WIRE_DTYPES
    if kind in ("logits", "hidden"):
        assert out.labels is None, f"{kind} reads no labels"
        return
    labels = out.labels
    assert labels is not None and labels.dtype == torch.int64 and labels.shape == out.mask.shape
    assert bool(((labels == IGNORE_INDEX) | ((labels >= 0) & (labels < INFO.vocab_size))).all())
    if kind == "train":
        assert bool((labels[:, 1:] != IGNORE_INDEX).any())


@FUZZ
@given(req=forward_requests(), kind=st.sampled_from(FORWARD_KINDS), dtype=MODEL_DTYPES)
def test_forward_decoder_validates_or_refuses(req: pb.ForwardRequest, kind: str, dtype: torch.dtype) -> None:
    try:
        out = decode_forward(req, INFO, INFO.max_sequence_length, dtype, kind)
    except WireError:
        return
    _check_forward(out, dtype, kind)


@FUZZ
@given(req=generate_requests(), dtype=MODEL_DTYPES)
def test_generate_decoder_validates_or_refuses(req: pb.GenerateRequest, dtype: torch.dtype) -> None:
    try:
        out = decode_generate(req, INFO, INFO.max_sequence_length, dtype, MAX_NEW_TOKENS)
    except WireError:
        return
    assert isinstance(out, GenerateInputs) and 1 <= out.max_new_tokens <= MAX_NEW_TOKENS
    _check_embeds(out.embeds, out.mask, dtype, INFO.max_sequence_length - out.max_new_tokens)
    assert out.stop_token_ids == list(req.stop_token_ids)


@FUZZ
@given(req=hidden_backward_requests(), dtype=MODEL_DTYPES)
def test_hidden_backward_decoder_validates_or_refuses(req: pb.HiddenBackwardRequest, dtype: torch.dtype) -> None:
    try:
        out = decode_hidden_backward(req, INFO, INFO.max_sequence_length, dtype)
    except WireError:
        return
    _check_embeds(out.embeds, out.mask, dtype, INFO.max_sequence_length)
    assert out.labels is None and out.grad_dtype in wire.WIRE_DTYPES
    grad = out.grad_hidden
    assert grad is not None and grad.dtype == dtype and grad.shape == out.embeds.shape
    assert bool(torch.isfinite(grad).all()), "a non-finite grad_hidden reached the model"


@st.composite
def chunk_streams(draw: st.DrawFn) -> list[pb.ForwardRequest]:
    """A stream as a client might split a request (header, then data pieces), or any mix of
    messages: headers without data, data without a header, several headers."""
    parts = [draw(forward_requests()) for _ in range(draw(st.integers(0, 3)))]
    if parts and _often(draw):
        parts = list(wire.chunks(parts[0], draw(st.integers(1, 200))))
    return parts


class _Aborted(Exception):
    """What grpc's ``context.abort`` raises to end the call."""


class _Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise _Aborted(details)


class _InlineBatcher:
    """Runs a call at once, where the real batcher runs it on its own thread."""

    @staticmethod
    def call(fn):
        done = futures.Future()
        try:
            done.set_result(fn())
        except Exception as e:  # noqa: BLE001 - the future carries it, as the batcher's does
            done.set_exception(e)
        return done


@FUZZ
@given(stream=chunk_streams(), limit=st.sampled_from([None, 64, 4096]),
       kind=st.sampled_from(FORWARD_KINDS), dtype=MODEL_DTYPES)
def test_service_answers_any_stream_with_inputs_or_invalid_argument(stream, limit, kind, dtype) -> None:
    """The service's own read path: reassembly and decoding, a WireError -> INVALID_ARGUMENT, a
    request over the token limit (asked for in its header, before any data) -> RESOURCE_EXHAUSTED."""
    service = SimpleNamespace(limits=Limits(max_request_bytes=limit), batcher=_InlineBatcher())
    context = _Context()
    try:
        out = BackboneService._read(service, iter(stream), context,
                                    lambda m: decode_forward(m, INFO, INFO.max_sequence_length, dtype, kind))
    except _Aborted as e:
        over = context.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Info.max_request_tokens" in str(e)
        assert context.code == grpc.StatusCode.INVALID_ARGUMENT or over, (context.code, str(e))
        return
    _check_forward(out, dtype, kind)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_embeddings_that_overflow_the_model_dtype_are_refused(dtype: torch.dtype) -> None:
    """float32 values finite on the wire but past the model's range would reach it as Inf."""
    big = torch.finfo(dtype).max * 1.01 if dtype == torch.float16 else 3.4e38
    embeds = torch.full((1, 2, INFO.hidden_size), big)
    req = pb.ForwardRequest(inputs_embeds=wire.encode(embeds), attention_mask=wire.encode(torch.ones(1, 2).long()),
                            labels=wire.encode(torch.tensor([[1, 2]])))
    if bool(torch.isfinite(embeds.to(dtype)).all()):
        pytest.skip(f"{big} is finite in {dtype}")
    with pytest.raises(WireError, match="inputs_embeds"):
        decode_forward(req, INFO, INFO.max_sequence_length, dtype, "train")
