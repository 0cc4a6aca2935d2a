"""A small syslog receiver for the audit tests: RFC 6587 octet-counted frames over
TCP (optionally TLS) on 127.0.0.1, written here so that the test parses what
ilm sent independently of ilm's own code.

``SyslogReceiver().start()`` listens on a free port in a thread of the test
process; ``stop()`` closes it. ``messages`` holds each frame's message bytes;
``parse`` splits one into its RFC 5424 header fields and the XML.
"""

from __future__ import annotations

import re
import socket
import socketserver
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

__all__ = ["SyslogReceiver", "Syslog5424", "parse", "read_frames", "wait_for"]

_HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<version>1) (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
    rb"(?P<sd>-|\[.*?\]) (?P<msg>.*)$", re.S)


@dataclass
class Syslog5424:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    bom: bool
    xml: ET.Element


def parse(message: bytes) -> Syslog5424:
    m = _HEADER.match(message)
    assert m, f"not an RFC 5424 message: {message[:120]!r}"
    body = m.group("msg")
    bom = body.startswith(b"\xef\xbb\xbf")
    root = ET.fromstring(body[3:] if bom else body)
    return Syslog5424(int(m.group("pri")), m.group("ts").decode(), m.group("host").decode(), m.group("app").decode(),
                      m.group("procid").decode(), m.group("msgid").decode(), m.group("sd").decode(), bom, root)


def read_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """Octet-counted frames (``LEN SP MSG``) from a buffer; the rest that is not complete yet."""
    frames: list[bytes] = []
    while data:
        space = data.find(b" ")
        if space < 0:
            break
        length = data[:space]
        assert length.isdigit() and not length.startswith(b"0"), f"bad frame length {length[:20]!r}"
        end = space + 1 + int(length)
        if len(data) < end:
            break
        frames.append(data[space + 1:end])
        data = data[end:]
    return frames, data


class SyslogReceiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.messages: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self, port: int = 0) -> "SyslogReceiver":
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: Any = self.request
                if receiver.tls is not None:
                    try:
                        sock = receiver.tls.wrap_socket(sock, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                with receiver._lock:
                    receiver.connections += 1
                rest = b""
                while True:
                    try:
                        chunk = sock.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    frames, rest = read_frames(rest + chunk)
                    with receiver._lock:
                        receiver.messages.extend(frames)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def parsed(self) -> list[Syslog5424]:
        with self._lock:
            return [parse(m) for m in self.messages]


def wait_for(condition: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition()`` until it returns something truthy (a generous deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
