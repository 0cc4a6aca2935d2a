"""C-FIND SCP: the Patient Root and Study Root Query/Retrieve Information Models - FIND.

Thin, like the C-STORE handler: ``handle_find(event, service)`` turns the
request identifier into one ``service.query`` call and yields one pending
response per match. The matching itself (wildcards, ranges, UID lists, only
active studies) is the service's; queries are not recorded as accesses.

What the handler owns is the protocol:

- the levels of each model: Patient Root has PATIENT, STUDY, SERIES and
  IMAGE; Study Root has STUDY, SERIES and IMAGE (its study level carries the
  patient's attributes);
- the identifier: every key of the request comes back, filled from the
  catalog or empty when ilm does not know it; QueryRetrieveLevel is echoed;
  the unique key of the level and Retrieve AE Title are always returned;
- Specific Character Set: the request is decoded in its character set; a
  response with any non-ASCII text is sent as ISO_IR 192 (UTF-8), otherwise
  the request's character set is echoed;
- cancellation: a C-CANCEL stops the responses with 0xFE00.

Statuses (PS3.4 C.4.1.1.4), each failure with an Error Comment:

    a match                                          0xFF00 Pending
    a match; some keys with a value were ignored     0xFF01 Pending (optional keys not supported)
    no QueryRetrieveLevel, a level the model does
      not have, a key of a lower level with a value  0xA900 Identifier does not match SOP Class
    an identifier that cannot be decoded, a value
      that cannot match (bad date, wildcard in UID)  0xC000 Unable to process
    the catalog failed                               0xA700 Out of resources
    an unexpected error in the handler               0xC211
    C-CANCEL received                                0xFE00 Cancel
    done                                             0x0000 Success (sent by pynetdicom)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ilm.atna.messages import QueryAudit
from ilm.errors import CatalogError, InvalidQuery

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from ilm.service import ArchiveService

__all__ = [
    "handle_find",
    "FIND_MODELS",
    "PATIENT_ROOT_FIND",
    "STUDY_ROOT_FIND",
    "QUERY_TRANSFER_SYNTAXES",
]

log = logging.getLogger(__name__)

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

# The levels each information model has.
FIND_MODELS: dict[str, tuple[str, ...]] = {
    PATIENT_ROOT_FIND: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT_FIND: ("STUDY", "SERIES", "IMAGE"),
}
_MODEL_NAMES = {PATIENT_ROOT_FIND: "Patient Root", STUDY_ROOT_FIND: "Study Root"}

# An identifier is small: no reason to accept compressed or deflated encodings.
QUERY_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")

_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
           "IMAGE": "SOPInstanceUID"}

PENDING = 0xFF00
PENDING_WARNING = 0xFF01        # one or more optional keys not supported
CANCEL = 0xFE00
OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
HANDLER_FAILED = 0xC211

_TAG_LEVEL = 0x00080052
_TAG_CHARSET = 0x00080005
_TAG_RETRIEVE_AE = 0x00080054
_NOT_KEYS = (_TAG_LEVEL, _TAG_CHARSET)


def _comment(text: str) -> str:
    """Text fit for the LO Error Comment: printable ASCII, no backslash, at most 64 characters."""
    clean = " ".join("".join(c if 32 <= ord(c) < 127 and c != "\\" else " " for c in text).split())
    return clean if len(clean) <= 64 else clean[:61] + "..."


def _failure(code: int, comment: str, offending: list[int] | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = _comment(comment)
    if offending:
        ds.OffendingElement = offending
    return ds


def _text(value: Any) -> str:
    """A decoded element value as a DICOM matching string."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(_text(v) for v in value)
    return str(value).strip()


class _Refused(Exception):
    def __init__(self, code: int, comment: str, offending: list[int] | None = None) -> None:
        super().__init__(comment)
        self.status = _failure(code, comment, offending)


