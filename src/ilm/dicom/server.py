"""The DICOM network front-end: a pynetdicom AE with C-ECHO and C-STORE SCP.

Thin by design: a handler translates a DIMSE request into one call of the
service layer and the service's answer into a DIMSE status. Dependencies
reach the handlers through pynetdicom's ``evt_handlers`` extra arguments;
there is no module state.

Speed: the C-STORE handler hands the dataset to the service exactly as it was
received (``event.request.DataSet``, already encoded in the negotiated
transfer syntax) plus the file meta pynetdicom builds for it; nothing is
decoded and re-encoded here. With ``maximum_pdu_size = 0`` (unlimited) the
peer sends a 512 KB image in a handful of PDUs instead of thirty-odd.

Statuses (PS3.4 B.2.3 and PS3.7 Annex C), each failure with an Error Comment:

    STORED, DUPLICATE (same UID, same bytes)   0x0000 Success
    CONFLICT (same UID, other bytes)           0x0111 Failure: Duplicate SOP Instance
    REJECTED, archive at fault (tier, catalog) 0xA700 Refused: Out of Resources
    REJECTED, data at fault (not DICOM, UIDs)  0xC000 Error: Cannot Understand
    the handler raised                         0xC211 (pynetdicom's code for it)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pynetdicom import (
    ALL_TRANSFER_SYNTAXES, AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts, evt,
)
from pynetdicom import _config
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ilm.config import DicomSettings
from ilm.dicom.find import FIND_MODELS, QUERY_TRANSFER_SYNTAXES, handle_find
from ilm.dicom.commitment import commitment_handlers
from ilm.dicom.gate import dicom_tls_context, gate_handlers
from ilm.dicom.parse import FileMeta
from ilm.dicom.prompt import prompt_association
from ilm.dicom.retrieve import RETRIEVE_SOP_CLASSES, retrieve_handlers
from ilm.models import IngestResult, IngestStatus

if TYPE_CHECKING:
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event
    from pynetdicom.transport import ThreadedAssociationServer

    from ilm.service import ArchiveService

__all__ = [
    "DicomServer",
    "start_dicom_server",
    "handle_echo",
    "handle_store",
    "store_status",
    "STATUS_SUCCESS",
    "STATUS_DUPLICATE_CONFLICT",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_HANDLER_FAILED",
    "TRANSFER_SYNTAXES",
]

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_DUPLICATE_CONFLICT = 0x0111   # PS3.7 C.4: Duplicate SOP Instance
STATUS_OUT_OF_RESOURCES = 0xA700     # PS3.4 B.2.3: Refused: Out of Resources
STATUS_CANNOT_UNDERSTAND = 0xC000    # PS3.4 B.2.3: Error: Cannot Understand
STATUS_HANDLER_FAILED = 0xC211       # pynetdicom: exception in the handler

# Every transfer syntax pynetdicom knows: the archive keeps the bytes as sent
# and never decodes pixel data, so it can accept any encoding. When a peer
# offers several in one presentation context, pynetdicom takes the first of
# this list that the peer offers: lossless before lossy (never accept a lossy
# copy when a lossless one is offered), and compressed lossless before
# uncompressed (same pixels, less storage).
_PREFERRED = (
    "1.2.840.10008.1.2.4.80",   # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.90",   # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.70",   # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",   # JPEG Lossless
    "1.2.840.10008.1.2.5",      # RLE Lossless
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.92",   # JPEG 2000 Multi-component Lossless
    "1.2.840.10008.1.2.1",      # Explicit VR Little Endian
    "1.2.840.10008.1.2",        # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",   # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",      # Explicit VR Big Endian
)
TRANSFER_SYNTAXES: tuple[str, ...] = _PREFERRED + tuple(
    ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _PREFERRED
)

_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO: at most 64 characters


def _comment(text: str) -> str:
    """Text fit for an LO element: printable, no backslash, at most 64 chars."""
    clean = "".join(c if 32 <= ord(c) < 127 and c != "\\" else " " for c in text)
    clean = " ".join(clean.split())
    return clean if len(clean) <= _COMMENT_MAX else clean[: _COMMENT_MAX - 3] + "..."


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = _comment(comment)
    return ds


def store_status(result: IngestResult) -> int | Dataset:
    """The C-STORE response status for one service result (see module docstring)."""
    if result.status in (IngestStatus.STORED, IngestStatus.DUPLICATE):
        return STATUS_SUCCESS
    if result.status is IngestStatus.CONFLICT:
        return _status(STATUS_DUPLICATE_CONFLICT, "SOP Instance UID exists with other content; kept aside")
    if result.retryable:
        return _status(STATUS_OUT_OF_RESOURCES, result.reason or "archive storage failed")
    return _status(STATUS_CANNOT_UNDERSTAND, result.reason or "dataset refused")


def _source(event: "Event") -> str:
    peer = event.assoc.requestor
    return f"dicom:{peer.ae_title}@{peer.address}"


def handle_echo(event: "Event") -> int:
    """C-ECHO: the archive is up."""
    return STATUS_SUCCESS


class ImportBatches:
    """The audit batch of each association (one Import message per study per association),
    closed when the association's connection closes (EVT_CONN_CLOSE)."""

    def __init__(self, service: "ArchiveService") -> None:
        self._service = service
        self._open: dict[int, Any] = {}
        self._lock = threading.Lock()

    def of(self, event: "Event") -> Any:
        key = id(event.assoc)
        with self._lock:
            if key not in self._open:
                peer = event.assoc.requestor
                self._open[key] = self._service.import_batch(str(peer.ae_title).strip(), str(peer.address),
                                                             ae_title=True)
            return self._open[key]

    def close(self, event: "Event") -> None:
        with self._lock:
            batch = self._open.pop(id(event.assoc), None)
        if batch is not None:
            batch.close()


