"""The backbone gRPC service: one frozen LLM serving many clients' forward and backward passes.

A :class:`BackboneService` holds a :class:`LocalBackbone` and answers the RPCs of
``proto/backbone.proto``. Every request is decoded and validated in its own gRPC
thread first, so a malformed one is refused (INVALID_ARGUMENT) before it can touch
the model or anyone else's batch. Valid requests go to a :class:`DynamicBatcher`: one
thread owns the model and runs the requests that arrive within a short window as one
right-padded batch. Each TrainStep's loss is the mean over its own labelled tokens, and
the batched backward runs on the *sum* of those per-request losses; since a request's
loss depends only on its own rows, each request gets exactly the gradient it would
have got alone.

Security: TLS (optionally mutual) and per-client bearer tokens, checked by a server
interceptor before any handler runs.

Run it with ``anther backbone serve --model DIR`` or in-process with :func:`serve` /
:func:`start`; a run with ``backbone.mode=service`` starts it for itself.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import grpc
import torch
import torch.nn.functional as F

from anther.backbone import wire
from anther.backbone.in_process import (
    IGNORE_INDEX,
    BackboneInfo,
    LocalBackbone,
    greedy_decode,
    token_log_likelihoods,
)
from anther.backbone.proto import backbone_pb2 as pb
from anther.backbone.proto import backbone_pb2_grpc as pb_grpc
from anther.backbone.wire import WireError

log = logging.getLogger(__name__)

MiB = 1 << 20
# gRPC's per-message receive limit is the chunk limit plus this, for protobuf framing.
MESSAGE_SLACK_BYTES = 64 * 1024

# what a queued request asks for; "hidden" and "backward" are the two halves of a private-labels step
Kind = Literal["train", "score", "logits", "hidden", "backward", "generate"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (reported by Info; see backbone.proto)."""

    max_sequence_length: int | None = None  # None: the model's max_position_embeddings
    max_chunk_bytes: int = 4 * MiB
    max_request_bytes: int = 256 * MiB
    max_new_tokens: int = 256


@dataclass(frozen=True)
class BatchPolicy:
    """Dynamic batching: wait up to ``window_ms`` for up to ``max_batch`` sequences."""

    enabled: bool = True
    window_ms: float = 5.0
    max_batch: int = 32


@dataclass(frozen=True)
class ServerTls:
    """PEM files for TLS; with ``client_ca`` set, clients must present a certificate it signed."""

    cert_chain: Path
    private_key: Path
    client_ca: Path | None = None

    @classmethod
    def from_dir(cls, folder: str | Path, mutual: bool = False) -> ServerTls:
        """The server's files in a credentials folder made by ``anther certs``; ``mutual``
        also requires every client to present a certificate signed by its ``ca.pem``."""
        folder = Path(folder)
        need = ["server.pem", "server.key", *(["ca.pem"] if mutual else [])]
        missing = [n for n in need if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"TLS folder {folder} has no {', '.join(missing)} "
                                    f"(make one with: anther certs --out {folder})")
        return cls(folder / "server.pem", folder / "server.key", folder / "ca.pem" if mutual else None)


# ---------------------------------------------------------------- request decoding


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


def _decode_embeds(msg: pb.ForwardRequest | pb.GenerateRequest | pb.HiddenBackwardRequest, info: BackboneInfo, max_len: int,
                   dtype: torch.dtype, limit: str = "Info.max_sequence_length",
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


# ---------------------------------------------------------------- batched computation


def _right_pad(tensors: Sequence[torch.Tensor], value: float) -> torch.Tensor:
    """Concatenate along the batch dimension, right-padding dimension 1 to a common length."""
    length = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (0, 0) * (t.dim() - 2) + (0, length - t.shape[1]), value=value)
                      for t in tensors])


