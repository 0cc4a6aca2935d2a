"""TLS server contexts for DICOM (PS3.15 B.9, BCP 195) and the files HTTPS uses.

Certificates and keys are PEM files named in the config (relative to
ILM_HOME). A file that is missing or does not hold what it should is a
ConfigError naming the key and the file, raised before anything listens.

The DICOM context does its handshake in the association's own thread, not in
the thread that accepts connections: pynetdicom wraps each accepted socket
with ``SSLContext.wrap_socket``, whose default handshake would let one client
that connects and sends nothing hold every other TLS association back.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ilm.errors import ConfigError

__all__ = ["server_context", "check_pair", "https_options"]


class _LazyHandshake(ssl.SSLContext):
    """Sockets wrapped by this context shake hands on their first read, in the reading thread."""

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def _file(path: Path, key: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"key '{key}': {path}: no such file")
    return path


def check_pair(cert: Path, key: Path, section: str) -> None:
    """That ``cert`` and ``key`` exist and belong together (ConfigError naming them otherwise)."""
    server_context(cert, key, None, section)


def server_context(cert: Path, key: Path, ca: Path | None, section: str) -> ssl.SSLContext:
    """A server context with TLS 1.2 or later; with ``ca``, clients must present a certificate it signed."""
    ctx = _LazyHandshake(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
    try:
        ctx.load_cert_chain(_file(cert, f"{section}.tls_cert"), _file(key, f"{section}.tls_key"))
    except ssl.SSLError as exc:
        raise ConfigError(f"keys '{section}.tls_cert'/'{section}.tls_key': {cert}, {key}: "
                          f"not a PEM certificate and its private key ({exc.reason or exc})") from None
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(_file(ca, f"{section}.tls_ca")))
        except ssl.SSLError as exc:
            raise ConfigError(f"key '{section}.tls_ca': {ca}: not a PEM CA certificate ({exc.reason or exc})") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx



def https_options(cert: str, key: str, resolve: Callable[[str], Path]) -> dict[str, str]:
    """uvicorn's ssl_certfile/ssl_keyfile for ``[http] tls_cert/tls_key`` (empty: plain HTTP),
    checked first so that a bad file is a ConfigError naming it, not a traceback."""
    if not cert:
        return {}
    check_pair(resolve(cert), resolve(key), "http")
    return {"ssl_certfile": str(resolve(cert)), "ssl_keyfile": str(resolve(key))}
