"""C-GET and C-MOVE SCP: send stored instances back, from whichever tier holds them.

Information models: Patient Root and Study Root, GET and MOVE. Levels:
PATIENT (Patient Root only: every study of the Patient ID), STUDY, SERIES
and IMAGE, by unique keys (a list of UIDs is allowed at the level
retrieved; the keys of the levels above must be given, one value each).
Instances are resolved through the service, each from its hottest verified
copy, and sent as they are stored, never decoded: an instance of up to
``IN_MEMORY_BYTES`` is read (from any tier: filesystem, S3, encrypted,
packed, restored), its data set framed into PDUs for the association and
written to it directly (``ilm.dicom.store_wire``); a larger one on a
filesystem tier is sent from its file (``ilm.dicom.sending``). Every
instance is checked against the catalog's SHA-256 before it is sent (the
bytes read, or the file hashed); this, the reads and the framing run ahead
of the sending on worker threads (``ilm.readahead``), four instances ahead.
A destination that did not accept the stored transfer syntax gets the
instance converted by pynetdicom.

Before any sub-operation the handler calls ``service.prepare_read`` for each
study (waiting up to ``dicom.retrieve_wait_seconds`` for a restore) and reads
the first instance, so a study that is not readable now (archive tier, tier
down) is refused as a whole with a status and an Error Comment, before
anything is sent. Once sending has started, an instance that cannot be read
(bytes that do not match the catalog's SHA-256, a copy gone, a tier failing
meanwhile) is one failed sub-operation: the others are still sent, and the
final response names it in the Failed SOP Instance UID List. One access per
study is recorded (``note_access``) once its sending starts.

Statuses (PS3.4 C.4.2.1.5 and C.4.3.1.4), every refusal with an Error Comment:

    all sub-operations done                       0x0000 Success
    some C-STORE sub-operations failed (the       0xB000 Warning, Failed SOP Instance UID
      destination refused them, or an instance     List (pynetdicom counts them)
      could not be read or did not match its SHA-256)
    every C-STORE sub-operation failed            0xA702, Failed SOP Instance UID List
    study on an archive tier / being restored     0xA702 Refused: Out of Resources -
                                                  Unable to perform sub-operations.
                                                  "Study is being restored; ready in about N s"
    a tier cannot be read (down, object missing)  0xA702, comment names the tier
    C-MOVE destination not configured             0xA801 Refused: Move Destination unknown
    C-MOVE destination cannot be reached, or its  0xA702, "TLS to DEST: <reason>" or
      TLS handshake fails (ilm.dicom.outgoing)    "Cannot associate with DEST at host:port"
    identifier without the keys of its level      0xA900 Identifier does not match SOP Class
    cancelled by the requester (C-CANCEL)         0xFE00 Cancel

Why 0xA702 for a restore: the request is valid and the matches are known,
but the archive cannot perform the sub-operations now; "Out of Resources"
is a refusal the requester may retry later (the comment says when), unlike
the 0xCxxx "Unable to process" errors, which say the request itself failed.

pynetdicom's C-MOVE SCP answers a C-MOVE that fails before its
sub-operations (no destination yielded) with 0xA801 and no Error Comment.
``ResponseAmendments`` fixes that one response: the handler records the
status and comment it wants, yields no destination, and a handler of
``EVT_DIMSE_SENT`` (bound by the server) rewrites that C-MOVE-RSP before it
is encoded. So the requester gets, for example, 0xA702 "Study is being
restored ..." without an association to the destination being opened. The
same amendment answers a move whose destination could not be associated
with (pynetdicom's bare 0xA801 again) with 0xA702 and why: a refused TLS
handshake (the reason its context noted), or no association at all.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ilm.config import DicomSettings
from ilm.dicom.outgoing import DestinationTls, destination_tls
from ilm.dicom.sending import StoredBytes, StoredFile, Unsendable, send_files_over, sending_association, sends_files, stored_dataset
from ilm.errors import IlmError, IntegrityError, InvalidUID, NotReady, StorageError
from ilm.models import StudyFilter
from ilm.readahead import read_ahead
from ilm.uids import validate_uid

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from ilm.service import ArchiveService

__all__ = [
    "RETRIEVE_SOP_CLASSES",
    "RetrieveKeys",
    "Refusal",
    "ResponseAmendments",
    "parse_keys",
    "handle_get",
    "handle_move",
    "retrieve_handlers",
    "STATUS_CANNOT_PERFORM",
    "STATUS_MOVE_DESTINATION_UNKNOWN",
    "STATUS_IDENTIFIER_MISMATCH",
    "STATUS_CANCEL",
    "STATUS_PENDING",
]

log = logging.getLogger(__name__)

STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_CANNOT_PERFORM = 0xA702            # Refused: Out of Resources - Unable to perform sub-operations
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801  # Refused: Move Destination unknown
STATUS_IDENTIFIER_MISMATCH = 0xA900       # Error: Identifier does not match SOP Class

PATIENT_ROOT = (PatientRootQueryRetrieveInformationModelGet, PatientRootQueryRetrieveInformationModelMove)
RETRIEVE_SOP_CLASSES = (
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)
_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
_MAX_CONTEXTS = 128  # presentation contexts one association may propose
_COMMENT_MAX = 64    # Error Comment (0000,0902) is LO
# An instance up to this size is read into memory (checked) and sent from there, framed ahead
# (ilm.dicom.store_wire); a larger one is sent from its file (ilm.dicom.sending.StoredFile).
IN_MEMORY_BYTES = 32 * 1024 * 1024
PENDING_INTERVAL_SECONDS = 0.25  # C-MOVE: at most one Pending response this often (see _fewer_pendings)
_MOVE_DUL_IDLE_SECONDS = 0.005  # the requester's DUL loop while a C-MOVE sends (see handle_move)


def _comment(text: str) -> str:
    clean = " ".join("".join(c if 32 <= ord(c) < 127 and c != "\\" else " " for c in text).split())
    return clean if len(clean) <= _COMMENT_MAX else clean[: _COMMENT_MAX - 3] + "..."


class Refusal(IlmError):
    """A retrieve that cannot be performed: the status and Error Comment to answer with."""

    def __init__(self, status: int, comment: str, detail: str = "") -> None:
        super().__init__(detail or comment)
        self.status = status
        self.comment = _comment(comment)

    def status_dataset(self) -> Dataset:
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.comment
        return ds


@dataclass(frozen=True)
class RetrieveKeys:
    """The unique keys of a C-GET/C-MOVE identifier."""

    level: str
    patient_id: str = ""
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    try:
        value = ds.get(keyword)
    except Exception:
        raise Refusal(STATUS_IDENTIFIER_MISMATCH, f"{keyword} cannot be decoded") from None
    if value is None or value == "":
        return ()
    items = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    try:
        return tuple(validate_uid(v, keyword) for v in items if str(v).strip())
    except InvalidUID as exc:
        raise Refusal(STATUS_IDENTIFIER_MISMATCH, str(exc)) from None


def parse_keys(identifier: Dataset, patient_root: bool) -> RetrieveKeys:
    """The keys of a retrieve identifier, or Refusal(0xA900) saying what is missing."""
    try:
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception:
        level = ""
    if level not in _LEVELS:
        raise Refusal(STATUS_IDENTIFIER_MISMATCH, f"QueryRetrieveLevel {level!r} is not PATIENT/STUDY/SERIES/IMAGE"
                      if level else "QueryRetrieveLevel is missing")
    if level == "PATIENT":
        if not patient_root:
            raise Refusal(STATUS_IDENTIFIER_MISMATCH, "PATIENT level needs the Patient Root model")
        pid = str(identifier.get("PatientID", "") or "").strip()
        if not pid or "*" in pid or "?" in pid:
            raise Refusal(STATUS_IDENTIFIER_MISMATCH, "PATIENT level needs one PatientID, no wildcards")
        return RetrieveKeys(level, patient_id=pid)
    studies = _values(identifier, "StudyInstanceUID")
    series = _values(identifier, "SeriesInstanceUID") if level in ("SERIES", "IMAGE") else ()
    sops = _values(identifier, "SOPInstanceUID") if level == "IMAGE" else ()
    if not studies:
        raise Refusal(STATUS_IDENTIFIER_MISMATCH, f"{level} level needs StudyInstanceUID")
    if level != "STUDY" and len(studies) > 1:
        raise Refusal(STATUS_IDENTIFIER_MISMATCH, f"{level} level takes one StudyInstanceUID")
    if level in ("SERIES", "IMAGE") and not series:
        raise Refusal(STATUS_IDENTIFIER_MISMATCH, f"{level} level needs SeriesInstanceUID")
    if level == "IMAGE" and len(series) > 1:
        raise Refusal(STATUS_IDENTIFIER_MISMATCH, "IMAGE level takes one SeriesInstanceUID")
    if level == "IMAGE" and not sops:
        raise Refusal(STATUS_IDENTIFIER_MISMATCH, "IMAGE level needs SOPInstanceUID")
    return RetrieveKeys(level, study_uids=studies, series_uids=series, sop_uids=sops)


def select_instances(service: "ArchiveService", keys: RetrieveKeys) -> list[Any]:
    """The instances the keys name, each from its hottest verified copy (InstanceRef)."""
    if keys.level == "PATIENT":
        studies = [s.study_instance_uid for s in service.studies(StudyFilter(patient_id=keys.patient_id, limit=1_000_000))]
    else:
        studies = list(dict.fromkeys(keys.study_uids))
    refs: list[Any] = []
    for study in studies:
        if keys.level in ("PATIENT", "STUDY"):
            refs += service.instances_to_read(study)
        elif keys.level == "SERIES":
            for series in dict.fromkeys(keys.series_uids):
                refs += service.instances_to_read(study, series)
        elif len(keys.sop_uids) == 1:
            refs += service.instances_to_read(study, keys.series_uids[0], keys.sop_uids[0])
        else:
            wanted = set(keys.sop_uids)
            refs += [r for r in service.instances_to_read(study, keys.series_uids[0]) if r.sop_uid in wanted]
    return refs


def _not_ready_comment(exc: NotReady) -> str:
    if exc.retry_after is not None:
        return f"Study is being restored; ready in about {max(1, math.ceil(exc.retry_after))} s"
    return "Study is on an archive tier; it must be restored first"


@dataclass
class RetrievePlan:
    refs: list[Any]
    studies: list[str]
    first: Dataset | None = None  # what to send of the first instance, read while checking the tier


def plan_retrieve(service: "ArchiveService", identifier: Dataset, patient_root: bool, wait_seconds: float) -> RetrievePlan:
    """Resolve the identifier and make sure every study can be read now, or raise Refusal."""
    keys = parse_keys(identifier, patient_root)
    try:
        refs = select_instances(service, keys)
    except IlmError as exc:
        raise Refusal(STATUS_CANNOT_PERFORM, "catalog unavailable", str(exc)) from None
    studies = list(dict.fromkeys(r.study_uid for r in refs))
    for study in studies:
        try:
            service.prepare_read(study, wait_seconds=wait_seconds)
        except NotReady as exc:
            raise Refusal(STATUS_CANNOT_PERFORM, _not_ready_comment(exc), f"study {study}: {exc}") from None
        except StorageError as exc:
            raise Refusal(STATUS_CANNOT_PERFORM, f"study cannot be read: {exc}", f"study {study}: {exc}") from None
    archive = {name for name, t in service.settings.tiers.items() if t.archive}
    if any(r.tier in archive for r in refs):
        refs = select_instances(service, keys)  # restored copies are readable now: read those
    plan = RetrievePlan(refs, studies)
    if refs:  # the tier is checked on the first instance: a tier that cannot be read refuses the whole request
        ref = refs[0]
        try:
            plan.first = _load(service, ref)
        except IntegrityError as exc:  # this instance's bytes are bad, not the tier: the others are sent
            plan.first = _unsendable(ref, exc)
        except NotReady as exc:
            raise Refusal(STATUS_CANNOT_PERFORM, _not_ready_comment(exc), str(exc)) from None
        except (StorageError, IlmError) as exc:
            raise Refusal(STATUS_CANNOT_PERFORM, f"tier {ref.tier} cannot be read",
                          f"{ref.sop_uid} on tier {ref.tier!r}: {exc}") from None
    return plan


def _read_checked(service: "ArchiveService", ref: Any) -> bytes:
    """The instance's bytes, from whichever copy is readable now, checked against the catalog's
    SHA-256 by ``ArchiveService.read`` (which reads another verified copy when this one is bad)."""
    return service.read(ref)


def _load(service: "ArchiveService", ref: Any) -> Dataset:
    """What to send of one instance: its checked file (a plain file on a filesystem tier,
    sent as it is) or the dataset of its checked bytes (ilm.dicom.sending). A file that does
    not match its SHA-256 is not sent: the read marks it bad and sends another verified copy."""
    if int(ref.size) <= IN_MEMORY_BYTES:
        return StoredBytes(ref.sop_class_uid, ref.sop_uid, _read_checked(service, ref))
    try:
        checked = service.checked_file(ref)
    except IntegrityError:
        checked = None
    if checked is not None:
        return StoredFile(ref.sop_class_uid, ref.sop_uid, checked, lambda: _read_checked(service, ref))
    return stored_dataset(_read_checked(service, ref))


def _unsendable(ref: Any, exc: Exception) -> Unsendable:
    log.warning("instance %s of study %s cannot be sent (a failed sub-operation): %s", ref.sop_uid, ref.study_uid, exc)
    return Unsendable(ref.sop_class_uid, ref.sop_uid, str(exc))


def _load_or_fail(service: "ArchiveService", ref: Any) -> Dataset:
    try:
        return _load(service, ref)
    except IlmError as exc:  # StorageError (IntegrityError, ObjectNotFound, NotReady ...) or a catalog error
        return _unsendable(ref, exc)


def _instances(service: "ArchiveService", plan: RetrievePlan,
               sender: Callable[[], "Association | None"]) -> Iterator[tuple[Any, Dataset]]:
    """Each instance with what to send of it, read ahead on worker threads (hashing included,
    and, for an instance held in memory, its data set framed for the sending association)."""
    if not plan.refs:
        return
    assert plan.first is not None
    yield plan.refs[0], plan.first
    rest = plan.refs[1:]

    def load(ref: Any) -> Dataset:
        item = _load_or_fail(service, ref)
        assoc = sender()
        if isinstance(item, StoredBytes) and assoc is not None:
            item.frame_for(assoc)
        return item

    yield from read_ahead(load, rest, window=4, size=lambda r: int(r.size))


def _failed_list(uids: Sequence[str]) -> Dataset:
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = list(uids)
    return ds


def _send(event: "Event", service: "ArchiveService", plan: RetrievePlan, interface: str,
          sender: Callable[[], "Association | None"]) -> Iterator[Any]:
    """Yield the number of sub-operations, then (status, dataset) per instance.

    An instance that cannot be read is yielded as an ``Unsendable``: pynetdicom counts it
    as a failed sub-operation (its UID in the Failed SOP Instance UID List) and the others
    are still sent; the final status is 0xB000 Warning, or 0xA702 when every one failed."""
    yield len(plan.refs)
    who = str(event.assoc.requestor.ae_title).strip()
    counts: dict[str, int] = {}
    for r in plan.refs:
        counts[r.study_uid] = counts.get(r.study_uid, 0) + 1
    for study in plan.studies:
        service.note_access(study, interface, who, counts[study])
    assoc = sender()
    files = assoc is not None and sends_files(assoc)
    for done, (ref, item) in enumerate(_instances(service, plan, sender if files else lambda: None)):
        if event.is_cancelled:
            yield STATUS_CANCEL, _failed_list([r.sop_uid for r in plan.refs[done:]])
            return
        if isinstance(item, (StoredFile, StoredBytes)) and not files:
            try:
                item = item.as_dataset()
            except IlmError as exc:
                item = _unsendable(ref, exc)
        yield STATUS_PENDING, item


def _patient_root(event: "Event") -> bool:
    return str(event.request.AffectedSOPClassUID) in PATIENT_ROOT


def _identifier(event: "Event") -> Dataset:
    try:
        return event.identifier
    except Exception as exc:
        raise Refusal(STATUS_IDENTIFIER_MISMATCH, "identifier cannot be decoded", str(exc)) from None


def handle_get(event: "Event", service: "ArchiveService", settings: DicomSettings) -> Iterator[Any]:
    """C-GET: send the matching instances over the requester's own association."""
    send_files_over(event.assoc)
    try:
        plan = plan_retrieve(service, _identifier(event), _patient_root(event), settings.retrieve_wait_seconds)
    except Refusal as exc:
        log.warning("C-GET from %s refused: 0x%04X %s", event.assoc.requestor.ae_title, exc.status, exc)
        yield 1
        yield exc.status_dataset(), _failed_list([])
        return
    yield from _send(event, service, plan, "c-get", lambda: event.assoc)


