"""DICOM audit messages (PS3.15 A.5, IHE ATNA): ilm's events as AuditMessage XML.

Pure: values in, XML out, no I/O. Each builder returns an ``AuditEvent`` for
one event of PS3.15 A.5.3; ``to_xml`` renders it with ``xml.etree`` in the
element order of the A.5.1 schema::

    AuditMessage
      EventIdentification (EventActionCode, EventDateTime, EventOutcomeIndicator)
        EventID, EventTypeCode*, EventOutcomeDescription?
      ActiveParticipant+ (UserID, AlternativeUserID?, UserName?, UserIsRequestor,
                          NetworkAccessPointID?, NetworkAccessPointTypeCode?)
        RoleIDCode*
      AuditSourceIdentification (AuditEnterpriseSiteID?, AuditSourceID)
        AuditSourceTypeCode
      ParticipantObjectIdentification* (ParticipantObjectID, ...TypeCode, ...TypeCodeRole)
        ParticipantObjectIDTypeCode, ParticipantObjectName | ParticipantObjectQuery,
        ParticipantObjectDetail*, ParticipantObjectDescription (SOPClass, Accession)

Every message names at most one patient (A.5.3: "may only include
information about a single patient"), so a study is one message.

``from_audit_entry`` maps an entry of ilm's hash-chained trail (``ilm.audit``)
to its DICOM message, or None for entries with no DICOM event (plans, holds,
labels): the trail stays the complete record; the messages are its export.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from ilm.audit import AuditEntry

__all__ = [
    "Code", "Participant", "StudyObject", "QueryObject", "QueryAudit", "AuditSource", "AuditEvent",
    "APPLICATION_ACTIVITY", "INSTANCES_ACCESSED", "INSTANCES_TRANSFERRED", "STUDY_DELETED", "EXPORT", "IMPORT",
    "QUERY", "APPLICATION_START", "APPLICATION_STOP", "SECURITY_ALERT", "USER_AUTHENTICATION", "LOGIN",
    "NODE_AUTHENTICATION", "RESTRICTED_FUNCTION",
    "application_activity", "user_authentication", "security_alert", "instances_imported", "instances_transferred", "instances_exported",
    "instances_accessed", "study_deleted", "query", "from_audit_entry", "to_xml", "is_ip",
]


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value: csd-code, codeSystemName, originalText (the code meaning)."""

    code: str
    system: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


# Event IDs (PS3.15 A.5.3) and the codes the messages use (PS3.16 CID 400-405).
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
INSTANCES_ACCESSED = _dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = _dcm("110105", "DICOM Study Deleted")
EXPORT = _dcm("110106", "Export")
IMPORT = _dcm("110107", "Import")
QUERY = _dcm("110112", "Query")
SECURITY_ALERT = _dcm("110113", "Security Alert")
USER_AUTHENTICATION = _dcm("110114", "User Authentication")
APPLICATION_START = _dcm("110120", "Application Start")
APPLICATION_STOP = _dcm("110121", "Application Stop")
LOGIN = _dcm("110122", "Login")
NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")
ROLE_APPLICATION = _dcm("110150", "Application")
ROLE_LAUNCHER = _dcm("110151", "Application Launcher")
ROLE_DESTINATION = _dcm("110152", "Destination Role ID")
ROLE_SOURCE = _dcm("110153", "Source Role ID")
STUDY_UID_TYPE = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID_TYPE = _dcm("110181", "SOP Class UID")
PATIENT_NUMBER_TYPE = Code("2", "RFC-3881", "Patient Number")
URI_TYPE = Code("12", "RFC-3881", "URI")

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # the query model QIDO-RS mirrors


@dataclass(frozen=True, slots=True)
class Participant:
    """An ActiveParticipant: a user, process or AE (``address``: its host or IP)."""

    user_id: str
    requestor: bool = False
    role: Code | None = None
    alternative_user_id: str = ""
    user_name: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class StudyObject:
    """A study and its patient, as the participant objects of a message."""

    study_uid: str
    patient_id: str = ""
    issuer: str = ""
    patient_name: str = ""
    accession_number: str = ""
    sop_classes: tuple[tuple[str, int], ...] = ()  # (SOP Class UID, number of instances)


