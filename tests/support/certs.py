"""Certificates for TLS tests, made by trustme: a CA, a server certificate for
127.0.0.1 and a client certificate, written as PEM files into a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["Certs", "make_certs"]


@dataclass(frozen=True)
class Certs:
    ca: Path           # the CA certificate: clients verify the server with it, the server its clients
    cert: Path         # server certificate chain for 127.0.0.1
    key: Path          # its private key
    client_cert: Path  # a client certificate signed by the same CA
    client_key: Path
    trustme_ca: trustme.CA


def _chain(cert: trustme.LeafCert, path: Path) -> Path:
    path.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    return path


def make_certs(folder: Path) -> Certs:
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("modality.example")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    client.private_key_pem.write_to_path(str(folder / "client.key"))
    return Certs(ca=folder / "ca.pem", cert=_chain(server, folder / "server.pem"), key=folder / "server.key",
                 client_cert=_chain(client, folder / "client.pem"), client_key=folder / "client.key", trustme_ca=ca)