def _stack(items: Sequence[ForwardInputs]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[slice]]:
    """Padded embeddings, mask and positions of all requests, and the rows each request owns. A
    request without positions has 0, 1, 2, ... written out where others have theirs."""
    embeds = _right_pad([i.embeds for i in items], 0.0)
    mask = _right_pad([i.mask for i in items], 0)
    bounds = itertools.accumulate((i.size for i in items), initial=0)
    given = [i.positions for i in items if i.positions is not None]
    positions = None
    if given:
        dims = given[0].shape[-1]
        positions = _right_pad([i.positions if i.positions is not None else
                                torch.arange(i.mask.shape[1]).view(1, -1, 1).expand(i.size, -1, dims)
                                for i in items], 0)
    return embeds, mask, positions, [slice(a, b) for a, b in itertools.pairwise(bounds)]


def run_train_steps(backbone: LocalBackbone,
                    items: Sequence[ForwardInputs]) -> list[tuple[float, torch.Tensor]]:
    """One forward and backward for all requests; each gets its own loss and gradient. All of it
    runs on the backbone's device: the logits (sequences x tokens x vocabulary) never leave it,
    only the losses and the input gradient do."""
    embeds, mask, positions, rows = _stack(items)
    labels = _right_pad([i.labels for i in items], IGNORE_INDEX).to(backbone.device)
    x = embeds.to(backbone.device).requires_grad_(True)
    with torch.enable_grad():
        log_likelihood, counted = token_log_likelihoods(backbone.logits_on_device(x, mask, positions), labels)
        losses = torch.stack([-log_likelihood[r].sum() / counted[r].sum() for r in rows])
        (grad,) = torch.autograd.grad(losses.sum(), x)
    grad = grad.to(embeds.device)
    return [(loss, grad[r, :i.embeds.shape[1]]) for loss, r, i in zip(losses.tolist(), rows, items)]


def run_hidden_states(backbone: LocalBackbone, items: Sequence[ForwardInputs]) -> list[torch.Tensor]:
    """The decoder's output for each request (its own rows and length)."""
    embeds, mask, positions, rows = _stack(items)
    with torch.no_grad():
        hidden = backbone.hidden(embeds, mask, positions)
    return [hidden[r, :i.embeds.shape[1]] for r, i in zip(rows, items)]


def run_backward_from_hidden(backbone: LocalBackbone, items: Sequence[ForwardInputs]) -> list[torch.Tensor]:
    """One backward pass for all requests. The padding's gradient is zero and a row depends only on
    itself, so each request gets exactly the gradient it would have got alone."""
    embeds, mask, positions, rows = _stack(items)
    grad_hidden = _right_pad([i.grad_hidden for i in items], 0.0)
    grad = backbone.embeds_vjp(embeds, mask, grad_hidden, positions)
    return [grad[r, :i.embeds.shape[1]] for r, i in zip(rows, items)]


def run_scores(backbone: LocalBackbone, items: Sequence[ForwardInputs]) -> list[torch.Tensor]:
    embeds, mask, positions, rows = _stack(items)
    labels = _right_pad([i.labels for i in items], IGNORE_INDEX)
    scores = backbone.score(embeds, mask, labels, positions)
    return [scores[r] for r in rows]


def run_next_token_logits(backbone: LocalBackbone, items: Sequence[ForwardInputs]) -> list[torch.Tensor]:
    embeds, mask, positions, rows = _stack(items)
    logits = backbone.next_token_logits(embeds, mask, positions)
    return [logits[r] for r in rows]


def _greedy(backbone: LocalBackbone, item: GenerateInputs) -> torch.Tensor:
    """Greedy decoding; each new token is embedded with the server's own embedding table."""
    return greedy_decode(backbone.next_token_logits, backbone.decoder.get_input_embeddings(), item.embeds,
                         item.mask, item.max_new_tokens, item.stop_token_ids, item.positions)


def run_generate(backbone: LocalBackbone, items: Sequence[GenerateInputs]) -> list[torch.Tensor]:
    return [_greedy(backbone, item) for item in items]


# ---------------------------------------------------------------- dynamic batching

Runner = Callable[[LocalBackbone, Sequence[Any]], list[Any]]
RUNNERS: dict[Kind, Runner] = {
    "train": run_train_steps, "score": run_scores, "logits": run_next_token_logits,
    "hidden": run_hidden_states, "backward": run_backward_from_hidden, "generate": run_generate,
}
BATCHABLE = frozenset({"train", "score", "logits", "hidden", "backward"})


