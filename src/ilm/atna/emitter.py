"""Sending DICOM audit messages without slowing the archive down.

Front-ends and the service hand events to ``AuditEmitter`` (``submit`` puts
them on a bounded queue and returns at once); one background thread turns
them into messages and writes them to the sinks of the ``[audit]`` section:

- ``file``: one RFC 5424 message per line, appended;
- ``syslog_host``: RFC 5424 over TCP (TLS with ``syslog_tls``), RFC 6587
  octet-counting frames, as IHE ATNA asks. When the receiver cannot be
  reached, messages go to the spool file (``spool``) and are sent again, in
  order, every ``retry_seconds`` until it takes them. A DICOM or HTTP
  request never waits on the receiver and never fails because of it.

The same thread follows the hash-chained audit trail (``ilm.audit``): entries
appended by any ilm process (an ``ilm apply`` that expires studies, ``ilm
purge``) are claimed in the catalog (table ``audit_export``) and sent once.
When the queue is full (the sinks are slower than the archive for a long
time), a message is dropped and counted (``dropped``), and a warning logged.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ilm.atna import messages as m
from ilm.atna.imports import ImportBatch
from ilm.atna.syslog import audit_record, octet_frame
from ilm.catalog import Catalog
from ilm.catalog.atna import claim_audit_entries, study_objects
from ilm.config import Settings
from ilm.errors import ConfigError

__all__ = ["AuditEmitter", "Retrieval", "SHIP_INTERVAL_SECONDS"]

log = logging.getLogger("ilm.atna")

SHIP_INTERVAL_SECONDS = 2.0  # how often the audit trail is checked for new entries
STREAM = "atna"
_CONNECT_TIMEOUT = 5.0


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class Retrieval:
    """A study read by a requester (C-GET, C-MOVE, WADO-RS, its metadata, export); its patient is looked up later."""

    at: datetime
    study_uid: str
    interface: str
    who: str
    instances: int
    address: str = ""  # the requester's address when ``who`` is a name (an API token's), not an AE title or IP


class _Spool:
    """Messages not yet taken by the receiver, one per line, locked against other ilm processes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, lines: Iterable[bytes]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(b"".join(line + b"\n" for line in lines))

    def has_data(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def drain(self, send: Callable[[list[bytes]], None]) -> int:
        """Send every spooled message; emptied only when ``send`` returns."""
        if not self.has_data():
            return 0
        with open(self.path, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            lines = [line for line in f.read().split(b"\n") if line]
            if lines:
                send(lines)
            f.seek(0)
            f.truncate()
        return len(lines)


class _Syslog:
    """One TCP (or TLS) connection to the audit record repository, opened on demand."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        self.host, self.port, self.context = host, port, context
        self._sock: socket.socket | None = None

    def _connection(self) -> socket.socket:
        if self._sock is not None and self._peer_closed(self._sock):
            self.close()
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=_CONNECT_TIMEOUT)
            if self.context is not None:
                try:
                    sock = self.context.wrap_socket(sock, server_hostname=self.host)
                except (OSError, ssl.SSLError):
                    sock.close()
                    raise
            self._sock = sock
        return self._sock

    @staticmethod
    def _peer_closed(sock: socket.socket) -> bool:
        """The receiver hung up: a send would be lost, reconnect first. (A TLS 1.3 receiver
        sends session tickets after the handshake: readable, yet no hang-up.)"""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        sock.setblocking(False)
        try:
            return sock.recv(4096) == b""  # anything else a receiver says is ignored
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except (OSError, ssl.SSLError):
            return True
        finally:
            sock.settimeout(_CONNECT_TIMEOUT)

    def send(self, lines: list[bytes]) -> None:
        try:
            self._connection().sendall(b"".join(octet_frame(line) for line in lines))
        except (OSError, ssl.SSLError):
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    a = settings.audit
    if not a.syslog_tls:
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(settings.resolve(a.syslog_ca)) if a.syslog_ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{settings.config_file}: key 'audit.syslog_ca': {settings.resolve(a.syslog_ca)}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if a.syslog_cert:
        try:
            ctx.load_cert_chain(str(settings.resolve(a.syslog_cert)), str(settings.resolve(a.syslog_key)))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{settings.config_file}: key 'audit.syslog_cert': {settings.resolve(a.syslog_cert)} "
                              f"and {settings.resolve(a.syslog_key)}: {getattr(exc, 'strerror', None) or exc}") from None
    return ctx


class AuditEmitter:
    """The archive's audit message sender; does nothing when ``[audit]`` names no sink."""

    def __init__(self, settings: Settings, catalog: Catalog, *,
                 ship_interval: float = SHIP_INTERVAL_SECONDS) -> None:
        a = settings.audit
        self.enabled = a.enabled
        self.dropped = 0
        self._catalog = catalog
        self._settings = settings
        self._ship_interval = ship_interval
        self._retry = a.retry_seconds
        self._hostname = socket.gethostname()
        self.source = m.AuditSource(a.source_id or settings.dicom.ae_title, a.enterprise_site_id)
        self.archive = m.Participant(a.app_name, alternative_user_id=f"AETITLES={settings.dicom.ae_title}",
                                     address=self._hostname)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=a.queue_size)
        self._file = settings.resolve(a.file) if a.file else None
        self._spool = _Spool(settings.resolve(a.spool))
        self._syslog = _Syslog(a.syslog_host, a.syslog_port, _tls_context(settings)) if a.syslog_host else None
        self._next_attempt = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._put_all(self._claim_trail())  # positions a new stream before this process appends
            self._thread = threading.Thread(target=self._run, name="ilm-atna", daemon=True)
            self._thread.start()

    # -- intake (any thread; never blocks) ------------------------------------------

    def submit(self, item: m.AuditEvent | Retrieval) -> None:
        if not self.enabled:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("audit queue full: %d message(s) dropped so far", self.dropped)

    def _put_all(self, items: Iterable[m.AuditEvent]) -> None:
        for item in items:
            self.submit(item)

    def application(self, *, started: bool, launcher: str = "", ae_title: str = "") -> None:
        """Application Activity: ``ilm serve`` started or stopped (by ``launcher``, a login name).
        ``ae_title``: the AE title it serves under, when the command line overrides the config's."""
        if ae_title:
            self.archive = m.Participant(self.archive.user_id, alternative_user_id=f"AETITLES={ae_title}",
                                         address=self.archive.address)
            if not self._settings.audit.source_id:
                self.source = m.AuditSource(ae_title, self.source.site_id)
        self.submit(m.application_activity(_now(), self.archive, started=started,
                                           launcher=m.Participant(launcher) if launcher else None))

    def import_batch(self, sender: str, address: str = "", *, ae_title: bool = False) -> ImportBatch | None:
        """A batch of instances received together (an association, a STOW-RS request, an
        ``ilm import``): one Import message per study when it is closed. ``sender``: the
        calling AE title (``ae_title``), the client's address or a login name. None when disabled."""
        if not self.enabled:
            return None
        who = m.Participant(sender or "unknown", address=address,
                            alternative_user_id=f"AETITLES={sender}" if ae_title else "")
        return ImportBatch(self._put_all, self.archive, who, clock=_now)

    def retrieved(self, study_uid: str, interface: str, who: str, instances: int, *, address: str = "") -> None:
        self.submit(Retrieval(_now(), study_uid, interface, who, instances, address))

    def queried(self, q: m.QueryAudit, *, failure: str = "") -> None:
        """A query (C-FIND, QIDO-RS) that ran, or failed for ``failure`` (outcome 4: minor failure)."""
        if not self.enabled:
            return
        who = m.Participant(q.requestor or "unknown", address=q.address,
                            alternative_user_id=f"AETITLES={q.requestor}" if q.ae_title else "")
        self.submit(m.query(_now(), self.archive, who, m.QueryObject(q.sop_class_uid, q.query, q.transfer_syntax),
                            failure=failure))

    def authentication(self, user: str, address: str = "", *, failure: str = "") -> None:
        """User Authentication: a sign-in with a token, or a token refused (``failure``: why;
        never the token itself)."""
        if not self.enabled:
            return
        self.submit(m.user_authentication(_now(), m.Participant(user or "unknown", address=address), self.archive,
                                          failure=failure))

    def security_alert(self, kind: m.Code, who: str, address: str = "", *, subject: str, failure: str,
                       ae_title: bool = False) -> None:
        """Security Alert: a request refused for its role (``RESTRICTED_FUNCTION``) or an
        association refused for its calling AE title or host (``NODE_AUTHENTICATION``).
        The queue is bounded: a flood of refusals drops messages (counted), it never blocks."""
        if not self.enabled:
            return
        performer = m.Participant(who or "unknown", address=address,
                                  alternative_user_id=f"AETITLES={who}" if ae_title else "")
        self.submit(m.security_alert(_now(), kind, self.archive, performer, subject=subject, failure=failure))

    # -- the sender thread -----------------------------------------------------------

    def _run(self) -> None:
        next_ship = time.monotonic() + self._ship_interval
        while True:
            stopping = self._stop.is_set()
            items: list[object] = []
            try:
                items.append(self._queue.get(timeout=0.2))
                while len(items) < 1000:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            taken = len(items)
            if stopping or time.monotonic() >= next_ship:
                items += self._claim_trail()
                next_ship = time.monotonic() + self._ship_interval
            try:
                self._deliver(self._resolve(items))
            except Exception:  # never let the sender die: the archive must go on
                log.exception("audit messages could not be written")
            for _ in range(taken):
                self._queue.task_done()
            if stopping and self._queue.empty():
                return

    def _claim_trail(self) -> list[m.AuditEvent]:
        try:
            with self._catalog.write() as conn:
                entries = claim_audit_entries(conn, STREAM, _now())
            if not entries:
                return []
            with self._catalog.read() as conn:
                objs = study_objects(conn, [e.study_uid for e in entries if e.study_uid])
        except Exception as exc:  # the catalog may be busy or down: the entries wait
            log.warning("audit trail not read: %s", exc)
            return []
        events = (m.from_audit_entry(e, objs.get(e.study_uid or ""), self.archive) for e in entries)
        return [ev for ev in events if ev is not None]

    def _resolve(self, items: list[object]) -> list[m.AuditEvent]:
        reads = [i for i in items if isinstance(i, Retrieval)]
        objs: dict[str, m.StudyObject] = {}
        if reads:
            try:
                with self._catalog.read() as conn:
                    objs = study_objects(conn, {r.study_uid for r in reads})
            except Exception as exc:
                log.warning("audit: studies not looked up (%s); messages name the study only", exc)
        out: list[m.AuditEvent] = []
        for i in items:
            if isinstance(i, Retrieval):
                out.append(self._retrieval_event(i, objs.get(i.study_uid) or m.StudyObject(i.study_uid)))
            elif isinstance(i, m.AuditEvent):
                out.append(i)
        return out

    def _retrieval_event(self, r: Retrieval, study: m.StudyObject) -> m.AuditEvent:
        ip = m.is_ip(r.who)
        if r.address:  # a named requester (an API token's name) and where it called from
            who = m.Participant(r.who or "unknown", address=r.address)
        else:  # an IP address, or a calling AE title
            who = m.Participant(r.who or "unknown", address=r.who if ip else "",
                                alternative_user_id="" if ip or not r.who else f"AETITLES={r.who}")
        if r.interface == "export":
            return m.instances_exported(r.at, self.archive, who, study)
        if r.interface == "wado-rs-metadata":  # attributes read, no instance sent
            return m.instances_accessed(r.at, who, study, action="R", what=r.interface)
        return m.instances_transferred(r.at, self.archive, who, study, interface=r.interface)

    def _deliver(self, events: list[m.AuditEvent]) -> None:
        if not events:
            if self._syslog is not None and self._spool.has_data():
                self._send_syslog([])
            return
        lines = []
        for ev in events:
            try:
                lines.append(audit_record(ev, self.source, hostname=self._hostname,
                                          app_name=self._settings.audit.app_name, procid=str(os.getpid())))
            except Exception:  # one message that cannot be rendered must not take its batch with it
                log.exception("audit message %s for %s not rendered", ev.event_id.code, ev.study_uids)
        if not lines:
            return
        if self._file is not None:
            try:
                self._file.parent.mkdir(parents=True, exist_ok=True)
                with open(self._file, "ab") as f:
                    f.write(b"".join(line + b"\n" for line in lines))
            except OSError as exc:
                log.error("audit file %s: %s", self._file, exc)
        if self._syslog is not None:
            self._send_syslog(lines)

    def _send_syslog(self, lines: list[bytes]) -> None:
        assert self._syslog is not None
        now = time.monotonic()
        if now < self._next_attempt:  # the receiver was down a moment ago: keep the order, spool
            if lines:
                self._spool.append(lines)
            return
        try:
            sent = self._spool.drain(self._syslog.send)
            if sent:
                log.info("audit: %d spooled message(s) sent to %s:%d", sent, self._syslog.host, self._syslog.port)
            if lines:
                self._syslog.send(lines)
        except (OSError, ssl.SSLError) as exc:
            if self._next_attempt == 0.0 or not self._spool.has_data():
                log.warning("audit receiver %s:%d unreachable (%s); spooling to %s", self._syslog.host,
                            self._syslog.port, exc, self._spool.path)
            self._next_attempt = now + self._retry
            if lines:
                self._spool.append(lines)

    # -- shutdown ----------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is empty (written or spooled); True if it was in time."""
        deadline = time.monotonic() + timeout
        while self.enabled and self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued and the trail's last entries (spooled if the receiver is down), then stop."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None
        if self._syslog is not None:
            self._syslog.close()
