"""TLS for the associations ilm opens: C-MOVE sub-associations and Storage Commitment reports.

A destination of ``[dicom.destinations.NAME]`` with ``tls = true`` is reached
over TLS 1.2 or later (PS3.15 B.9, BCP 195). Its certificate is verified: it
must chain to ``tls_ca`` (the system's CAs when not given) and name
``tls_server_name`` (default: ``host``, an IP address matched against the
certificate's IP addresses). ``tls_cert``/``tls_key`` is the client
certificate ilm presents to an AE that asks for one. The contexts are built
when the DICOM server starts, so a missing or bad file is a ConfigError
naming the key before anything listens.

When the handshake fails (an unknown CA, a wrong name, no client certificate
where one is required), nothing is sent; the C-MOVE requester is answered
with the reason (``ilm.dicom.retrieve``), which the context noted
(``ilm.security.tls.ClientContext``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ilm.config import DicomSettings
from ilm.security.tls import ClientContext, client_context

__all__ = ["DestinationTls", "destination_tls"]


@dataclass(frozen=True)
class DestinationTls:
    """The TLS of one destination: pynetdicom's ``tls_args`` for ``AE.associate``."""

    context: ClientContext
    server_name: str

    @property
    def tls_args(self) -> tuple[ClientContext, str]:
        return self.context, self.server_name


def destination_tls(settings: DicomSettings, resolve: Callable[[str], Path]) -> dict[str, DestinationTls]:
    """The destinations with ``tls = true``, by AE title (ConfigError for a bad file)."""
    out: dict[str, DestinationTls] = {}
    for name, d in settings.destinations.items():
        if not d.tls:
            continue
        ctx = client_context(resolve(d.tls_ca) if d.tls_ca else None, resolve(d.tls_cert) if d.tls_cert else None,
                             resolve(d.tls_key) if d.tls_key else None, f"dicom.destinations.{name}")
        out[name] = DestinationTls(ctx, d.tls_server_name or d.host)
    return out