@dataclass
class _Job:
    kind: Kind
    item: ForwardInputs | GenerateInputs
    future: futures.Future = field(default_factory=futures.Future)


@dataclass
class _Call:
    """Any other torch work (decoding a request, encoding a reply) for the batcher's thread."""

    fn: Callable[[], Any]
    future: futures.Future = field(default_factory=futures.Future)

    def run(self) -> None:
        try:
            self.future.set_result(self.fn())
        except BaseException as e:  # noqa: BLE001 - the caller's future carries it
            self.future.set_exception(e)


@dataclass
class BatchStats:
    """What the batcher has done; lets tests and operators see batching happen."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0  # requests in the largest batch run


class DynamicBatcher:
    """One thread that owns the model and runs queued requests, batched by kind.

    The first request to arrive opens a window of ``policy.window_ms``; requests
    queued or arriving before it closes, up to ``policy.max_batch`` sequences, run
    with it (``window_ms=0``: batch only what is already waiting, never wait).
    A batch that fails is re-run one request at a time, so only the culprit fails.

    This thread does all of the service's torch work: it loads the model (given a loader)
    and decodes requests and encodes replies too (:meth:`call`). PyTorch's OpenMP pool
    belongs to the thread that starts a parallel region; with a second pool in the process
    on a busy CPU, libgomp stops spinning between regions and a backbone step of small
    kernels takes twice as long (docs/performance.md).
    """

    def __init__(self, backbone: LocalBackbone | Callable[[], LocalBackbone], policy: BatchPolicy) -> None:
        self.policy = policy
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue[_Job | _Call | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # no job may be queued behind the close sentinel
        loaded = _Call((lambda: backbone) if isinstance(backbone, LocalBackbone) else backbone)
        self._queue.put(loaded)
        self._thread = threading.Thread(target=self._loop, name="backbone-batcher", daemon=True)
        self._thread.start()
        try:
            self.backbone: LocalBackbone = loaded.future.result()
        except BaseException:
            self.close()
            raise

    def submit(self, kind: Kind, item: ForwardInputs | GenerateInputs) -> futures.Future:
        return self._put(_Job(kind, item))

    def call(self, fn: Callable[[], Any]) -> futures.Future:
        """Run ``fn`` on the batcher's thread, between batches."""
        return self._put(_Call(fn))

    def _put(self, job: _Job | _Call) -> futures.Future:
        with self._lock:
            if self._closed:
                raise RuntimeError("the backbone batcher is closed")
            self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            if isinstance(first, _Call):
                first.run()
                continue
            jobs, closing = self._collect(first)
            for batch in self._pack(jobs):
                self._execute(batch)
            if closing:
                return

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """Jobs already queued or arriving within the window; True when the close sentinel came too.

        Queued jobs are always taken, even after the window: under load, requests that
        arrived while the previous batch ran form the next one without any wait.
        """
        jobs, size = [first], first.item.size
        if not self.policy.enabled:
            return jobs, False
        deadline = time.monotonic() + self.policy.window_ms / 1000
        while size < self.policy.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if isinstance(job, _Call):  # quick (a decode): run it now, its request may join this batch
                job.run()
                continue
            jobs.append(job)
            size += job.item.size
        return jobs, False

    def _pack(self, jobs: list[_Job]) -> Iterator[list[_Job]]:
        """Same-kind batches of at most max_batch sequences (a bigger request runs alone)."""
        for kind in dict.fromkeys(j.kind for j in jobs):
            batch: list[_Job] = []
            size = 0
            for job in (j for j in jobs if j.kind == kind):
                full = kind not in BATCHABLE or size + job.item.size > self.policy.max_batch
                if batch and full:
                    yield batch
                    batch, size = [], 0
                batch.append(job)
                size += job.item.size
            yield batch

    def _execute(self, batch: list[_Job]) -> None:
        try:
            results = RUNNERS[batch[0].kind](self.backbone, [j.item for j in batch])
        except Exception as e:  # isolate the failing request, keep serving
            if len(batch) > 1:
                for job in batch:
                    self._execute([job])
                return
            log.exception("backbone %s request failed", batch[0].kind)
            batch[0].future.set_exception(e)
            return
        self.stats.requests += len(batch)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for job, result in zip(batch, results):
            job.future.set_result(result)