def _read_request(ident: Dataset, model: str, known: dict[str, str]) -> tuple[str, dict[str, str], list[DataElement], bool]:
    """(level, filters, the request's keys, whether a key with a value is not supported)."""
    levels = FIND_MODELS.get(model)
    if levels is None:
        raise _Refused(IDENTIFIER_DOES_NOT_MATCH, f"SOP class {model} is not a FIND model ilm serves")
    try:
        elements = [ident[tag] for tag in ident.keys()]  # decodes each element in the request's charset
        level = _text(ident.get("QueryRetrieveLevel", "")).upper()
    except Exception as exc:
        raise _Refused(UNABLE_TO_PROCESS, f"cannot decode the identifier: {type(exc).__name__}") from None
    if not level:
        raise _Refused(IDENTIFIER_DOES_NOT_MATCH, "QueryRetrieveLevel (0008,0052) is missing", [_TAG_LEVEL])
    if level not in levels:
        raise _Refused(IDENTIFIER_DOES_NOT_MATCH, f"level {level} is not one of the {_MODEL_NAMES[model]} model: "
                       f"{', '.join(levels)}", [_TAG_LEVEL])
    depth = _LEVELS.index(level)
    filters: dict[str, str] = {}
    keys: list[DataElement] = []
    unsupported = False
    for elem in elements:
        if elem.tag.group in (0x0000, 0x0002) or elem.tag in _NOT_KEYS:
            continue
        keys.append(elem)
        if elem.VR == "SQ":
            unsupported |= any(len(item) for item in (elem.value or []))  # sequence matching: not supported
            continue
        try:
            value = _text(elem.value)
        except Exception as exc:
            raise _Refused(UNABLE_TO_PROCESS, f"cannot decode {elem.keyword or elem.tag}: {type(exc).__name__}",
                           [int(elem.tag)]) from None
        key_level = known.get(elem.keyword)
        if key_level is None:
            unsupported |= value not in ("", "*")
            continue
        if value not in ("", "*") and _LEVELS.index(key_level) > depth:
            raise _Refused(IDENTIFIER_DOES_NOT_MATCH, f"{elem.keyword} is a {key_level} key: not at the {level} level",
                           [int(elem.tag)])
        if _LEVELS.index(key_level) <= depth:
            filters[elem.keyword] = value
    return level, filters, keys, unsupported


def _value(vr: str, value: Any) -> Any:
    """A catalog value as the element value of ``vr`` (None: empty)."""
    if value is None or value == "" or value == []:
        return None
    if vr == "SQ":
        return None
    if isinstance(value, list):
        return value if len(value) > 1 else value[0]
    if vr in ("IS", "US", "UL", "SS", "SL", "DS") and isinstance(value, int):
        return value
    return str(value)


def _non_ascii(ds: Dataset) -> bool:
    for elem in ds:
        values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        if any(not str(v).isascii() for v in values if v is not None):
            return True
    return False


def _response(level: str, keys: list[DataElement], row: dict[str, Any], charset: Any, ae_title: str) -> Dataset:
    ds = Dataset()
    for elem in keys:
        if elem.VR == "SQ":
            ds.add_new(elem.tag, "SQ", [])
            continue
        ds.add_new(elem.tag, elem.VR, _value(elem.VR, row.get(elem.keyword)))
    unique = _UNIQUE[level]
    if unique not in ds:
        setattr(ds, unique, row.get(unique) or None)
    if _TAG_RETRIEVE_AE not in ds:
        ds.RetrieveAETitle = ae_title
    ds.QueryRetrieveLevel = level
    if _non_ascii(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"
    elif charset:
        ds.SpecificCharacterSet = charset
    return ds


def handle_find(event: "Event", service: "ArchiveService") -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """C-FIND: yield (0xFF00, identifier) per match, or one failure or cancel status."""
    model = str(event.request.AffectedSOPClassUID or "")
    peer = event.assoc.requestor
    try:
        ident = event.identifier
        level, filters, keys, unsupported = _read_request(ident, model, service.query_attributes())
        charset = ident.get("SpecificCharacterSet")
        raw = getattr(event.request, "Identifier", None)  # as received, for the Query audit message
        audit = QueryAudit(str(peer.ae_title).strip(), str(peer.address), model,
                           raw.getvalue() if isinstance(raw, BytesIO) else b"",
                           str(event.context.transfer_syntax), ae_title=True)
        rows = service.query(level, filters, fields=[e.keyword for e in keys if e.keyword] + [_UNIQUE[level]],
                             audit=audit)
    except _Refused as exc:
        log.info("C-FIND from %s refused: %s", peer.ae_title, exc)
        yield exc.status, None
        return
    except InvalidQuery as exc:
        log.info("C-FIND from %s refused: %s", peer.ae_title, exc)
        yield _failure(UNABLE_TO_PROCESS, str(exc)), None
        return
    except CatalogError as exc:
        log.warning("C-FIND from %s failed: %s", peer.ae_title, exc)
        yield _failure(OUT_OF_RESOURCES, str(exc)), None
        return
    except Exception as exc:  # never let one request take the server down
        log.exception("C-FIND handler failed")
        yield _failure(HANDLER_FAILED, f"internal error: {type(exc).__name__}: {exc}"), None
        return
    log.info("C-FIND %s level %s from %s: %d match(es)", _MODEL_NAMES[model], level, peer.ae_title, len(rows))
    status = PENDING_WARNING if unsupported else PENDING
    ae_title = str(event.assoc.acceptor.ae_title).strip()
    for row in rows:
        if event.is_cancelled:
            yield CANCEL, None
            return
        try:
            rsp = _response(level, keys, row, charset, ae_title)
        except Exception as exc:
            log.exception("C-FIND response could not be built")
            yield _failure(HANDLER_FAILED, f"internal error: {type(exc).__name__}: {exc}"), None
            return
        yield status, rsp
