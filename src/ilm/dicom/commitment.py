"""Storage Commitment Push Model SCP (SOP Class 1.2.840.10008.1.20.1).

A modality sends an N-ACTION (Request Storage Commitment, action type 1)
listing the instances it sent, with a Transaction UID. ilm answers the
N-ACTION at once (0x0000: request accepted), then checks the catalog and
sends an N-EVENT-REPORT with the result:

- committed (Referenced SOP Sequence): the instance belongs to an active study
  and has at least one VERIFIED copy (its bytes hash to what was received),
  under the SOP Class the requester names;
- failed (Failed SOP Sequence), with a Failure Reason: 0x0112 No such object
  instance (not stored, not verified, or its study expired), 0x0119
  Class/Instance conflict (stored under another SOP Class).

Event type 1 when everything is committed, 2 when failures exist. The
report goes on the same association when it is still open a moment after the
N-ACTION response (``REPORT_GRACE_SECONDS``: a requester that releases
right away has gone by then); otherwise ilm opens a new association to the
requester's AE title as configured in ``[dicom.destinations]``, proposing
the Storage Commitment SOP Class with itself in the SCP role (PS3.4 J.3.3.1.2,
PS3.7 D.3.3.4), over TLS when that destination has ``tls = true``
(``ilm.dicom.outgoing``: its certificate verified). A requester that is not
configured, or cannot be reached, gets no report (logged, with the reason a
TLS handshake failed); it can ask again, the answer does not change unless
copies change.

N-ACTION statuses: 0x0000 accepted; 0x0123 No such action (action type other
than 1); 0x0115 Invalid argument value (no Transaction UID or no Referenced
SOP Sequence); 0x0110 Processing failure (the handler failed).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from ilm.config import DicomSettings
from ilm.dicom.outgoing import DestinationTls, destination_tls

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from ilm.service import ArchiveService

__all__ = [
    "STORAGE_COMMITMENT_INSTANCE",
    "REPORT_GRACE_SECONDS",
    "handle_commitment_request",
    "commitment_report",
    "commitment_handlers",
]

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP Instance
REPORT_GRACE_SECONDS = 0.5
EVENT_SUCCESS, EVENT_FAILURES = 1, 2

STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_INVALID_ARGUMENT = 0x0115
STATUS_NO_SUCH_ACTION = 0x0123


def _requested(info: Dataset) -> tuple[str, list[tuple[str, str]]]:
    """Transaction UID and (SOP Class UID, SOP Instance UID) pairs, or ValueError."""
    txn = str(info.get("TransactionUID", "") or "").strip()
    items = info.get("ReferencedSOPSequence")
    if not txn or not items:
        raise ValueError("Transaction UID and Referenced SOP Sequence are required")
    pairs = []
    for item in items:
        pairs.append((str(item.get("ReferencedSOPClassUID", "") or "").strip(),
                      str(item.get("ReferencedSOPInstanceUID", "") or "").strip()))
    return txn, pairs


def commitment_report(service: "ArchiveService", transaction_uid: str, pairs: list[tuple[str, str]],
                      ae_title: str) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT event type and Event Information for one request."""
    committed, failed = service.commitment(pairs)
    info = Dataset()
    info.TransactionUID = transaction_uid
    info.RetrieveAETitle = ae_title
    if committed:
        info.ReferencedSOPSequence = [_item(c, i) for c, i in committed]
    if failed:
        info.FailedSOPSequence = [_item(c, i, reason) for c, i, reason in failed]
    return (EVENT_FAILURES if failed else EVENT_SUCCESS), info


def _item(sop_class: str, sop_uid: str, reason: int | None = None) -> Dataset:
    ds = Dataset()
    ds.ReferencedSOPClassUID = sop_class
    ds.ReferencedSOPInstanceUID = sop_uid
    if reason is not None:
        ds.FailureReason = reason
    return ds


def _deliver(assoc: "Association", service: "ArchiveService", settings: DicomSettings,
             tls: dict[str, DestinationTls], requester: str, transaction_uid: str, pairs: list[tuple[str, str]]) -> None:
    """Send the report: on the requester's association if still open, else on a new one."""
    try:
        event_type, info = commitment_report(service, transaction_uid, pairs, settings.ae_title)
    except Exception:
        log.exception("storage commitment %s for %s: cannot check the catalog; no report sent", transaction_uid, requester)
        return
    time.sleep(REPORT_GRACE_SECONDS)
    if assoc.is_established:
        try:
            status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                                  STORAGE_COMMITMENT_INSTANCE)
            if status.get("Status") == 0x0000:
                log.info("storage commitment %s reported to %s on its association", transaction_uid, requester)
                return
            log.warning("storage commitment %s: %s answered the report with %r; trying a new association",
                        transaction_uid, requester, status.get("Status"))
        except Exception as exc:
            log.warning("storage commitment %s: report on the open association failed (%s); trying a new one",
                        transaction_uid, exc)
    dest = settings.destinations.get(requester)
    if dest is None:
        log.error("storage commitment %s: %s released the association and is not in dicom.destinations; "
                  "no report sent", transaction_uid, requester)
        return
    ae = AE(ae_title=settings.ae_title)
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    secure = tls.get(requester)  # [dicom.destinations.X] tls (ilm.dicom.outgoing)
    started = time.monotonic()
    out = ae.associate(dest.host, dest.port, ae_title=requester, ext_neg=[role], max_pdu=settings.maximum_pdu_size,
                       tls_args=secure.tls_args if secure is not None else None)
    if not out.is_established:
        failure = secure.context.failure_since(started) if secure is not None else None
        log.error("storage commitment %s: cannot associate with %s at %s:%d%s; no report sent",
                  transaction_uid, requester, dest.host, dest.port,
                  f": TLS handshake failed: {failure}" if failure else "")
        return
    try:
        status, _ = out.send_n_event_report(info, event_type, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
        log.info("storage commitment %s reported to %s on a new association: 0x%04X", transaction_uid, requester,
                 int(status.get("Status", 0xFFFF)))
    finally:
        out.release()


def handle_commitment_request(event: "Event", service: "ArchiveService", settings: DicomSettings,
                              tls: dict[str, DestinationTls]) -> tuple[int, None]:
    """N-ACTION: accept the request, then report from a thread (after our response is sent)."""
    if event.action_type != 1:
        return STATUS_NO_SUCH_ACTION, None
    try:
        txn, pairs = _requested(event.action_information)
    except Exception as exc:
        log.warning("storage commitment request from %s refused: %s", event.assoc.requestor.ae_title, exc)
        return STATUS_INVALID_ARGUMENT, None
    requester = str(event.assoc.requestor.ae_title).strip()
    # The reactor of this association sends our N-ACTION response when this
    # handler returns; a send from another thread waits for the reactor to pause,
    # so the report always follows the response.
    threading.Thread(target=_deliver, args=(event.assoc, service, settings, tls, requester, txn, pairs),
                     name=f"ilm-commitment-{txn[-12:]}", daemon=True).start()
    return STATUS_SUCCESS, None


def commitment_handlers(service: "ArchiveService", settings: DicomSettings) -> list[Any]:
    """The evt_handlers entry (ConfigError: a destination's TLS file is bad)."""
    return [(evt.EVT_N_ACTION, handle_commitment_request,
             [service, settings, destination_tls(settings, service.settings.resolve)])]