# ---------------------------------------------------------------- the servicer


class BackboneService(pb_grpc.BackboneServicer):
    """The RPCs of backbone.proto over one LocalBackbone."""

    def __init__(self, backbone: LocalBackbone | Callable[[], LocalBackbone], policy: BatchPolicy = BatchPolicy(),
                 limits: Limits = Limits()) -> None:
        """``backbone``: the model, or a function that loads it (then it is loaded on the batcher's
        thread, which keeps all of the process's torch work on one thread)."""
        self.batcher = DynamicBatcher(backbone, policy)
        self.backbone = self.batcher.backbone
        self.policy = policy
        model_max = self.backbone.info.max_sequence_length
        self.max_len = min(limits.max_sequence_length or model_max, model_max)
        self.limits = limits
        self.dtype = next(self.backbone.parameters()).dtype
        self.callers: Counter[str] = Counter()  # admitted calls per client name, when tokens are on

    def close(self) -> None:
        self.batcher.close()

    def _read(self, stream: Iterator, context: grpc.ServicerContext, decode: Callable[[Any], Any]) -> Any:
        """Assemble and validate a request; a malformed one ends the call with INVALID_ARGUMENT."""
        try:
            msg = wire.assemble(stream, self.limits.max_request_bytes)
            return self.batcher.call(lambda: decode(msg)).result()
        except WireError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    def _run(self, kind: Kind, item: ForwardInputs | GenerateInputs, context: grpc.ServicerContext) -> Any:
        try:
            return self.batcher.submit(kind, item).result()
        except Exception as e:  # noqa: BLE001 - report it to the caller; never crash the server
            context.abort(grpc.StatusCode.INTERNAL, f"backbone failed: {type(e).__name__}: {e}")

    def _forward(self, kind: Kind, stream: Iterator,
                 context: grpc.ServicerContext) -> tuple[ForwardInputs, Any]:
        item = self._read(stream, context,
                          lambda m: decode_forward(m, self.backbone.info, self.max_len, self.dtype, kind))
        return item, self._run(kind, item, context)

    def _reply(self, msg: Any) -> Iterator[Any]:
        return wire.chunks(msg, self.limits.max_chunk_bytes)

    def _encode(self, t: torch.Tensor, dtype: str) -> pb.Tensor:
        """``t`` on the wire in ``dtype``, converted on the batcher's thread."""
        return self.batcher.call(lambda: wire.encode(t, dtype)).result()

    def TrainStep(self, request_iterator, context):
        item, (loss, grad) = self._forward("train", request_iterator, context)
        yield from self._reply(pb.TrainStepReply(loss=loss, grad=self._encode(grad, item.grad_dtype)))

    def Score(self, request_iterator, context):
        _, scores = self._forward("score", request_iterator, context)
        yield from self._reply(pb.ScoreReply(scores=self._encode(scores, "float32")))

    def NextTokenLogits(self, request_iterator, context):
        _, logits = self._forward("logits", request_iterator, context)
        yield from self._reply(pb.LogitsReply(logits=self._encode(logits, "float32")))

    def HiddenStates(self, request_iterator, context):
        item, hidden = self._forward("hidden", request_iterator, context)
        yield from self._reply(pb.HiddenStatesReply(hidden_states=self._encode(hidden, item.grad_dtype)))

    def BackwardFromHidden(self, request_iterator, context):
        item = self._read(request_iterator, context, lambda m: decode_hidden_backward(
            m, self.backbone.info, self.max_len, self.dtype))
        grad = self._run("backward", item, context)
        yield from self._reply(pb.GradReply(grad=self._encode(grad, item.grad_dtype)))

    def Generate(self, request_iterator, context):
        item = self._read(request_iterator, context, lambda m: decode_generate(
            m, self.backbone.info, self.max_len, self.dtype, self.limits.max_new_tokens))
        ids = self._run("generate", item, context)
        yield from self._reply(pb.GenerateReply(token_ids=self._encode(ids, "int64")))

    def Info(self, request, context):
        info = self.backbone.info
        return pb.InfoReply(
            fingerprint=info.fingerprint, hidden_size=info.hidden_size, vocab_size=info.vocab_size,
            model_dtype=info.dtype, wire_dtypes=list(wire.WIRE_DTYPES), max_sequence_length=self.max_len,
            max_chunk_bytes=self.limits.max_chunk_bytes, max_request_bytes=self.limits.max_request_bytes,
            max_new_tokens=self.limits.max_new_tokens, batching=self.policy.enabled,
            batch_window_ms=self.policy.window_ms, max_batch_sequences=self.policy.max_batch,
            position_dims=info.position_dims,
        )