@dataclass(frozen=True, slots=True)
class QueryObject:
    """A query (A.5.3.10): the SOP Class of the query model and the query as received."""

    sop_class_uid: str
    query: bytes
    transfer_syntax: str = ""


@dataclass(frozen=True, slots=True)
class QueryAudit:
    """Who queried and the query as received, as a front-end hands it to ``ArchiveService.query``:
    a C-FIND identifier in its transfer syntax, or a QIDO-RS request's path and query string."""

    requestor: str
    address: str = ""
    sop_class_uid: str = STUDY_ROOT_FIND
    query: bytes = b""
    transfer_syntax: str = ""
    ae_title: bool = False  # requestor is a calling AE title


@dataclass(frozen=True, slots=True)
class AuditSource:
    """AuditSourceIdentification: who reports (source id, site), type 4 = application server."""

    source_id: str
    site_id: str = ""
    type_code: str = "4"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    event_id: Code
    action: str  # C R U D E
    at: datetime
    participants: tuple[Participant, ...]
    outcome: int = 0  # 0 success, 4 minor, 8 serious, 12 major failure
    outcome_description: str = ""
    type_code: Code | None = None
    studies: tuple[StudyObject, ...] = ()
    query: QueryObject | None = None
    details: tuple[tuple[str, str], ...] = ()  # ParticipantObjectDetail of the study
    alert_subject: str = ""  # Security Alert: what was asked for (a route, a DICOM service), as a URI

    @property
    def study_uids(self) -> list[str]:
        return [s.study_uid for s in self.studies]


# -- builders (PS3.15 A.5.3) -----------------------------------------------------


def application_activity(at: datetime, application: Participant, *, started: bool,
                         launcher: Participant | None = None) -> AuditEvent:
    """A.5.3.1: the application started or stopped (action E)."""
    people: tuple[Participant, ...] = (_role(application, ROLE_APPLICATION, False),)
    if launcher is not None:
        people += (_role(launcher, ROLE_LAUNCHER, True),)
    return AuditEvent(APPLICATION_ACTIVITY, "E", at, people,
                      type_code=APPLICATION_START if started else APPLICATION_STOP)


def instances_imported(at: datetime, archive: Participant, sender: Participant, study: StudyObject, *,
                       failed: int = 0) -> AuditEvent:
    """A.5.3.8 Import (action C): the sender is the source, the archive the destination.
    ``failed``: instances of the study refused in the same batch (minor failure)."""
    return AuditEvent(IMPORT, "C", at, (_role(sender, ROLE_SOURCE, True), _role(archive, ROLE_DESTINATION, False)),
                      outcome=4 if failed else 0,
                      outcome_description=f"{failed} instance(s) of the study refused" if failed else "",
                      studies=(study,))


def instances_transferred(at: datetime, archive: Participant, receiver: Participant, study: StudyObject, *,
                          interface: str) -> AuditEvent:
    """A.5.3.5 Instances Transferred (action R: the archive sends what it holds)."""
    return AuditEvent(INSTANCES_TRANSFERRED, "R", at,
                      (_role(archive, ROLE_SOURCE, False), _role(receiver, ROLE_DESTINATION, True)),
                      studies=(study,), details=(("Interface", interface),))


def instances_exported(at: datetime, archive: Participant, receiver: Participant, study: StudyObject) -> AuditEvent:
    """A.5.3.7 Export (action R)."""
    return AuditEvent(EXPORT, "R", at, (_role(archive, ROLE_SOURCE, False), _role(receiver, ROLE_DESTINATION, True)),
                      studies=(study,))


def instances_accessed(at: datetime, actor: Participant, study: StudyObject, *, action: str,
                       what: str) -> AuditEvent:
    """A.5.3.4 Instances Accessed: a change to a stored study (action U) or a read (R)."""
    return AuditEvent(INSTANCES_ACCESSED, action, at, (_role(actor, None, True),), studies=(study,),
                      details=(("ilm-action", what),))


