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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ilm.errors import ConfigError

__all__ = ["server_context", "client_context", "ClientContext", "check_pair", "https_options"]


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


class _RecordingSocket(ssl.SSLSocket):
    """A client socket whose failed handshake is noted on its context (``ClientContext.failure``)."""

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except ssl.SSLError as exc:
            ctx = self.context
            if isinstance(ctx, ClientContext):
                ctx.note_failure(exc)
            raise


class ClientContext(ssl.SSLContext):
    """A client context that remembers why its last handshake failed, for the status a peer is
    answered with (the library that connects only logs it)."""

    sslsocket_class = _RecordingSocket
    last_failure: tuple[float, str] | None = None

    def note_failure(self, exc: ssl.SSLError) -> None:
        why = getattr(exc, "verify_message", "") or exc.reason or str(exc)
        self.last_failure = (time.monotonic(), str(why))

    def failure_since(self, t: float) -> str | None:
        """Why a handshake failed at or after ``t`` (time.monotonic), if one did."""
        last = self.last_failure
        return last[1] if last is not None and last[0] >= t else None


def client_context(ca: Path | None, cert: Path | None, key: Path | None, section: str) -> ClientContext:
    """A client context with TLS 1.2 or later that checks the server's certificate against ``ca``
    (None: the system's CAs) and its name; with ``cert``/``key``, a client certificate to present.
    ConfigError naming the key ``section.tls_*`` and the file for one that is missing or not PEM."""
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED, check_hostname on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
    try:
        if ca is not None:
            ctx.load_verify_locations(cafile=str(_file(ca, f"{section}.tls_ca")))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except ssl.SSLError as exc:
        raise ConfigError(f"key '{section}.tls_ca': {ca}: not a PEM CA certificate ({exc.reason or exc})") from None
    if cert is not None and key is not None:
        try:
            ctx.load_cert_chain(_file(cert, f"{section}.tls_cert"), _file(key, f"{section}.tls_key"))
        except ssl.SSLError as exc:
            raise ConfigError(f"keys '{section}.tls_cert'/'{section}.tls_key': {cert}, {key}: "
                              f"not a PEM certificate and its private key ({exc.reason or exc})") from None
    return ctx


def https_options(cert: str, key: str, resolve: Callable[[str], Path]) -> dict[str, str]:
    """uvicorn's ssl_certfile/ssl_keyfile for ``[http] tls_cert/tls_key`` (empty: plain HTTP),
    checked first so that a bad file is a ConfigError naming it, not a traceback."""
    if not cert:
        return {}
    check_pair(resolve(cert), resolve(key), "http")
    return {"ssl_certfile": str(resolve(cert)), "ssl_keyfile": str(resolve(key))}