def handle_store(event: "Event", service: "ArchiveService", batches: ImportBatches | None = None) -> int | Dataset:
    """C-STORE: store the dataset as received; answer with the service's verdict."""
    request = cast("C_STORE", event.request)
    try:
        raw = request.DataSet  # the dataset as received, in the negotiated transfer syntax
        data = raw.getvalue() if isinstance(raw, BytesIO) else bytes(raw or b"")
        # The file meta from the request itself (what pynetdicom's event.file_meta holds, without
        # building a pydicom Dataset for it: that alone cost a tenth of a millisecond per instance).
        meta = FileMeta(str(request.AffectedSOPClassUID or ""), str(request.AffectedSOPInstanceUID or ""),
                        str(event.context.transfer_syntax), PYNETDICOM_IMPLEMENTATION_UID,
                        PYNETDICOM_IMPLEMENTATION_VERSION)
        result = service.ingest_dataset(meta, data, _source(event),
                                        batch=batches.of(event) if batches is not None else None)
    except Exception as exc:  # never let one request take the server down
        log.exception("C-STORE handler failed")
        return _status(STATUS_HANDLER_FAILED, f"internal error: {type(exc).__name__}: {exc}")
    if result.status not in (IngestStatus.STORED, IngestStatus.DUPLICATE):
        log.warning("C-STORE %s from %s: %s: %s", request.AffectedSOPInstanceUID, result.source,
                    result.status.value, result.reason)
    return store_status(result)


@dataclass
class DicomServer:
    """A running AE; ``shutdown()`` stops it and closes open associations."""

    ae: AE
    server: "ThreadedAssociationServer"
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def ae_title(self) -> str:
        return str(self.ae.ae_title)

    def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting; give open associations ``grace`` seconds to finish, then abort them.

        A C-STORE in progress either completes (and is acknowledged) or is
        never acknowledged: the sender will send it again.
        """
        if self._stopped.is_set():
            return
        self.server.shutdown()
        deadline = time.monotonic() + grace
        # Only established associations can have work in flight; a bare TCP
        # connection (a port probe) would otherwise hold us until its ACSE timeout.
        while any(a.is_established for a in self.ae.active_associations) and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            assoc.abort()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``shutdown()``; True if it happened within ``timeout``."""
        return self._stopped.wait(timeout)


class _QuickCopyContext(PresentationContext):
    """A supported presentation context that pynetdicom copies quickly. pynetdicom deep-copies
    the supported contexts for every association it accepts: ilm's 176, with some 7,700
    transfer syntax UIDs, took 30-90 ms of CPU per association that way (UID is a str
    subclass, copied through its reduce protocol). A UID is immutable, so a copy with its
    own attributes and its own list of them is as good as a deep copy."""

    @classmethod
    def of(cls, cx: PresentationContext) -> "_QuickCopyContext":
        new = cls()
        new.__dict__.update(cx.__dict__)
        new._transfer_syntax = list(cx.transfer_syntax)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> "_QuickCopyContext":
        return self.of(self)


def build_ae(settings: DicomSettings, contexts: Sequence[Any] = AllStoragePresentationContexts) -> AE:
    """An AE that accepts verification and every storage SOP class in any transfer syntax."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.maximum_pdu_size
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    for cx in contexts:
        # scp_role: a C-GET requester receives the instances as Storage SCP on its own association
        ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    for uid in (*RETRIEVE_SOP_CLASSES, "1.2.840.10008.1.20.1"):  # C-GET/C-MOVE, Storage Commitment Push Model
        ae.add_supported_context(uid)
    return ae


def start_dicom_server(service: "ArchiveService", settings: DicomSettings | None = None, block: bool = False) -> DicomServer:
    """Start the C-ECHO / C-STORE SCP on ``settings.host:settings.port`` (port 0: any free one).

    Returns at once with the running server, or with ``block=True`` only
    after it has been shut down (from another thread).
    """
    settings = settings or service.settings.dicom
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        # pynetdicom's standard handlers format every PDU and DIMSE message (a copy of each
        # dataset included) for log lines at INFO and DEBUG: with those off, bind none of them.
        _config.LOG_HANDLER_LEVEL = "none"
    ae = build_ae(settings)
    for model in FIND_MODELS:  # C-FIND: Patient Root and Study Root (ilm.dicom.find)
        ae.add_supported_context(model, QUERY_TRANSFER_SYNTAXES)
    batches = ImportBatches(service)  # audit: one Import message per study per association
    handlers: list[Any] = [
        *gate_handlers(settings, service.association_refused),  # allowed calling AE titles and hosts (ilm.dicom.gate)
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [service, batches]),
        (evt.EVT_CONN_CLOSE, batches.close),
        (evt.EVT_CONN_OPEN, prompt_association),  # no 1 ms polling waits per instance (ilm.dicom.prompt)
        (evt.EVT_C_FIND, handle_find, [service]),
        *retrieve_handlers(service, settings),
        *commitment_handlers(service, settings),
    ]
    tls = dicom_tls_context(settings, service.settings.resolve)  # TLS on this port when tls_cert is set
    server = ae.start_server((settings.host, settings.port), block=False, evt_handlers=handlers, ssl_context=tls,
                             contexts=[_QuickCopyContext.of(cx) for cx in ae.supported_contexts])
    assert server is not None  # block=False returns the server
    running = DicomServer(ae=ae, server=server)
    log.info("DICOM AE %s listening on %s:%d", settings.ae_title, running.host, running.port)
    if block:
        running.wait()
    return running