def study_deleted(at: datetime, actor: Participant, study: StudyObject, *, phase: str) -> AuditEvent:
    """A.5.3.6 Study Deleted (action D). ``phase``: 'quarantined' (expired, restorable) or 'purged'."""
    return AuditEvent(STUDY_DELETED, "D", at, (_role(actor, None, True),), studies=(study,),
                      details=(("ilm-phase", phase),))


def query(at: datetime, archive: Participant, requestor: Participant, q: QueryObject, *,
          failure: str = "") -> AuditEvent:
    """A.5.3.10 Query (action E): the requestor is the source, the archive the destination.
    ``failure``: why it could not run (outcome 4)."""
    return AuditEvent(QUERY, "E", at, (_role(requestor, ROLE_SOURCE, True), _role(archive, ROLE_DESTINATION, False)),
                      outcome=4 if failure else 0, outcome_description=failure, query=q)


def user_authentication(at: datetime, user: Participant, archive: Participant, *, failure: str = "") -> AuditEvent:
    """A.5.3.13 User Authentication (action E, type Login): ``user`` presented credentials to
    ``archive``; ``failure``: why they were refused (outcome 4, minor failure: nothing was let in)."""
    return AuditEvent(USER_AUTHENTICATION, "E", at, (_role(user, None, True), _role(archive, None, False)),
                      outcome=4 if failure else 0, outcome_description=failure, type_code=LOGIN)


def security_alert(at: datetime, kind: Code, reporter: Participant, performer: Participant, *, subject: str,
                   failure: str) -> AuditEvent:
    """A.5.3.11 Security Alert (action E): ``reporter`` (ilm) refused what ``performer`` tried on
    ``subject``. Outcome 4 (minor failure): the refusal kept the system secure."""
    return AuditEvent(SECURITY_ALERT, "E", at, (_role(reporter, None, False), _role(performer, None, True)),
                      outcome=4, outcome_description=failure, type_code=kind, alert_subject=subject)


def _role(p: Participant, role: Code | None, requestor: bool) -> Participant:
    return Participant(p.user_id, requestor, role, p.alternative_user_id, p.user_name, p.address)


# -- the hash-chained trail (ilm.audit) as messages ------------------------------

_DELETIONS = {"study.expire": "quarantined", "study.purge": "purged"}
_UPDATES = {"study.restore", "restore.complete", "promote"}


def from_audit_entry(e: AuditEntry, study: StudyObject | None, archive: Participant) -> AuditEvent | None:
    """The DICOM message of one trail entry; None when DICOM has no event for it."""
    if e.study_uid is None:
        return None
    at = e.at if e.at.tzinfo else e.at.replace(tzinfo=timezone.utc)
    who = Participant(e.actor or "unknown")
    obj = study or StudyObject(e.study_uid)
    if e.action in _DELETIONS:
        ev = study_deleted(at, who, obj, phase=_DELETIONS[e.action])
    elif e.action in _UPDATES or (e.action == "action.done" and e.detail.get("decision") == "transition"):
        # restored from quarantine or an archive tier, moved between tiers
        ev = instances_accessed(at, who, obj, action="U", what=e.action)
    else:
        return None
    extra = tuple((k, str(v)) for k, v in (("ilm-audit-id", e.id), ("ilm-audit-hash", e.hash),
                                           ("ilm-plan", e.plan_id), ("ilm-rule", e.rule_id)) if v)
    return AuditEvent(ev.event_id, ev.action, ev.at, ev.participants + (_role(archive, None, False),),
                      studies=ev.studies, details=ev.details + extra)


# -- rendering ---------------------------------------------------------------------


# Characters XML 1.0 cannot carry (controls, surrogates, U+FFFE/U+FFFF) and DEL: blanked, so that
# a patient name decoded from any DICOM file still makes a well-formed message on one line.
_NOT_XML = re.compile("[^\x20-\x7e\x80-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    return _NOT_XML.sub(" ", str(text))


def _sub(parent: ET.Element, tag: str, attrs: dict[str, str] | None = None, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: _clean(v) for k, v in (attrs or {}).items() if v != ""})
    if text is not None:
        el.text = _clean(text)
    return el


