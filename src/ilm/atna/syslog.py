"""RFC 5424 syslog messages and RFC 6587 octet-counting frames (pure).

IHE ATNA (ITI-20) sends each audit message as one RFC 5424 message over TCP
or TLS (RFC 5425), framed by octet counting: ``LEN SP MSG``. The header::

    <85>1 2026-11-28T17:00:00.123Z host ilm 4242 IHE+RFC-3881 - BOM<AuditMessage ...>

PRI 85 = facility 10 (security/authorization) * 8 + severity 5 (notice);
MSGID ``IHE+RFC-3881`` is what ATNA prescribes for DICOM/RFC 3881 audit
messages; no structured data; the MSG is UTF-8 with its byte-order mark.
"""

from __future__ import annotations

from datetime import datetime, timezone

from ilm.atna.messages import AuditEvent, AuditSource, to_xml

__all__ = ["PRI", "MSGID", "BOM", "rfc5424", "octet_frame", "header_field", "audit_record"]

PRI = 10 * 8 + 5
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"


def header_field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters, '-' when empty."""
    clean = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return clean or "-"


def rfc5424(msg: bytes, *, at: datetime, hostname: str, app_name: str, procid: str, msgid: str = MSGID,
            pri: int = PRI) -> bytes:
    """One RFC 5424 message with ``msg`` (UTF-8) as its MSG part."""
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    ts = at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    head = (f"<{pri}>1 {ts} {header_field(hostname, 255)} {header_field(app_name, 48)} "
            f"{header_field(procid, 128)} {header_field(msgid, 32)} -")
    return head.encode("ascii") + b" " + BOM + msg


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 3.4.1 octet counting: the length in bytes, a space, the message."""
    return str(len(message)).encode("ascii") + b" " + message


def audit_record(event: AuditEvent, source: AuditSource, *, hostname: str, app_name: str, procid: str) -> bytes:
    """One audit message as the RFC 5424 record ilm writes to files and sends to syslog."""
    return rfc5424(to_xml(event, source), at=event.at, hostname=hostname, app_name=app_name, procid=procid)
