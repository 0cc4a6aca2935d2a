"""DICOMweb STOW-RS (PS3.18 10.5): reading the request, writing the response.

Protocol only: the request body is split into parts by python-multipart's
streaming parser, each part goes to ``ArchiveService.ingest_bytes`` (called by
the app), and the service's results become the standard store response, a
DICOM JSON dataset.

Failure Reason (0008,1197) values, the C-STORE statuses of PS3.4 B.2.3 and
PS3.7 C.4 (the same choice as the DICOM front-end, see ilm.dicom.server):

    0xA700  Refused: Out of Resources      the archive failed (tier, catalog): retry later
    0xA900  Data Set does not match        the instance belongs to another study than the URL's
    0xC000  Cannot Understand              not DICOM, truncated, missing/invalid UIDs, part not application/dicom
    0x0111  Duplicate SOP Instance         the SOP Instance UID is stored with other content
                                           (the newcomer is kept aside for review, never overwrites)

An instance already stored with identical bytes is a success (it is stored).
HTTP status (PS3.18 10.5.3): 200 all stored, 202 some stored and some failed,
409 none stored; 400 a malformed request, 413 a body over the limit, 415 a
media type other than multipart/related; type="application/dicom".
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ilm.models import IngestResult, IngestStatus

__all__ = [
    "StowError",
    "StowPart",
    "MultipartCollector",
    "multipart_boundary",
    "part_media_type_ok",
    "failure_reason",
    "store_response",
    "http_status",
    "DICOM_JSON",
    "FAILURE_OUT_OF_RESOURCES",
    "FAILURE_STUDY_MISMATCH",
    "FAILURE_CANNOT_UNDERSTAND",
    "FAILURE_DUPLICATE_CONFLICT",
]

DICOM_JSON = "application/dicom+json"
DICOM = "application/dicom"

FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_STUDY_MISMATCH = 0xA900
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_DUPLICATE_CONFLICT = 0x0111

# Parts are kept in memory up to this many bytes in total, then on disk: the
# request is read whole before anything is stored (an oversized or truncated
# body must store nothing), and a 2 GB body must not need 2 GB of RAM.
MEMORY_BUDGET = 64 * 1024 * 1024


class StowError(Exception):
    """A request refused as a whole, with its HTTP status."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/related; type="application/dicom"`` body.

    Raises StowError 415 for another media type (including the DICOM JSON/XML
    metadata forms of STOW-RS, which ilm does not accept), 400 for a
    multipart/related header without a boundary.
    """
    media, params = parse_options_header(content_type or "")
    if media.lower() != b"multipart/related":
        shown = media.decode("latin-1") or "none"
        raise StowError(415, f"Content-Type {shown!r} not supported: send multipart/related; type=\"application/dicom\"")
    kind = params.get(b"type", b"").decode("latin-1").strip().lower()
    if kind and kind != DICOM:
        raise StowError(415, f"multipart/related type {kind!r} not supported: only \"application/dicom\"")
    boundary = params.get(b"boundary", b"")
    if not boundary:
        raise StowError(400, "multipart/related without a boundary parameter")
    if len(boundary) > 70:
        raise StowError(400, "multipart boundary longer than 70 characters (RFC 2046)")
    return boundary


def part_media_type_ok(content_type: str | None) -> bool:
    """A part is DICOM when it says so, or says nothing (the request's type applies)."""
    if not content_type:
        return True
    media, _ = parse_options_header(content_type)
    return media.lower() == DICOM.encode()


@dataclass
class StowPart:
    """One body part: its headers and its bytes, in memory or spooled to disk.

    In memory, the chunks as received, joined once when the part is read (a
    growing buffer copied a part's bytes several times over as it grew)."""

    index: int
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    _chunks: list[bytes] = field(default_factory=list)
    _file: IO[bytes] | None = None

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def write(self, data: bytes, to_disk: bool) -> None:
        if to_disk and self._file is None:
            self._file = tempfile.TemporaryFile()
            self._file.writelines(self._chunks)
            self._chunks = []
        if self._file is not None:
            self._file.write(data)
        else:
            self._chunks.append(data)
        self.size += len(data)

    def read(self) -> bytes:
        if self._file is None:
            return self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        self._chunks = []
        if self._file is not None:
            self._file.close()
            self._file = None


class MultipartCollector:
    """Feed body chunks with ``write``; ``finish`` returns the parts.

    The parsing is python-multipart's; this only keeps each part's headers
    and bytes, and counts the body against ``max_bytes`` (StowError 413).
    """

    def __init__(self, boundary: bytes, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.received = 0
        self.parts: list[StowPart] = []
        self._in_memory = 0
        self._ended = False
        self._field = bytearray()
        self._value = bytearray()
        callbacks: Any = {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_end": self._end,
        }
        self._parser = MultipartParser(boundary, callbacks)

    def _part_begin(self) -> None:
        self.parts.append(StowPart(index=len(self.parts)))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        to_disk = self._in_memory + len(chunk) > MEMORY_BUDGET
        if not to_disk:
            self._in_memory += len(chunk)
        self.parts[-1].write(chunk, to_disk)

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self.parts[-1].headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _end(self) -> None:
        self._ended = True

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise StowError(413, f"request body over the limit of {self.max_bytes} bytes")
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise StowError(400, f"malformed multipart body: {exc}") from None

    def finish(self) -> list[StowPart]:
        """The complete parts; StowError 400 if the body ended early or held none."""
        self._parser.finalize()
        if not self._ended:
            raise StowError(400, "multipart body truncated: no closing boundary")
        if not self.parts:
            raise StowError(400, "multipart body without any part")
        return self.parts

    def close(self) -> None:
        for p in self.parts:
            p.close()


def failure_reason(result: IngestResult, study_uid: str | None) -> int | None:
    """The Failure Reason of one result, or None if it is stored."""
    if result.status in (IngestStatus.STORED, IngestStatus.DUPLICATE):
        return None
    if result.status is IngestStatus.CONFLICT:
        return FAILURE_DUPLICATE_CONFLICT
    if result.retryable:
        return FAILURE_OUT_OF_RESOURCES
    if study_uid is not None and result.study_instance_uid and result.study_instance_uid != study_uid:
        return FAILURE_STUDY_MISMATCH
    return FAILURE_CANNOT_UNDERSTAND


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _ur(value: str) -> dict[str, Any]:
    return {"vr": "UR", "Value": [value]}


def _us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


def _instance_url(base: str, r: IngestResult) -> str:
    return f"{base}/studies/{r.study_instance_uid}/series/{r.series_instance_uid}/instances/{r.sop_instance_uid}"


def store_response(results: Sequence[IngestResult], base: str, study_uid: str | None) -> dict[str, Any]:
    """The Store Instances Response (PS3.18 10.5.3) as DICOM JSON.

    ``base`` is the DICOMweb root URL (…/dicomweb); the top-level Retrieve URL
    names the study of the request, or the one study all stored instances
    belong to.
    """
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for r in results:
        reason = failure_reason(r, study_uid)
        item = {"00081150": _ui(r.sop_class_uid), "00081155": _ui(r.sop_instance_uid)}
        if reason is None:
            if r.series_instance_uid:
                item["00081190"] = _ur(_instance_url(base, r))
            stored.append(item)
        else:
            item["00081197"] = _us(reason)
            failed.append(item)
    out: dict[str, Any] = {}
    studies = {r.study_instance_uid for r in results if failure_reason(r, study_uid) is None}
    study = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if study:
        out["00081190"] = _ur(f"{base}/studies/{study}")
    if failed:
        out["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        out["00081199"] = {"vr": "SQ", "Value": stored}
    return out


def http_status(results: Sequence[IngestResult], study_uid: str | None) -> int:
    """200 all stored, 202 some failed, 409 none stored (PS3.18 10.5.3)."""
    failures = sum(failure_reason(r, study_uid) is not None for r in results)
    if failures == 0:
        return 200
    return 409 if failures == len(results) else 202
