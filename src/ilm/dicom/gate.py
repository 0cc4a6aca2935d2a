"""Who may open a DICOM association: calling AE titles, hosts, and TLS.

``[dicom] allowed_calling_aets`` and ``allowed_hosts`` (IP addresses or
networks) each admit everyone when empty. An association request from
another calling AE title, or from an address outside ``allowed_hosts``, is
answered with A-ASSOCIATE-RJ (rejected-permanent, service-user, "calling
AE title not recognized": PS3.8 has no code for a host, and the AE title is
what a host is known by), logged with the reason, and nothing else happens.

The check runs on pynetdicom's EVT_REQUESTED, which the library documents
as the place to reject an association before it is negotiated.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom import evt

from ilm.config import DicomSettings
from ilm.security.tls import server_context

if TYPE_CHECKING:
    import ssl

    from pynetdicom.events import Event

__all__ = ["refusal", "gate_handlers", "dicom_tls_context", "REJECT_CALLING_AE"]

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: result 1 rejected-permanent, source 1 service-user, reason 3 calling AE title not recognized
REJECT_CALLING_AE = (0x01, 0x01, 0x03)


def refusal(settings: DicomSettings, calling_aet: str, host: str) -> str | None:
    """Why an association from ``calling_aet`` at ``host`` is refused; None when it is allowed."""
    aet = calling_aet.strip()
    if settings.allowed_calling_aets and aet not in settings.allowed_calling_aets:
        return f"calling AE title {aet!r} is not in dicom.allowed_calling_aets"
    if settings.allowed_hosts:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return f"address {host!r} is not an IP address"
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # ::ffff:10.0.0.5 on a dual-stack socket is 10.0.0.5
        if not any(addr in ipaddress.ip_network(n, strict=False) for n in settings.allowed_hosts):
            return f"address {host} is not in dicom.allowed_hosts"
    return None


def _on_requested(event: "Event", settings: DicomSettings, on_refused: Callable[[str, str, str], None] | None) -> None:
    assoc = event.assoc
    primitive = assoc.requestor.primitive
    calling = str(getattr(primitive, "calling_ae_title", "") or "")
    host = str(assoc.requestor.address)
    why = refusal(settings, calling, host)
    if why is None:
        return
    log.warning("association from %s@%s rejected: %s", calling.strip(), host, why)
    if on_refused is not None:
        on_refused(calling, host, why)  # the audit's Security Alert; never blocks (bounded queue)
    assoc.acse.send_reject(*REJECT_CALLING_AE)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def gate_handlers(settings: DicomSettings, on_refused: Callable[[str, str, str], None] | None = None,
                  ) -> list[tuple[Any, Callable[..., None], list[Any]]]:
    """The pynetdicom handlers that enforce ``settings`` (none when everyone is allowed).
    ``on_refused(calling_aet, host, why)`` is told of every association refused."""
    if not settings.allowed_calling_aets and not settings.allowed_hosts:
        return []
    return [(evt.EVT_REQUESTED, _on_requested, [settings, on_refused])]


def dicom_tls_context(settings: DicomSettings, resolve: Callable[[str], Path]) -> "ssl.SSLContext | None":
    """The TLS context of the DICOM port, None without ``tls_cert`` (ConfigError for bad files)."""
    if not settings.tls_cert:
        return None
    return server_context(resolve(settings.tls_cert), resolve(settings.tls_key),
                          resolve(settings.tls_ca) if settings.tls_ca else None, "dicom")
