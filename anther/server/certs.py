"""Certificates for the backbone service: a private CA, a server certificate and client certificates.

A federation runs its own small PKI: the CA signs the backbone server's certificate
(so clients can check they talk to the real server) and, for mutual TLS, one
certificate per client (so the server can check who calls). Keys are ECDSA P-256:
small, fast, and accepted by gRPC's TLS. Everything is written as PEM; private keys
are readable by their owner only.

    python -m anther.server.certs OUT_DIR --server-name backbone.example.org --client alice --client bob
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
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


def _write(out_dir: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = out_dir / f"{stem}.pem", out_dir / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return cert_path, key_path


def make_certs(out_dir: str | Path, server_names: Sequence[str] = (), clients: Sequence[str] = (),
               days: int = 365) -> CertFiles:
    """Write ``ca``, ``server`` and one ``<client>`` certificate/key pair per client into ``out_dir``.

    The server certificate names 127.0.0.1 and localhost plus ``server_names`` (host
    names or IP addresses clients will dial).
    """
    bad = [c for c in clients if c in _RESERVED or not _CLIENT_NAME.fullmatch(c)]
    if bad:
        raise ValueError(f"client names must match {_CLIENT_NAME.pattern} and not be ca or server: {bad}")
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


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m anther.server.certs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--server-name", action="append", default=[], help="extra host name or IP of the server")
    p.add_argument("--client", action="append", default=[], help="client name (one certificate each)")
    p.add_argument("--days", type=int, default=365)
    args = p.parse_args(argv)
    files = make_certs(args.out_dir, args.server_name, args.client, args.days)
    print(f"CA {files.ca_cert}\nserver {files.server_cert} {files.server_key}")
    for name, (cert, key) in files.clients.items():
        print(f"client {name} {cert} {key}")


if __name__ == "__main__":
    main()
