"""Who may call the backbone service: TLS (optionally mutual) and per-client bearer tokens,
checked by a server interceptor before any handler runs."""

from __future__ import annotations

import hmac
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)


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

    def name_of(self, metadata: Sequence[tuple[str, Any]] | None) -> str | None:
        """The client name whose token a call carries; None for no token or an unknown one."""
        token = self._client_token(metadata)
        if token is None:
            return None
        # compare against every token, in constant time, so timing says nothing
        names = [name for t, name in self._tokens if hmac.compare_digest(token, t)]
        return names[0] if names else None

    def _admit(self, name: str | None) -> bool:
        if name is None:
            return False
        with self._lock:
            if name not in self.callers:
                log.info("first call from client %s", name)
            self.callers[name] += 1
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
        known = self._admit(self.name_of(handler_call_details.invocation_metadata))
        return handler if known else _denied(handler)


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    client_ca = Path(tls.client_ca).read_bytes() if tls.client_ca else None
    pair = (Path(tls.private_key).read_bytes(), Path(tls.cert_chain).read_bytes())
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)
