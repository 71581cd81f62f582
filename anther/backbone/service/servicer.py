"""The servicer: the RPCs of ``proto/backbone.proto`` over one in-process backbone.

Every request is assembled and validated (:mod:`.decode`) in its own gRPC thread first, so a
malformed one is refused (INVALID_ARGUMENT) before it can touch the model or anyone else's
batch; valid requests go to the :class:`anther.backbone.service.batching.DynamicBatcher`.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import torch
from google.protobuf.message import Message

from anther.backbone import wire
from anther.backbone.in_process import InProcessBackbone
from anther.backbone.proto import backbone_pb2 as pb
from anther.backbone.proto import backbone_pb2_grpc as pb_grpc
from anther.backbone.service.admission import Admission, Busy, Stalled
from anther.backbone.service.batching import BatchPolicy, DynamicBatcher
from anther.backbone.service.decode import (
    ForwardInputs,
    GenerateInputs,
    Kind,
    Limits,
    check_tokens,
    decode_forward,
    decode_generate,
    decode_hidden_backward,
)
from anther.backbone.wire import TooLarge, WireError


def peer_host(context: grpc.ServicerContext) -> str:
    """The caller's host (``ipv4:127.0.0.1:5123`` -> ``127.0.0.1``): who a call is from when the
    service takes no tokens."""
    return context.peer().rpartition(":")[0].partition(":")[2] or context.peer()


def _admitted(rpc: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """A streaming RPC run under :class:`Admission`: it reads its request through the call's ticket
    (read timeout, bytes in flight) and is refused, UNAVAILABLE or DEADLINE_EXCEEDED, at a bound."""

    @functools.wraps(rpc)
    def handler(self: BackboneService, request_iterator: Iterator[Any], context: grpc.ServicerContext):
        try:
            with self.admission.call(self.caller_of(context)) as ticket:
                yield from rpc(self, ticket.read(request_iterator), context)
        except Busy as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"busy: {e}")
        except Stalled as e:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))

    return handler


class BackboneService(pb_grpc.BackboneServicer):
    """The RPCs of backbone.proto over one InProcessBackbone.

    ``caller_of`` names who a call is from, for the per-client bound: the peer's host, or the
    client name of its bearer token when :func:`anther.backbone.service.server.start` serves with
    tokens.
    """

    def __init__(
        self,
        backbone: InProcessBackbone | Callable[[], InProcessBackbone],
        policy: BatchPolicy = BatchPolicy(),
        limits: Limits = Limits(),
    ) -> None:
        """``backbone``: the model, or a function that loads it (then it is loaded on the batcher's
        thread, which keeps all of the process's torch work on one thread)."""
        self.batcher = DynamicBatcher(backbone, policy, limits.max_request_tokens)
        self.backbone = self.batcher.backbone
        self.policy = policy
        model_max = self.backbone.info.max_sequence_length
        self.max_len = min(limits.max_sequence_length or model_max, model_max)
        self.limits = limits
        self.dtype = next(self.backbone.parameters()).dtype
        self.callers: Counter[str] = Counter()  # admitted calls per client name, when tokens are on
        self.admission = Admission(limits.max_calls_per_client, limits.max_inflight_bytes, limits.read_timeout_s)
        self.caller_of: Callable[[grpc.ServicerContext], str] = peer_host

    def close(self) -> None:
        self.batcher.close()

    def _read(self, stream: Iterator, context: grpc.ServicerContext, decode: Callable[[Any], Any]) -> Any:
        """Assemble and validate a request; a malformed one ends the call with INVALID_ARGUMENT, one
        over the token limit with RESOURCE_EXHAUSTED."""
        try:
            msg = wire.assemble(stream, self.limits.max_request_bytes)
            check_tokens(msg, self.limits.max_request_tokens)
            return self.batcher.call(lambda: decode(msg)).result()
        except TooLarge as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except WireError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    def _run(self, kind: Kind, item: ForwardInputs | GenerateInputs, context: grpc.ServicerContext) -> Any:
        """The request's result; INTERNAL if the backbone failed."""
        try:
            return self.batcher.submit(kind, item).result()
        except Exception as e:  # noqa: BLE001 - report it to the caller; never crash the server
            context.abort(grpc.StatusCode.INTERNAL, f"backbone failed: {type(e).__name__}: {e}")

    def _forward(self, kind: Kind, stream: Iterator,
                 context: grpc.ServicerContext) -> tuple[ForwardInputs, Any]:
        item = self._read(stream, context,
                          lambda m: decode_forward(m, self.backbone.info, self.max_len, self.dtype, kind))
        return item, self._run(kind, item, context)

    def _answer(self, kind: Kind, result: Any, build: Callable[[Any], Message],
                context: grpc.ServicerContext) -> Iterator[Any]:
        """The reply ``build`` makes of ``result``, in chunks; INVALID_ARGUMENT instead if what the
        backbone computed for this request is not finite (finite inputs can still overflow the
        model). The check and the encoding are one call on the batcher's thread, so a reply waits
        for that thread once."""
        reply = self.batcher.call(lambda: build(result) if kind == "generate" or _finite(result) else None).result()
        if reply is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the backbone's {kind} output for this request is "
                          "not finite (its inputs_embeds overflow the model); nothing is returned")
        return wire.chunks(reply, self.limits.max_chunk_bytes)

    @_admitted
    def TrainStep(self, request_iterator, context):
        item, result = self._forward("train", request_iterator, context)
        yield from self._answer("train", result, lambda r: pb.TrainStepReply(
            loss=r[0], grad=wire.encode(r[1], item.grad_dtype)), context)

    @_admitted
    def Score(self, request_iterator, context):
        _, scores = self._forward("score", request_iterator, context)
        yield from self._answer("score", scores, lambda r: pb.ScoreReply(scores=wire.encode(r, "float32")), context)

    @_admitted
    def NextTokenLogits(self, request_iterator, context):
        _, logits = self._forward("logits", request_iterator, context)
        yield from self._answer("logits", logits, lambda r: pb.LogitsReply(logits=wire.encode(r, "float32")),
                                context)

    @_admitted
    def HiddenStates(self, request_iterator, context):
        item, hidden = self._forward("hidden", request_iterator, context)
        yield from self._answer("hidden", hidden, lambda r: pb.HiddenStatesReply(
            hidden_states=wire.encode(r, item.grad_dtype)), context)

    @_admitted
    def BackwardFromHidden(self, request_iterator, context):
        item = self._read(request_iterator, context, lambda m: decode_hidden_backward(
            m, self.backbone.info, self.max_len, self.dtype))
        grad = self._run("backward", item, context)
        yield from self._answer("backward", grad, lambda r: pb.GradReply(grad=wire.encode(r, item.grad_dtype)),
                                context)

    @_admitted
    def Generate(self, request_iterator, context):
        item = self._read(request_iterator, context, lambda m: decode_generate(
            m, self.backbone.info, self.max_len, self.dtype, self.limits.max_new_tokens))
        ids = self._run("generate", item, context)
        yield from self._answer("generate", ids, lambda r: pb.GenerateReply(token_ids=wire.encode(r, "int64")),
                                context)

    def Info(self, request, context):
        info = self.backbone.info
        return pb.InfoReply(
            fingerprint=info.fingerprint, hidden_size=info.hidden_size, vocab_size=info.vocab_size,
            model_dtype=info.dtype, wire_dtypes=list(wire.WIRE_DTYPES), max_sequence_length=self.max_len,
            max_chunk_bytes=self.limits.max_chunk_bytes, max_request_bytes=self.limits.max_request_bytes,
            max_new_tokens=self.limits.max_new_tokens, batching=self.policy.enabled,
            batch_window_ms=self.policy.window_ms, max_batch_sequences=self.policy.max_batch,
            position_dims=info.position_dims, max_request_tokens=self.limits.max_request_tokens,
            max_calls_per_client=self.limits.max_calls_per_client, max_inflight_bytes=self.limits.max_inflight_bytes,
            read_timeout_s=self.limits.read_timeout_s,
        )


def _finite(result: Any) -> bool:
    """Whether every number of a result (a tensor, a float, or a tuple of them) is finite."""
    if isinstance(result, tuple):
        return all(_finite(part) for part in result)
    if isinstance(result, torch.Tensor):
        return bool(torch.isfinite(result).all())
    return math.isfinite(result)
