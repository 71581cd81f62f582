"""The client's view of a remote backbone: the :class:`Backbone` protocol over gRPC.

:class:`RemoteBackbone` is a drop-in for :class:`InProcessBackbone` in the trainer and
in inference: the same ``info``, ``train_step``, ``score`` and ``next_token_logits`` (and the
``hidden_states`` and ``backward_from_hidden`` of a private-labels client),
with the tensors travelling as ``backbone.proto`` says. It retries a call that
fails with UNAVAILABLE (server restarting, network blip) with exponential backoff;
every RPC is a pure function of its request, so a retry is always safe. It counts the
protobuf bytes it sends and receives (``bytes_up``, ``bytes_down``) so a run can
report its real traffic; TLS and HTTP/2 framing add a little on top of that.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Self, TypeVar

import grpc
import torch
from google.protobuf.message import Message

from anther.backbone import wire
from anther.backbone.interface import IGNORE_INDEX, BackboneInfo, Positions
from anther.backbone.proto import backbone_pb2 as pb
from anther.backbone.proto import backbone_pb2_grpc as pb_grpc

M = TypeVar("M", bound=Message)
T = TypeVar("T")

# Replies may be large (gradients); the server chunks them, this is only a ceiling.
_MAX_REPLY_MESSAGE_BYTES = 256 << 20
# a service that closes this many connections in a row while they say hello refuses this side's TLS
# (a restarting one refuses connections instead, until it listens)
CLOSED_AT_HANDSHAKE = 3

Pem = str | Path | bytes


def _pem(source: Pem | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def _ids(t: torch.Tensor, allowed: Sequence[str]) -> pb.Tensor:
    """Masks and labels travel in their own dtype when the wire takes it, else as int64."""
    return wire.encode(t, None if wire.dtype_name(t.dtype) in allowed else "int64")


def _set_positions(request: pb.ForwardRequest | pb.HiddenBackwardRequest | pb.GenerateRequest,
                   position_ids: Positions) -> None:
    if position_ids is not None:
        request.position_ids.CopyFrom(_ids(position_ids, wire.ID_DTYPES))


class RemoteBackbone:
    """A :class:`~anther.backbone.interface.Backbone` served by the backbone service (:mod:`anther.backbone.service`).

    ``root_cert`` turns on TLS (the CA that signed the server's certificate);
    ``client_cert`` and ``client_key`` add the client's own certificate for mutual TLS;
    ``token`` is sent as ``authorization: Bearer <token>``. ``wire_dtype`` is the dtype
    of the embeddings sent and the gradients received (float32, bfloat16, float16).
    With ``fingerprint`` set (``checkpoint_fingerprint`` of the checkpoint the client's
    NanoEdge came from), connecting fails unless the server runs that same checkpoint.
    A call is tried up to ``attempts`` times while the server is UNAVAILABLE, waiting
    ``backoff_s``, then twice that, ... up to ``max_backoff_s`` (with jitter, so many
    clients do not retry in lockstep). With ``retry_s`` set, it is retried for that many
    seconds instead, however many attempts that takes: long enough to outlast a service
    restart, which must reload the LLM.
    """

    def __init__(self, address: str, *, token: str | None = None, root_cert: Pem | None = None,
                 client_cert: Pem | None = None, client_key: Pem | None = None,
                 server_name: str | None = None, wire_dtype: str = "float32", attempts: int = 5,
                 backoff_s: float = 0.2, max_backoff_s: float = 5.0, timeout_s: float | None = None,
                 fingerprint: str | None = None, retry_s: float | None = None) -> None:
        if wire_dtype not in wire.WIRE_DTYPES:
            raise ValueError(f"wire_dtype {wire_dtype!r} is not one of {', '.join(wire.WIRE_DTYPES)}")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.wire_dtype = wire_dtype
        self.attempts, self.backoff_s, self.max_backoff_s = attempts, backoff_s, max_backoff_s
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.bytes_up = 0
        self.bytes_down = 0
        self._count_lock = threading.Lock()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channel = self._open(address, root_cert, client_cert, client_key, server_name)
        self._stub = pb_grpc.BackboneStub(self._channel)
        try:
            self.server = self._handshake(fingerprint)
        except BaseException:
            self.close()
            raise
        self.info = BackboneInfo(
            fingerprint=self.server.fingerprint, hidden_size=self.server.hidden_size,
            vocab_size=self.server.vocab_size, dtype=self.server.model_dtype,
            max_sequence_length=self.server.max_sequence_length,
            position_dims=self.server.position_dims or 1,  # a server from before M-RoPE sends 0
        )

    def _handshake(self, fingerprint: str | None) -> pb.InfoReply:
        """The server's Info, checked against what this client needs."""
        reply = self._retrying(lambda: self._stub.Info(pb.InfoRequest(), metadata=self._metadata,
                                                       timeout=self.timeout_s), handshake=True)
        if self.wire_dtype not in reply.wire_dtypes:
            raise ValueError(f"the server does not take wire dtype {self.wire_dtype!r}")
        if fingerprint is not None and reply.fingerprint != fingerprint:
            raise ValueError(f"the server serves checkpoint {reply.fingerprint}, not {fingerprint}: "
                             "client and server must load the same model")
        return reply

    def _open(self, address: str, root_cert: Pem | None, client_cert: Pem | None, client_key: Pem | None,
              server_name: str | None) -> grpc.Channel:
        options = [
            ("grpc.max_receive_message_length", _MAX_REPLY_MESSAGE_BYTES),
            # reconnect on the same schedule as our retries, not gRPC's default 1 s floor
            ("grpc.initial_reconnect_backoff_ms", max(1, int(self.backoff_s * 1000))),
            ("grpc.min_reconnect_backoff_ms", max(1, int(self.backoff_s * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(1, int(self.max_backoff_s * 1000))),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_cert is None:
            if client_cert or client_key:
                raise ValueError("a client certificate needs TLS: give root_cert too")
            return grpc.insecure_channel(address, options=options)
        creds = grpc.ssl_channel_credentials(_pem(root_cert), _pem(client_key), _pem(client_cert))
        return grpc.secure_channel(address, creds, options=options)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def _retrying(self, call: Callable[[], T], handshake: bool = False) -> T:
        """``call``, tried again while the service is UNAVAILABLE (see the class), except where
        that cannot pass: a TLS handshake that failed, or, in the ``handshake``, a service that
        closes every connection at once (TLS against plain text, or a client certificate
        missing or refused), which is no restart."""
        attempt, started, closed = 0, time.monotonic(), 0
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                attempt += 1
                closed += handshake and "Socket closed" in (e.details() or "")
                out_of_budget = (attempt >= self.attempts if self.retry_s is None
                                 else time.monotonic() - started >= self.retry_s)
                if (e.code() != grpc.StatusCode.UNAVAILABLE or out_of_budget or _tls_failed(e)
                        or closed >= CLOSED_AT_HANDSHAKE):
                    raise
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * random.uniform(0.5, 1.0))

    def _tally(self, stream: Iterable[M], up: bool) -> Iterator[M]:
        """Pass messages through, adding their serialized size to bytes_up or bytes_down."""
        for msg in stream:
            size = msg.ByteSize()
            with self._count_lock:
                if up:
                    self.bytes_up += size
                else:
                    self.bytes_down += size
            yield msg

    def _call(self, rpc: grpc.StreamStreamMultiCallable, request: Message) -> Message:
        """One streamed call: request out in chunks, reply assembled from its chunks."""
        def attempt() -> Message:
            upload = self._tally(wire.chunks(request, self.server.max_chunk_bytes), up=True)
            replies = rpc(upload, metadata=self._metadata, timeout=self.timeout_s)
            return wire.assemble(self._tally(replies, up=False))
        return self._retrying(attempt)

    def _forward_request(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                         labels: torch.Tensor | None, position_ids: Positions) -> pb.ForwardRequest:
        req = pb.ForwardRequest(inputs_embeds=wire.encode(inputs_embeds, self.wire_dtype),
                                attention_mask=_ids(attention_mask, wire.MASK_DTYPES),
                                grad_dtype=self.wire_dtype)
        if labels is not None:
            req.labels.CopyFrom(_ids(labels, wire.ID_DTYPES))
        _set_positions(req, position_ids)
        return req

    # ------------------------------------------------------------ the Backbone protocol

    def _parts(self, inputs_embeds: torch.Tensor) -> list[slice]:
        """The rows of a batch in parts of at most the server's ``max_request_tokens`` (one part
        when it fits, or when the server states no limit). Every method's rows are independent, so
        a batch in parts gets the answer it would have got whole."""
        rows, length = inputs_embeds.shape[:2]
        cap = self.server.max_request_tokens  # 0: a server from before the limit
        step = rows if not cap else max(1, cap // max(1, length))
        return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]

    def _in_parts(self, inputs_embeds: torch.Tensor, call: Callable[[slice], torch.Tensor]) -> torch.Tensor:
        return torch.cat([call(rows) for rows in self._parts(inputs_embeds)])

    def train_step(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor, position_ids: Positions = None) -> tuple[float, torch.Tensor]:
        """A batch over the server's token limit goes in parts: each part's loss is the mean over its
        own labelled tokens, so the parts are weighted by their share of them, loss and gradient."""
        parts = self._parts(inputs_embeds)
        if len(parts) == 1:
            return self._train_part(inputs_embeds, attention_mask, labels, position_ids)
        counted = [int((labels[rows, 1:] != IGNORE_INDEX).sum()) for rows in parts]
        total, loss, grads = sum(counted), 0.0, []
        for rows, n in zip(parts, counted):
            if n == 0:  # no labelled token: the loss does not depend on these rows
                grads.append(torch.zeros_like(inputs_embeds[rows]))
                continue
            part_loss, grad = self._train_part(inputs_embeds[rows], attention_mask[rows], labels[rows],
                                               _rows(position_ids, rows))
            loss += part_loss * n / total
            grads.append(grad * (n / total))
        return loss, torch.cat(grads)

    def _train_part(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                    position_ids: Positions) -> tuple[float, torch.Tensor]:
        reply = self._call(self._stub.TrainStep,
                           self._forward_request(inputs_embeds, attention_mask, labels, position_ids))
        return reply.loss, _like(wire.decode(reply.grad, "grad", wire.WIRE_DTYPES, ndim=3), inputs_embeds)

    def score(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
              labels: torch.Tensor, position_ids: Positions = None) -> torch.Tensor:
        def part(rows: slice) -> torch.Tensor:
            request = self._forward_request(inputs_embeds[rows], attention_mask[rows], labels[rows],
                                            _rows(position_ids, rows))
            scores = wire.decode(self._call(self._stub.Score, request).scores, "scores", ("float32",), ndim=1)
            return scores.to(inputs_embeds.device)
        return self._in_parts(inputs_embeds, part)

    def next_token_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                          position_ids: Positions = None) -> torch.Tensor:
        def part(rows: slice) -> torch.Tensor:
            request = self._forward_request(inputs_embeds[rows], attention_mask[rows], None, _rows(position_ids, rows))
            logits = wire.decode(self._call(self._stub.NextTokenLogits, request).logits, "logits", ("float32",), ndim=2)
            return logits.to(inputs_embeds.device)
        return self._in_parts(inputs_embeds, part)

    # ------------------------------------------------------------ private labels (HiddenStateBackbone)

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: Positions = None) -> torch.Tensor:
        def part(rows: slice) -> torch.Tensor:
            request = self._forward_request(inputs_embeds[rows], attention_mask[rows], None, _rows(position_ids, rows))
            reply = self._call(self._stub.HiddenStates, request)
            return _like(wire.decode(reply.hidden_states, "hidden_states", wire.WIRE_DTYPES, ndim=3), inputs_embeds)
        return self._in_parts(inputs_embeds, part)

    def backward_from_hidden(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                             grad_hidden: torch.Tensor, position_ids: Positions = None) -> torch.Tensor:
        def part(rows: slice) -> torch.Tensor:
            request = pb.HiddenBackwardRequest(inputs_embeds=wire.encode(inputs_embeds[rows], self.wire_dtype),
                                               attention_mask=_ids(attention_mask[rows], wire.MASK_DTYPES),
                                               grad_hidden=wire.encode(grad_hidden[rows], self.wire_dtype),
                                               grad_dtype=self.wire_dtype)
            _set_positions(request, _rows(position_ids, rows))
            reply = self._call(self._stub.BackwardFromHidden, request)
            return _like(wire.decode(reply.grad, "grad", wire.WIRE_DTYPES, ndim=3), inputs_embeds)
        return self._in_parts(inputs_embeds, part)

    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 stop_token_ids: Sequence[int] = (), position_ids: Positions = None) -> torch.Tensor:
        """Greedy token ids (B, N), -1 after a row's stop token. The server embeds the new
        tokens itself, so adapters do not see them; anther's own evaluation decodes
        client-side with :meth:`next_token_logits` (``client.inference.greedy_answers``)."""
        req = pb.GenerateRequest(inputs_embeds=wire.encode(inputs_embeds, self.wire_dtype),
                                 attention_mask=_ids(attention_mask, wire.MASK_DTYPES),
                                 max_new_tokens=max_new_tokens, stop_token_ids=list(stop_token_ids))
        _set_positions(req, position_ids)
        reply = self._call(self._stub.Generate, req)
        return wire.decode(reply.token_ids, "token_ids", ("int64",), ndim=2).to(inputs_embeds.device)


def _tls_failed(error: grpc.RpcError) -> bool:
    """Whether a call failed in the TLS handshake (a certificate not signed by the CA this side
    trusts, or not for the name dialled): retrying cannot help."""
    return "handshake failed" in (error.details() or "").lower()


def _like(received: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
    """A tensor off the wire on the caller's device and in its dtype, as every result of a
    :class:`anther.backbone.interface.Backbone` comes back."""
    return received.to(sent.device, sent.dtype)


def _rows(position_ids: Positions, rows: slice) -> Positions:
    return None if position_ids is None else position_ids[rows]