# ---------------------------------------------------------------- authentication and serving


def _denied(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that only refuses the call."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token "
                      "(metadata 'authorization: Bearer <token>')")

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Admits a call only with ``authorization: Bearer <token>`` for a known client.

    ``tokens`` maps client names to their tokens; each client gets its own, so one
    can be revoked without touching the others. Admitted calls are counted per client
    name in ``callers`` (the operator's view of who uses the backbone, and how much).
    """

    def __init__(self, tokens: Mapping[str, str], callers: Counter[str] | None = None) -> None:
        if not tokens or not all(tokens.values()):
            raise ValueError("bearer tokens must be non-empty")
        self._tokens = [(t.encode(), name) for name, t in tokens.items()]
        self.callers: Counter[str] = Counter() if callers is None else callers
        self._lock = threading.Lock()

    def _admit(self, token: bytes | None) -> bool:
        if token is None:
            return False
        # compare against every token, in constant time, so timing says nothing
        names = [name for t, name in self._tokens if hmac.compare_digest(token, t)]
        if not names:
            return False
        with self._lock:
            if names[0] not in self.callers:
                log.info("first call from client %s", names[0])
            self.callers[names[0]] += 1
        return True

    def _client_token(self, metadata: Sequence[tuple[str, Any]]) -> bytes | None:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                return value.removeprefix("Bearer ").encode()
        return None

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        known = self._admit(self._client_token(handler_call_details.invocation_metadata))
        return handler if known else _denied(handler)


def _server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    client_ca = Path(tls.client_ca).read_bytes() if tls.client_ca else None
    pair = (Path(tls.private_key).read_bytes(), Path(tls.cert_chain).read_bytes())
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def start(service: BackboneService, address: str = "127.0.0.1:0", tls: ServerTls | None = None,
          tokens: Mapping[str, str] | None = None, max_workers: int = 64) -> tuple[grpc.Server, int]:
    """Serve ``service`` on ``address`` (port 0: any free port); returns the started server and its port.

    ``max_workers`` bounds concurrent calls: each waiting client holds one worker thread.
    """
    message_limit = service.limits.max_chunk_bytes + MESSAGE_SLACK_BYTES
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="backbone-rpc"),
        interceptors=[BearerTokenInterceptor(tokens, service.callers)] if tokens else [],
        options=[("grpc.max_receive_message_length", message_limit),
                 ("grpc.max_send_message_length", message_limit)],
    )
    pb_grpc.add_BackboneServicer_to_server(service, server)
    if tls:
        port = server.add_secure_port(address, _server_credentials(tls))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port


class Serving(NamedTuple):
    server: grpc.Server
    port: int
    service: BackboneService


def serve(model_dir: str | Path, address: str = "127.0.0.1:0", tls: ServerTls | None = None,
          tokens: Mapping[str, str] | None = None, window_ms: float = 5.0, max_batch: int = 32,
          batching: bool = True, limits: Limits = Limits(), dtype: torch.dtype = torch.float32,
          max_workers: int = 64, device: str = "cpu", quantization: str = "none") -> Serving:
    """Load the backbone of the checkpoint at ``model_dir`` (on the batcher's thread, on ``device``,
    held in ``quantization``) and serve it."""
    service = BackboneService(lambda: LocalBackbone.from_pretrained(model_dir, dtype, device, quantization),
                              BatchPolicy(batching, window_ms, max_batch), limits)
    return Serving(*start(service, address, tls, tokens, max_workers), service)