def _code(parent: ET.Element, tag: str, c: Code) -> ET.Element:
    return _sub(parent, tag, {"csd-code": c.code, "codeSystemName": c.system, "originalText": c.meaning})


def is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode("utf-8") if isinstance(data, str) else data).decode("ascii")


def _utc(at: datetime) -> str:
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _patient_id(s: StudyObject) -> str:
    return f"{s.patient_id}^^^{s.issuer}" if s.issuer else s.patient_id  # HL7 CX with the assigning authority


def to_xml(ev: AuditEvent, source: AuditSource) -> bytes:
    """The AuditMessage as UTF-8 XML on one line (no XML declaration)."""
    root = ET.Element("AuditMessage")
    ident = _sub(root, "EventIdentification", {
        "EventActionCode": ev.action, "EventDateTime": _utc(ev.at), "EventOutcomeIndicator": str(ev.outcome)})
    _code(ident, "EventID", ev.event_id)
    if ev.type_code is not None:
        _code(ident, "EventTypeCode", ev.type_code)
    if ev.outcome_description:
        _sub(ident, "EventOutcomeDescription", text=ev.outcome_description)
    for p in ev.participants:
        attrs = {"UserID": p.user_id, "AlternativeUserID": p.alternative_user_id, "UserName": p.user_name,
                 "UserIsRequestor": "true" if p.requestor else "false"}
        if p.address:
            attrs["NetworkAccessPointID"] = p.address
            attrs["NetworkAccessPointTypeCode"] = "2" if is_ip(p.address) else "1"
        el = _sub(root, "ActiveParticipant", attrs)
        if p.role is not None:
            _code(el, "RoleIDCode", p.role)
    src = _sub(root, "AuditSourceIdentification", {"AuditEnterpriseSiteID": source.site_id,
                                                   "AuditSourceID": source.source_id})
    _sub(src, "AuditSourceTypeCode", {"csd-code": source.type_code})
    for s in ev.studies:
        _study(root, s, ev.details)
        if s.patient_id:
            _patient(root, s)
    if ev.alert_subject:  # A.5.3.11: the alert subject, a security resource (role 13), named by a URI
        a = _sub(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": ev.alert_subject, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "13"})
        _code(a, "ParticipantObjectIDTypeCode", URI_TYPE)
        if ev.outcome_description:
            _sub(a, "ParticipantObjectDetail", {"type": "Alert Description", "value": _b64(ev.outcome_description)})
    if ev.query is not None:
        q = _sub(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": ev.query.sop_class_uid, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _code(q, "ParticipantObjectIDTypeCode", SOP_CLASS_UID_TYPE)
        _sub(q, "ParticipantObjectQuery", text=_b64(ev.query.query))
        if ev.query.transfer_syntax:
            _sub(q, "ParticipantObjectDetail", {"type": "TransferSyntax", "value": _b64(ev.query.transfer_syntax)})
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return xml


def _study(root: ET.Element, s: StudyObject, details: tuple[tuple[str, str], ...]) -> None:
    el = _sub(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": s.study_uid, "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "3"})
    _code(el, "ParticipantObjectIDTypeCode", STUDY_UID_TYPE)
    for k, v in details:
        _sub(el, "ParticipantObjectDetail", {"type": k, "value": _b64(v)})
    if s.sop_classes or s.accession_number:
        desc = _sub(el, "ParticipantObjectDescription")
        if s.accession_number:
            _sub(desc, "Accession", {"Number": s.accession_number})
        for uid, n in s.sop_classes:
            _sub(desc, "SOPClass", {"UID": uid, "NumberOfInstances": str(n)})


def _patient(root: ET.Element, s: StudyObject) -> None:
    el = _sub(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": _patient_id(s), "ParticipantObjectTypeCode": "1", "ParticipantObjectTypeCodeRole": "1"})
    _code(el, "ParticipantObjectIDTypeCode", PATIENT_NUMBER_TYPE)
    if s.patient_name:
        _sub(el, "ParticipantObjectName", text=s.patient_name)
