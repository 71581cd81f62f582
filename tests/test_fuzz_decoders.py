"""Property tests of every request decoder of the backbone service, and of the service's read path.

Each case starts from a valid request, as a client builds it (random shapes, wire dtypes, values,
padding and positions), and then applies up to two mutations. Every mutation either must make
the decoder refuse the request (:class:`WireError`, which the service answers with
INVALID_ARGUMENT) or must not matter (labels that a logits request does not read), so every case
has a known verdict: a case without a refusing mutation decodes to exactly the tensors it was
built from, in the model's dtype; any other is refused. Each fuzzer checks its own reach too: at
least a quarter of its cases decode and at least a quarter are refused, so a decoder that refuses
everything, or takes everything, fails the suite (the last tests show both).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
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
MODEL_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
KINDS = ["train", "score", "logits", "hidden", "backward", "generate"]  # "backward": BackwardFromHidden
FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True, report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow])
REACH = 0.25  # the least share of a fuzzer's cases that must decode, and that must be refused


def reads(kind: str, name: str) -> bool:
    """Whether a request of ``kind`` reads the field or setting ``name``."""
    return {"labels": kind in ("train", "score"), "grad_hidden": kind == "backward",
            "grad_dtype": kind != "generate", "max_new_tokens": kind == "generate"}.get(name, True)


@dataclass(frozen=True)
class Mutation:
    """One way to break a valid request; ``refuses(case)`` says whether the decoder must refuse it."""

    name: str
    refuses: Callable[[Case], bool] = lambda case: True
    applies: Callable[[str], bool] = lambda kind: True


def _on(field_name: str) -> list[Mutation]:
    """Mutations of one field's message: gone, an unknown dtype, a byte missing from its data."""
    return [Mutation(f"{how}:{field_name}", lambda case, f=field_name: reads(case.kind, f),
                     lambda kind, f=field_name: f != "grad_hidden" or kind == "backward")
            for how in ("missing", "dtype", "torn")]


MUTATIONS = [
    Mutation("too_long"),
    Mutation("wrong_hidden_size"),
    Mutation("mask_shape"),
    Mutation("labels_shape", lambda case: reads(case.kind, "labels"), lambda kind: kind != "generate"),
    Mutation("non_finite_embedding"),
    Mutation("beyond_model_dtype", lambda case: torch.float16 in (case.model_dtype, wire.DTYPES[case.wire_dtype])),
    Mutation("mask_not_binary"),
    Mutation("row_unattended"),
    Mutation("label_out_of_vocab", lambda case: reads(case.kind, "labels"), lambda kind: kind != "generate"),
    Mutation("nothing_to_predict", lambda case: case.kind == "train", lambda kind: kind != "generate"),
    Mutation("position_out_of_range"),
    Mutation("non_finite_grad_hidden", applies=lambda kind: kind == "backward"),
    Mutation("grad_hidden_shape", applies=lambda kind: kind == "backward"),
    Mutation("bad_grad_dtype", applies=lambda kind: kind != "generate"),
    Mutation("max_new_tokens", applies=lambda kind: kind == "generate"),
    *_on("inputs_embeds"), *_on("attention_mask"), *_on("labels"), *_on("grad_hidden"),
]


@dataclass
class Case:
    """A request and what it was built from: the tensors as the client held them, and the mutations."""

    kind: str
    model_dtype: torch.dtype
    wire_dtype: str
    tensors: dict[str, torch.Tensor]
    mutations: list[Mutation]
    request: pb.ForwardRequest | pb.GenerateRequest | pb.HiddenBackwardRequest = field(default=None)
    max_new_tokens: int = 1

    @property
    def broken(self) -> list[str]:
        """The mutations that must make the decoder refuse this case."""
        return [m.name for m in self.mutations if m.refuses(self)]

    def has(self, name: str) -> bool:
        return any(m.name == name for m in self.mutations)

    def check(self, out: ForwardInputs | GenerateInputs) -> None:
        """``out`` holds exactly what the client sent, in the model's dtype."""
        sent = self.tensors
        assert _same(out.embeds, _over_the_wire(sent["inputs_embeds"], self.wire_dtype).to(self.model_dtype))
        assert _same(out.mask, sent["attention_mask"].long())
        positions = sent.get("position_ids")
        assert _same(out.positions, positions)
        if isinstance(out, GenerateInputs):
            assert out.max_new_tokens == self.max_new_tokens
            return
        assert out.grad_dtype == (self.request.grad_dtype or self.wire_dtype)
        assert _same(out.labels, sent["labels"] if reads(self.kind, "labels") else None)
        if self.kind == "backward":
            grad = _over_the_wire(sent["grad_hidden"], self.wire_dtype).to(self.model_dtype)
            assert _same(out.grad_hidden, grad)


