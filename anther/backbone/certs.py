"""Credentials for the backbone service: a private CA, server and client certificates, bearer tokens.

A federation runs its own small PKI: the CA signs the backbone server's certificate
(so clients can check they talk to the real server) and, for mutual TLS, one
certificate per client (so the server can check who calls). Keys are ECDSA P-256:
small, fast, and accepted by gRPC's TLS. Each client also gets its own bearer token,
so one site can be revoked by removing its line from ``tokens.json``. Everything is
written as PEM or text; private keys and tokens are readable by their owner only.

A credentials folder (``anther certs --out DIR --clients 3``) holds ``ca.pem``/``ca.key``,
``server.pem``/``server.key``, ``tokens.json`` (client name -> token, for the server) and per
client ``<name>.pem``, ``<name>.key`` and ``<name>.token`` (for that client only).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Names every server certificate carries, so loopback tests and single-host runs just work.
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")
# Client names become file names next to ca.* and server.*.
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RESERVED = {"ca", "server"}
TOKENS_FILE = "tokens.json"


@dataclass(frozen=True)
class CertFiles:
    """Where :func:`make_certs` wrote each PEM file."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]  # client name -> (certificate, key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "anther"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(name: str) -> x509.GeneralName:
    """An IP address entry when ``name`` is one (TLS matches IPs only against those), else DNS."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days)))


def _leaf(subject: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, days: int,
          usage: x509.ObjectIdentifier,
          names: Sequence[str]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``subject`` signed by the CA, for server or client authentication."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(subject, ca_cert.subject, key, days)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False))
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` readable by its owner only (mode 0600 from the start, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _write(out_dir: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path = out_dir / f"{stem}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = _write_private(out_dir / f"{stem}.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def _check_client_names(clients: Sequence[str]) -> None:
    bad = [c for c in clients if c in _RESERVED or not _CLIENT_NAME.fullmatch(c)]
    if bad:
        raise ValueError(f"client names must match {_CLIENT_NAME.pattern} and not be ca or server: {bad}")


def make_certs(out_dir: str | Path, server_names: Sequence[str] = (), clients: Sequence[str] = (),
               days: int = 365) -> CertFiles:
    """Write ``ca``, ``server`` and one ``<client>`` certificate/key pair per client into ``out_dir``.

    The server certificate names 127.0.0.1 and localhost plus ``server_names`` (host
    names or IP addresses clients will dial).
    """
    _check_client_names(clients)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (_builder("anther backbone CA", _name("anther backbone CA"), ca_key, days)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    names = list(dict.fromkeys([*DEFAULT_SERVER_NAMES, *server_names]))
    server = _leaf(names[0], ca_cert, ca_key, days, ExtendedKeyUsageOID.SERVER_AUTH, names)
    ca_paths = _write(out, "ca", ca_cert, ca_key)
    server_paths = _write(out, "server", *server)
    client_paths = {
        c: _write(out, c, *_leaf(c, ca_cert, ca_key, days, ExtendedKeyUsageOID.CLIENT_AUTH, [c]))
        for c in clients
    }
    return CertFiles(*ca_paths, *server_paths, client_paths)


def write_tokens(out_dir: str | Path, clients: Sequence[str]) -> dict[str, Path]:
    """A fresh random bearer token per client: ``<name>.token`` each and ``tokens.json`` for the server.

    Returns client name -> token file.
    """
    _check_client_names(clients)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens = {c: secrets.token_urlsafe(32) for c in clients}
    _write_private(out / TOKENS_FILE, json.dumps(tokens, indent=2).encode())
    return {c: _write_private(out / f"{c}.token", f"{t}\n".encode()) for c, t in tokens.items()}


def read_token(path: str | Path) -> str:
    """The bearer token in ``path`` (one line, surrounding whitespace ignored)."""
    token = Path(path).read_text().strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"token file {path} must hold one token on one line")
    return token


def read_tokens(path: str | Path) -> dict[str, str]:
    """``tokens.json``: a JSON object of client name -> token, as :func:`write_tokens` writes it."""
    try:
        tokens = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"tokens file {path} is not JSON: {e}") from e
    if not (isinstance(tokens, dict) and tokens
            and all(isinstance(k, str) and isinstance(v, str) and v for k, v in tokens.items())):
        raise ValueError(f'tokens file {path} must be a non-empty JSON object {{"client name": "token", ...}}')
    return tokens
