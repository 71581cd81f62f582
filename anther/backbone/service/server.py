"""Serving: the backbone service on a gRPC server, in this process.

Run it with ``anther backbone serve --model DIR`` or in-process with :func:`serve` /
:func:`start`; a run with ``backbone.mode=service`` starts it for itself
(:mod:`anther.backbone.supervisor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent import futures
from pathlib import Path
from typing import NamedTuple

import grpc
import torch

from anther.backbone.in_process import InProcessBackbone
from anther.backbone.proto import backbone_pb2_grpc as pb_grpc
from anther.backbone.service.auth import BearerTokenInterceptor, ServerTls, server_credentials
from anther.backbone.service.batching import BatchPolicy
from anther.backbone.service.decode import Limits
from anther.backbone.service.servicer import BackboneService

# gRPC's per-message receive limit is the chunk limit plus this, for protobuf framing.
MESSAGE_SLACK_BYTES = 64 * 1024


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
          max_workers: int = 64, device: str = "cpu", quantization: str = "none") -> Serving:
    """Load the backbone of the checkpoint at ``model_dir`` (on the batcher's thread, on ``device``,
    held in ``quantization``) and serve it."""
    service = BackboneService(lambda: InProcessBackbone.from_pretrained(model_dir, dtype, device, quantization),
                              BatchPolicy(batching, window_ms, max_batch), limits)
    return Serving(*start(service, address, tls, tokens, max_workers), service)
