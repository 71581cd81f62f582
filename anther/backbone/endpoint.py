"""Where a client's backbone lives and how it proves who it is: run config plus node config.

The run config (the experiment YAML every message carries) says how the federation
reaches its backbone: ``backbone.mode``, the address, the CA that signed the service's
certificate and the wire dtype. What belongs to one site stays in that SuperNode's
``--node-config`` and overrides the run config: its own bearer token or client
certificate (never sent anywhere but to the backbone), and, where its network differs,
the CA path and address. So one ``flwr run`` serves many sites, each with its own
credentials, and a secret never travels in a Flower message. Where the ServerApp started
several backbone replicas (``backbone.replicas``), a client dials replica
``partition-id % replicas``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from omegaconf import DictConfig

from anther.backbone.certs import read_token
from anther.backbone.remote import RemoteBackbone
from anther.core import protocol
from anther.core.config import wire_dtype

# node-config key -> the backbone.* key it overrides
NODE_KEYS = {
    protocol.BACKBONE_ADDRESS: "address",
    protocol.BACKBONE_CA: "ca_cert",
    protocol.BACKBONE_TOKEN_FILE: "token_file",
    protocol.BACKBONE_CERT: "client_cert",
    protocol.BACKBONE_KEY: "client_key",
}


@dataclass(frozen=True)
class BackboneEndpoint:
    """Everything needed to open a :class:`RemoteBackbone`; hashable, so connections can be cached."""

    address: str
    wire_dtype: str = "float32"
    ca_cert: str | None = None  # None: no TLS (only with backbone.insecure=true)
    token_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None
    retry_s: float | None = None  # how long a call retries an unavailable service (see RemoteBackbone)

    def _file(self, key: str, path: str | None) -> Path | None:
        if path is None:
            return None
        if not Path(path).is_file():
            node_key = next(k for k, v in NODE_KEYS.items() if v == key)
            raise FileNotFoundError(f"backbone.{key}={path} does not exist on this node; set the path "
                                    f"in the run config or in this SuperNode's --node-config ({node_key}=...)")
        return Path(path)

    def connect(self, fingerprint: str | None = None) -> RemoteBackbone:
        """Dial the service; with ``fingerprint``, refuse one serving a different checkpoint."""
        token_file = self._file("token_file", self.token_file)
        try:
            return RemoteBackbone(
                self.address, token=read_token(token_file) if token_file else None,
                root_cert=self._file("ca_cert", self.ca_cert),
                client_cert=self._file("client_cert", self.client_cert),
                client_key=self._file("client_key", self.client_key), server_name=self.server_name,
                wire_dtype=self.wire_dtype, fingerprint=fingerprint, retry_s=self.retry_s,
            )
        except grpc.RpcError as e:
            raise ConnectionError(f"backbone at {self.address}: {self._explain(e)}") from e

    def _explain(self, error: grpc.RpcError) -> str:
        """What a failed handshake means for whoever configured this node, naming the setting to fix."""
        code, details = error.code(), error.details() or ""
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return (f"refused this node's bearer token (backbone-token-file={self.token_file} in the node config, "
                    f"or backbone.token_file): {details}")
        if "handshake failed" in details.lower():
            if "peer name" in details.lower() or "hostname" in details.lower():
                return (f"its TLS certificate is not for the name dialled: make it with `anther certs "
                        f"--server-name HOST`, or set backbone.server_name: {details}")
            return (f"its TLS certificate is not signed by the CA this node trusts (backbone-ca={self.ca_cert} "
                    f"in the node config, or backbone.ca_cert): {details}")
        if "Socket closed" in details:
            if self.ca_cert is None:
                return ("it closes plain-text connections: it speaks TLS, so give this node its CA (backbone-ca in "
                        "the node config, or backbone.ca_cert)")
            if self.client_cert is None:
                return ("it closed every TLS connection: it requires a client certificate (mutual TLS), so give "
                        "this node its certificate and key (backbone-cert and backbone-key in the node config)")
            return (f"it refused this node's client certificate (backbone-cert={self.client_cert}, "
                    f"backbone-key={self.client_key}): it must be signed by the service's CA")
        if code == grpc.StatusCode.UNAVAILABLE:
            return (f"unreachable for {self.retry_s or 0:g} s; check the address (backbone-address in the node "
                    f"config, or backbone.address) and that the service runs: {details}")
        return f"{code.name}: {details}"


def endpoint_for(cfg: DictConfig, node_config: Mapping[str, Any] | None = None) -> BackboneEndpoint | None:
    """The endpoint a run's config and this node's config point at; None for ``backbone.mode=in_process``."""
    b = cfg.backbone
    if b.mode == "in_process":
        return None
    values = {key: b[key] for key in NODE_KEYS.values()}
    replicas = b.get("replica_addresses") or []
    if replicas:  # clients spread over the service's replicas by partition id (replica 0 without one)
        values["address"] = replicas[int((node_config or {}).get(protocol.PARTITION_ID, 0)) % len(replicas)]
    for node_key, key in NODE_KEYS.items():
        if node_config and node_key in node_config:
            values[key] = str(node_config[node_key])
    if values["address"] is None:
        raise ValueError(f"backbone.mode={b.mode} but no backbone.address reached this node: the ServerApp "
                         "fills it in for mode=service; set it for mode=remote (or backbone-address in "
                         "--node-config)")
    if values["ca_cert"] is None and not b.insecure:
        raise ValueError("the backbone is reached without TLS: set backbone.ca_cert (or backbone-ca in "
                         "--node-config), or backbone.insecure=true on a network you trust")
    if (values["client_cert"] is None) != (values["client_key"] is None):
        raise ValueError("a client certificate needs its key: set both backbone-cert and backbone-key")
    return BackboneEndpoint(wire_dtype=wire_dtype(cfg), server_name=b.server_name,
                            retry_s=float(b.get("retry_s", 120.0)), **values)