@dataclass
class ResponseAmendments:
    """Status and Error Comment to put on C-MOVE responses that pynetdicom sends as
    a bare 0xA801 (see the module docstring), keyed by association and message ID."""

    _pending: dict[tuple[int, int], Refusal | Callable[[], Refusal]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refuse(self, event: "Event", refusal: Refusal | Callable[[], Refusal]) -> None:
        with self._lock:
            self._pending[(id(event.assoc), int(event.request.MessageID or 0))] = refusal

    def if_unreachable(self, event: "Event", name: str, host: str, port: int, tls: DestinationTls | None) -> None:
        """A destination was yielded: should pynetdicom answer 0xA801 next (the association to it could
        not be opened), answer 0xA702 with why instead; any other response drops this."""
        started = time.monotonic()

        def why() -> Refusal:
            failure = tls.context.failure_since(started) if tls is not None else None
            if failure is not None:
                return Refusal(STATUS_CANNOT_PERFORM, f"TLS to {name}: {failure}",
                               f"C-MOVE destination {name} at {host}:{port}: TLS handshake failed: {failure}")
            return Refusal(STATUS_CANNOT_PERFORM, f"Cannot associate with {name} at {host}:{port}",
                           f"C-MOVE destination {name} at {host}:{port}: no association"
                           + (" (over TLS)" if tls is not None else ""))

        self.refuse(event, why)

    def on_sent(self, event: "Event") -> None:
        """EVT_DIMSE_SENT: amend the C-MOVE-RSP a refusal was recorded for."""
        msg = event.message
        if type(msg).__name__ != "C_MOVE_RSP" or not self._pending:
            return
        cs = msg.command_set
        with self._lock:
            pending = self._pending.pop((id(event.assoc), int(cs.MessageIDBeingRespondedTo)), None)
        if pending is None or cs.Status != STATUS_MOVE_DESTINATION_UNKNOWN:
            return
        refusal = pending if isinstance(pending, Refusal) else pending()
        if not isinstance(pending, Refusal):
            log.warning("C-MOVE failed: %s", refusal)
        from pynetdicom.dsutils import encode

        cs.Status = refusal.status
        cs.ErrorComment = refusal.comment
        del cs.CommandGroupLength  # the command set grew: its group length must be computed again
        cs.CommandGroupLength = len(encode(cs, True, True) or b"")


def _store_contexts(refs: Sequence[Any]) -> list[Any]:
    """Presentation contexts for sending these instances: one per SOP class and stored
    transfer syntax, offering that syntax alone (so that an instance goes out as it is
    stored, from its file); then, per SOP class stored uncompressed, one offering every
    uncompressed syntax, for a destination that refuses the stored one (pynetdicom converts)."""
    exact: dict[tuple[str, str], None] = {}
    convertible: dict[str, None] = {}
    for r in refs:
        ts = str(r.transfer_syntax_uid)
        exact[(str(r.sop_class_uid), ts)] = None
        if ts in _UNCOMPRESSED:
            convertible[str(r.sop_class_uid)] = None
    contexts = [build_context(sop_class, [ts]) for sop_class, ts in exact]
    contexts += [build_context(sop_class, list(_UNCOMPRESSED)) for sop_class in convertible]
    if len(contexts) > _MAX_CONTEXTS:
        log.warning("C-MOVE needs %d presentation contexts; proposing the first %d", len(contexts), _MAX_CONTEXTS)
    return contexts[:_MAX_CONTEXTS]


def handle_move(event: "Event", service: "ArchiveService", settings: DicomSettings,
                amendments: ResponseAmendments, tls: dict[str, DestinationTls]) -> Iterator[Any]:
    """C-MOVE: send the matching instances to a configured destination AE (over TLS when it has ``tls``)."""
    requester = str(event.assoc.requestor.ae_title).strip()
    name = (event.move_destination or "").strip()
    dest = settings.destinations.get(name)
    try:
        if dest is None:
            raise Refusal(STATUS_MOVE_DESTINATION_UNKNOWN, f"Unknown move destination {name!r}: not in dicom.destinations")
        plan = plan_retrieve(service, _identifier(event), _patient_root(event), settings.retrieve_wait_seconds)
    except Refusal as exc:
        log.warning("C-MOVE from %s to %r refused: 0x%04X %s", requester, name, exc.status, exc)
        amendments.refuse(event, exc)
        yield None, None
        return
    # The sub-association: opened once per move, proposing exactly the SOP classes and transfer
    # syntaxes of the instances to send; pynetdicom sends PDUs as large as the destination accepts
    # (its maximum length; unlimited when it says 0). Its send_c_store sends files (ilm.dicom.sending).
    sub: list[Any] = []

    def established(ev: "Event") -> None:
        sending_association(ev)
        sub.append(ev.assoc)

    options: dict[str, Any] = {"contexts": _store_contexts(plan.refs), "max_pdu": settings.maximum_pdu_size,
                               "evt_handlers": [(evt.EVT_ESTABLISHED, established)]}
    secure = tls.get(name)
    if secure is not None:
        options["tls_args"] = secure.tls_args
    amendments.if_unreachable(event, name, dest.host, dest.port, secure)
    yield dest.host, dest.port, options
    # While the sub-operations run, the requester's association only carries the pending C-MOVE
    # responses (nobody waits for them) and perhaps a C-CANCEL (looked at between sub-operations):
    # its DUL loop idles at _MOVE_DUL_IDLE_SECONDS instead of spinning every 0.2 ms
    # (ilm.dicom.prompt) and taking CPU from the C-STOREs. Measured, same minutes: 74 instead of
    # 62 instances/s, 4.2 instead of 5.2 ms of ilm's CPU per instance.
    dul = event.assoc.dul
    idle = dul._run_loop_delay
    dul._run_loop_delay = max(idle, _MOVE_DUL_IDLE_SECONDS)
    dimse = event.assoc.dimse
    setattr(dimse, "send_msg", _fewer_pendings(dimse.send_msg))
    try:
        yield from _send(event, service, plan, "c-move", lambda: sub[0] if sub else None)
    finally:
        dul._run_loop_delay = idle
        vars(dimse).pop("send_msg", None)  # pynetdicom's own again, for the final response


def _fewer_pendings(send_msg: Callable[[Any, int], None]) -> Callable[[Any, int], None]:
    """pynetdicom's C-MOVE SCP sends a Pending C-MOVE-RSP after every sub-operation, on the
    path between one C-STORE and the next (building and encoding it takes 0.3-0.6 ms of the
    5-7 ms an instance takes). PS3.4 C.4.2.3.1 makes Pending responses optional; ilm sends the
    first, then at most one per ``PENDING_INTERVAL_SECONDS``: the requester still sees the
    counts move, and the final response carries them all."""
    last = [-math.inf]

    def send(primitive: Any, context_id: int) -> None:
        if type(primitive).__name__ == "C_MOVE" and primitive.Status == STATUS_PENDING:
            now = time.monotonic()
            if now - last[0] < PENDING_INTERVAL_SECONDS:
                return
            last[0] = now
        send_msg(primitive, context_id)

    return send


def retrieve_handlers(service: "ArchiveService", settings: DicomSettings) -> list[Any]:
    """The evt_handlers entries of the retrieve services (ConfigError: a destination's TLS file is bad)."""
    amendments = ResponseAmendments()
    tls = destination_tls(settings, service.settings.resolve)
    return [
        (evt.EVT_C_GET, handle_get, [service, settings]),
        (evt.EVT_C_MOVE, handle_move, [service, settings, amendments, tls]),
        (evt.EVT_DIMSE_SENT, amendments.on_sent),
    ]
