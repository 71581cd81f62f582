"""Serving: the backbone service on a gRPC server, in this process.

Run it with ``anther backbone serve --model DIR`` or in-process with :func:`serve` /
:func:`start`; a run with ``backbone.mode=service`` starts it for itself
(:mod:`anther.backbone.supervisor`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path
from typing import NamedTuple

import grpc
import torch
from google.protobuf.message import DecodeError, Message

from anther.backbone import wire
from anther.backbone.in_process import InProcessBackbone
from anther.backbone.proto import backbone_pb2 as pb
from anther.backbone.service.auth import BearerTokenInterceptor, ServerTls, server_credentials
from anther.backbone.service.batching import BatchPolicy
from anther.backbone.service.decode import Limits
from anther.backbone.service.servicer import BackboneService

# gRPC's per-message receive limit is the chunk limit plus this, for protobuf framing.
MESSAGE_SLACK_BYTES = 64 * 1024


def start(service: BackboneService, address: str = "127.0.0.1:0", tls: ServerTls | None = None,
          tokens: Mapping[str, str] | None = None, max_workers: int = 64) -> tuple[grpc.Server, int]:
    """Serve ``service`` on ``address`` (port 0: any free port); returns the started server and its port.

    ``max_workers`` bounds concurrent calls: each call holds one worker thread while it runs; the
    service's :class:`~anther.backbone.service.admission.Admission` keeps one client from holding
    them all. With ``tokens``, a call counts against its token's client name, else its host.
    """
    message_limit = service.limits.max_chunk_bytes + MESSAGE_SLACK_BYTES
    interceptors = []
    if tokens:
        interceptor = BearerTokenInterceptor(tokens, service.callers)
        service.caller_of = lambda context: interceptor.name_of(context.invocation_metadata()) or "?"
        interceptors.append(interceptor)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="backbone-rpc"),
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", message_limit),
                 ("grpc.max_send_message_length", message_limit)],
    )
    server.add_generic_rpc_handlers((_handlers(service),))
    if tls:
        port = server.add_secure_port(address, server_credentials(tls))
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
          max_workers: int = 64, device: str = "cpu", quantization: str = "none", autocast: str = "none") -> Serving:
    """Load the backbone of the checkpoint at ``model_dir`` (on the batcher's thread, on ``device``,
    held in ``quantization``) and serve it."""
    service = BackboneService(lambda: InProcessBackbone.from_pretrained(model_dir, dtype, device, quantization,
                                                                               autocast),
                              BatchPolicy(batching, window_ms, max_batch), limits)
    return Serving(*start(service, address, tls, tokens, max_workers), service)


def _parser(message: type[Message]) -> Callable[[bytes], Message | wire.Undecodable]:
    """``message.FromString`` that returns :class:`anther.backbone.wire.Undecodable` for bytes that are
    not that message, for the handler to refuse with INVALID_ARGUMENT (gRPC would answer INTERNAL
    and log a traceback per such request)."""

    def parse(data: bytes) -> Message | wire.Undecodable:
        try:
            return message.FromString(data)
        except DecodeError as e:
            return wire.Undecodable(message.DESCRIPTOR.name, str(e))

    return parse


def _handlers(service: BackboneService) -> grpc.GenericRpcHandler:
    """The servicer's methods as backbone.proto declares them, each request read by :func:`_parser`."""
    kinds = {(True, True): grpc.stream_stream_rpc_method_handler, (False, False): grpc.unary_unary_rpc_method_handler}
    methods = {}
    for method in pb.DESCRIPTOR.services_by_name["Backbone"].methods:
        request, reply = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        make = kinds[(method.client_streaming, method.server_streaming)]
        methods[method.name] = make(getattr(service, method.name), request_deserializer=_parser(request),
                                    response_serializer=reply.SerializeToString)
    return grpc.method_handlers_generic_handler(pb.DESCRIPTOR.services_by_name["Backbone"].full_name, methods)