def _over_the_wire(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """``t`` as the wire carries it in ``dtype``: cast, or, for a scaled dtype, quantised per row and
    back (its error is held to each format's bound in tests/test_wire_compression.py)."""
    if dtype in wire.SCALED_DTYPES:
        return wire.dequantise(*wire.quantise(t, dtype))
    return t.to(wire.DTYPES[dtype])


def _same(decoded: torch.Tensor | None, sent: torch.Tensor | None) -> bool:
    """Both absent, or equal in dtype, shape and value."""
    if decoded is None or sent is None:
        return decoded is sent
    return decoded.dtype == sent.dtype and torch.equal(decoded, sent)


def _limit(kind: str, new: int) -> int:
    return INFO.max_sequence_length - (new if kind == "generate" else 0)


@st.composite
def cases(draw: st.DrawFn, kind: str) -> Case:
    """A valid request of ``kind``, then none, one or two mutations of it (none half the time). The
    mutations of one case are applied in an order in which none undoes another."""
    usable = [m for m in MUTATIONS if m.applies(kind)]
    count = draw(st.sampled_from([0, 0, 0, 1, 1, 2]))
    picked = draw(st.lists(st.sampled_from(usable), min_size=count, max_size=count, unique_by=lambda m: m.name))
    case = Case(kind, draw(st.sampled_from(MODEL_DTYPES)), draw(st.sampled_from(wire.WIRE_DTYPES)), {}, picked,
                max_new_tokens=draw(st.integers(1, MAX_NEW_TOKENS)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(2, _limit(kind, case.max_new_tokens)))
    if case.has("too_long"):
        length = _limit(kind, case.max_new_tokens) + draw(st.integers(1, 2))
    hidden = INFO.hidden_size + case.has("wrong_hidden_size")
    case.tensors = _valid_tensors(gen, batch, length, hidden, with_positions=draw(st.booleans()))
    _mutate_values(case, gen)
    case.request = _encode(case, mask_dtype=draw(st.sampled_from(wire.MASK_DTYPES)),
                           id_dtype=draw(st.sampled_from(wire.ID_DTYPES)), grad_dtype=draw(st.sampled_from(
                               ["", *wire.WIRE_DTYPES])))
    return case


def _valid_tensors(gen: torch.Generator, batch: int, length: int, hidden: int,
                   with_positions: bool) -> dict[str, torch.Tensor]:
    """What a client sends: embeddings, a padding mask with something attended in every row, labels
    with a token to predict after the causal shift, and (now and then) its own positions."""
    mask = (torch.rand(batch, length, generator=gen) < 0.8).long()
    mask[torch.arange(batch), torch.randint(length, (batch,), generator=gen)] = 1
    labels = torch.randint(INFO.vocab_size, (batch, length), generator=gen)
    labels[torch.rand(batch, length, generator=gen) < 0.3] = IGNORE_INDEX
    labels[0, -1] = int(torch.randint(INFO.vocab_size, (), generator=gen))
    tensors = {"inputs_embeds": torch.randn(batch, length, hidden, generator=gen) * 4, "attention_mask": mask,
               "labels": labels, "grad_hidden": torch.randn(batch, length, hidden, generator=gen)}
    if with_positions:
        tensors["position_ids"] = (torch.arange(length).expand(batch, length) * mask).unsqueeze(-1).long()
    return tensors


def _mutate_values(case: Case, gen: torch.Generator) -> None:
    """The mutations of values and shapes, on the tensors before they are encoded."""
    t = case.tensors

    def anywhere(x: torch.Tensor) -> tuple[int, ...]:
        return tuple(int(torch.randint(d, (), generator=gen)) for d in x.shape)

    def one_of(*values: float) -> float:
        return values[int(torch.randint(len(values), (), generator=gen))]

    if case.has("mask_shape"):
        t["attention_mask"] = torch.cat([t["attention_mask"], t["attention_mask"][:, :1]], dim=1)
    if case.has("labels_shape"):
        t["labels"] = t["labels"][:, :-1]
    if case.has("grad_hidden_shape"):
        t["grad_hidden"] = t["grad_hidden"][:, :-1]
    if case.has("beyond_model_dtype"):  # before the non-finite one, which must not be overwritten
        t["inputs_embeds"][anywhere(t["inputs_embeds"])] = 7e4  # float16's largest is 65504
    if case.has("non_finite_embedding"):
        t["inputs_embeds"][anywhere(t["inputs_embeds"])] = one_of(float("nan"), float("inf"), float("-inf"))
    if case.has("non_finite_grad_hidden"):
        t["grad_hidden"][anywhere(t["grad_hidden"])] = float("nan")
    if case.has("mask_not_binary"):
        t["attention_mask"][anywhere(t["attention_mask"])] = 2
    if case.has("row_unattended"):
        t["attention_mask"][anywhere(t["attention_mask"])[0]] = 0
    if case.has("nothing_to_predict"):
        t["labels"][:, 1:] = IGNORE_INDEX
    if case.has("label_out_of_vocab"):
        t["labels"][anywhere(t["labels"])] = INFO.vocab_size
    if case.has("position_out_of_range"):
        t["position_ids"] = torch.full((*t["attention_mask"].shape, 1), INFO.max_sequence_length)
    if case.has("max_new_tokens"):
        case.max_new_tokens = int(one_of(0, MAX_NEW_TOKENS + 1))


def _tensor(x: torch.Tensor, dtype: str) -> pb.Tensor:
    """``x`` as the client's encoder sends it; a mask's bytes as they are (a 2 stays a 2 in a bool mask,
    where the encoder would have made it 1)."""
    if dtype != "bool":
        return wire.encode(x, dtype)
    return pb.Tensor(data=x.to(torch.uint8).numpy().tobytes(), dtype="bool", shape=list(x.shape))


def _encode(case: Case, mask_dtype: str, id_dtype: str, grad_dtype: str) -> pb.Message:
    """The request message, with the mutations of the message itself (a field gone, a dtype no
    decoder knows, a byte missing from a field's data) applied."""
    t = case.tensors
    fields = {"inputs_embeds": _tensor(t["inputs_embeds"], case.wire_dtype),
              "attention_mask": _tensor(t["attention_mask"], mask_dtype)}
    if "position_ids" in t:
        fields["position_ids"] = _tensor(t["position_ids"], id_dtype)
    if case.kind == "generate":
        msg = pb.GenerateRequest(**fields, max_new_tokens=case.max_new_tokens, stop_token_ids=[1, 2])
    elif case.kind == "backward":
        msg = pb.HiddenBackwardRequest(**fields, grad_hidden=_tensor(t["grad_hidden"], case.wire_dtype),
                                       grad_dtype=grad_dtype)
    else:
        msg = pb.ForwardRequest(**fields, labels=_tensor(t["labels"], id_dtype), grad_dtype=grad_dtype)
    if case.has("bad_grad_dtype"):
        msg.grad_dtype = "float64"
    for m in case.mutations:
        how, _, name = m.name.partition(":")
        if name and name in {f.name for f in msg.DESCRIPTOR.fields}:
            if how == "missing":
                msg.ClearField(name)
            elif how == "dtype":
                getattr(msg, name).dtype = "float64"
            elif how == "torn":
                getattr(msg, name).data = getattr(msg, name).data[:-1]
    return msg


def decoder(kind: str) -> Callable[[Case], ForwardInputs | GenerateInputs]:
    """The service's decoder for requests of ``kind``."""
    if kind == "generate":
        return lambda case: decode_generate(case.request, INFO, INFO.max_sequence_length, case.model_dtype,
                                            MAX_NEW_TOKENS)
    if kind == "backward":
        return lambda case: decode_hidden_backward(case.request, INFO, INFO.max_sequence_length, case.model_dtype)
    return lambda case: decode_forward(case.request, INFO, INFO.max_sequence_length, case.model_dtype, kind)


def fuzz(kind: str, decode: Callable[[Case], ForwardInputs | GenerateInputs]) -> float:
    """Run ``decode`` on the cases of ``kind``; each must decode or be refused as its mutations say.
    Returns the share that decoded, after checking both shares reach :data:`REACH`."""
    decoded: list[bool] = []

    @FUZZ
    @given(case=cases(kind))
    def check(case: Case) -> None:
        try:
            out = decode(case)
        except WireError as e:
            assert case.broken, f"a valid {kind} request was refused: {e}"
            decoded.append(False)
            return
        assert not case.broken, f"a {kind} request was decoded despite {case.broken}"
        case.check(out)
        decoded.append(True)

    check()
    share = sum(decoded) / len(decoded)
    assert REACH <= share <= 1 - REACH, f"{share:.0%} of {len(decoded)} {kind} cases decoded: the fuzzer misses"
    return share


@pytest.mark.parametrize("kind", KINDS)
def test_the_decoder_takes_exactly_the_valid_requests(kind: str) -> None:
    fuzz(kind, decoder(kind))


def _refuse_everything(case: Case) -> ForwardInputs:
    raise WireError("no")


def _take_everything(case: Case) -> ForwardInputs:
    t = case.tensors
    return ForwardInputs(t["inputs_embeds"].to(case.model_dtype), t["attention_mask"].long(), t["labels"])


@pytest.mark.parametrize("broken_decoder", [_refuse_everything, _take_everything])
def test_a_decoder_that_refuses_or_takes_everything_fails_the_fuzzer(broken_decoder) -> None:
    with pytest.raises(AssertionError):
        fuzz("train", broken_decoder)


# ---------------------------------------------------------------- one tensor


@st.composite
def tensor_cases(draw: st.DrawFn) -> tuple[pb.Tensor, torch.Tensor | None, tuple[str, ...], int]:
    """A valid Tensor message of one of the wire's dtype families, mutated or not: (message, the
    tensor it must decode to or None if it must be refused, allowed dtypes, dimensions)."""
    allowed = draw(st.sampled_from([wire.WIRE_DTYPES, wire.MASK_DTYPES, wire.ID_DTYPES]))
    dtype = draw(st.sampled_from(allowed))
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    x = (torch.rand(shape) < 0.5).to(torch.uint8) if dtype == "bool" else torch.randint(-9, 9, shape)
    msg = wire.encode(x, dtype)
    want: torch.Tensor | None = _over_the_wire(x, dtype)
    how = draw(st.sampled_from(["none", "none", "dtype", "ndim", "zero", "short", "long", "scale"]))
    if how == "dtype":
        msg.dtype = draw(st.sampled_from([d for d in [*wire.DTYPES, "float64", "", "Float32"] if d not in allowed]))
    elif how == "ndim":
        msg.shape.append(1)
    elif how == "zero":
        msg.shape[0] = 0
    elif how in ("short", "long"):
        msg.data = msg.data[:-1] if how == "short" else msg.data + b"\0"
    elif how == "scale":  # a scaled dtype's scale a byte short; a scale on any other dtype
        msg.scale = msg.scale[:-1] if dtype in wire.SCALED_DTYPES else b"\0" * 4
    return msg, (want if how == "none" else None), allowed, len(shape)


@FUZZ
@given(case=tensor_cases())
def test_the_tensor_decoder_takes_exactly_the_valid_tensors(case) -> None:
    msg, want, allowed, ndim = case
    if want is None:
        with pytest.raises(WireError):
            wire.decode(msg, "t", allowed, ndim)
    else:
        assert torch.equal(wire.decode(msg, "t", allowed, ndim), want)


# ---------------------------------------------------------------- the service's read path


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
@given(case=cases("train"), chunk=st.integers(64, 4096), loss=st.sampled_from(["none", "none", "header", "piece"]),
       limit=st.sampled_from([None, None, 256]))
def test_the_service_reads_any_stream_into_its_request_or_invalid_argument(case: Case, chunk: int, loss: str,
                                                                            limit: int | None) -> None:
    """Reassembly and decoding as the service runs them: a valid request split into chunks reads
    back whole; a stream that lost its header or a piece of the embeddings, a request over the
    byte limit or a mutated one is answered INVALID_ARGUMENT, never anything else."""
    stream = list(wire.chunks(case.request, chunk))
    embeds_pieces = [i for i, p in enumerate(stream[1:], 1) if p.HasField("inputs_embeds")]
    lost = (loss == "header") or (loss == "piece" and bool(embeds_pieces))
    if loss == "header":
        stream = stream[1:]
    elif lost:
        del stream[embeds_pieces[0]]
    over = limit is not None and sum(p.ByteSize() for p in stream) > limit  # as the service counts
    service = SimpleNamespace(limits=Limits(max_request_bytes=limit), batcher=_InlineBatcher())
    context = _Context()
    try:
        out = BackboneService._read(service, iter(stream), context,
                                    lambda m: decode_forward(m, INFO, INFO.max_sequence_length, case.model_dtype,
                                                             "train"))
    except _Aborted as e:
        assert context.code == grpc.StatusCode.INVALID_ARGUMENT, (context.code, str(e))
        assert lost or over or case.broken, f"a valid stream was refused: {e}"
        return
    assert not (lost or over or case.broken), f"read despite {lost=}, {over=}, {case.broken}"
    case.check(out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_embeddings_that_overflow_the_model_dtype_are_refused(dtype: torch.dtype) -> None:
    """float32 values finite on the wire but past the model's range would reach it as Inf."""
    big = torch.finfo(dtype).max * 1.01 if dtype == torch.float16 else 3.4e38
    embeds = torch.full((1, 2, INFO.hidden_size), big)
    req = pb.ForwardRequest(inputs_embeds=wire.encode(embeds), attention_mask=wire.encode(torch.ones(1, 2).long()),
                            labels=wire.encode(torch.tensor([[1, 2]])))
    assert not bool(torch.isfinite(embeds.to(dtype)).all()), f"{big} is finite in {dtype}"
    with pytest.raises(WireError, match="inputs_embeds"):
        decode_forward(req, INFO, INFO.max_sequence_length, dtype, "train")
