"""The packed-study format: a whole study as one object.

A pack is a standard ZIP archive whose members are stored, not compressed
(ZIP method 0), so that every instance is a contiguous run of bytes inside
the object and can be read with one ranged read:

    SERIES_UID/SOP_UID.dcm     the instance's Part 10 file, byte for byte
    ...
    index.json                 the index (last member), also readable by hand:
        {"format": "ilm-pack/1", "study_uid": ...,
         "instances": [{"sop_uid", "series_uid", "member", "offset", "length", "sha256"}, ...]}

``offset`` is where the instance's bytes start in the object (after its ZIP
local header) and ``length`` their count; the catalog keeps the same two
numbers per instance (``locations.pack_offset``/``pack_length``), so a read
never needs the index. Any unzip tool lists and extracts a pack, so the data
stays usable without ilm. Pure: bytes in, bytes out, no I/O.

The pack object's key is ``STUDY_UID/NANOSECONDS.pack``: unique per pack, so a
study packed twice (instances that arrived after the first pack) gets a
second object and no pack is ever overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

from ilm.errors import IntegrityError, StorageError
from ilm.uids import validate_uid

__all__ = [
    "FORMAT",
    "Pack",
    "PackEntry",
    "PackMember",
    "build_pack",
    "is_pack_key",
    "member",
    "pack_key",
    "read_index",
]

FORMAT = "ilm-pack/1"
INDEX = "index.json"
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # the fixed 30 bytes of a ZIP local file header
_LOCAL_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True, slots=True)
class PackMember:
    """One instance to put in a pack."""

    sop_uid: str
    series_uid: str
    data: bytes


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one instance is inside a pack."""

    sop_uid: str
    series_uid: str
    member: str
    offset: int
    length: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Pack:
    study_uid: str
    data: bytes
    sha256: str
    entries: tuple[PackEntry, ...]

    def entry(self, sop_uid: str) -> PackEntry:
        for e in self.entries:
            if e.sop_uid == sop_uid:
                return e
        raise KeyError(sop_uid)


def pack_key(study_uid: str, now_ns: int | None = None) -> str:
    """A fresh key for a pack of ``study_uid``."""
    return f"{validate_uid(study_uid, 'StudyInstanceUID')}/{now_ns if now_ns is not None else time.time_ns()}.pack"


def is_pack_key(key: str) -> bool:
    return key.endswith(".pack")


def _data_offset(buf: bytes | memoryview, header_offset: int) -> int:
    """Where a member's data starts: after its local header, name and extra field."""
    magic, *_x, name_len, extra_len = _LOCAL_HEADER.unpack_from(buf, header_offset)
    if magic != _LOCAL_MAGIC:
        raise StorageError(f"not a ZIP local header at byte {header_offset}")
    return header_offset + _LOCAL_HEADER.size + int(name_len) + int(extra_len)


def build_pack(study_uid: str, members: Iterable[PackMember]) -> Pack:
    """One ZIP (stored members) holding every instance, then the index."""
    buf = io.BytesIO()
    names: list[tuple[PackMember, str, str]] = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for m in members:
            validate_uid(m.sop_uid, "SOPInstanceUID")
            name = f"{validate_uid(m.series_uid, 'SeriesInstanceUID')}/{m.sop_uid}.dcm"
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, m.data)
            names.append((m, name, hashlib.sha256(m.data).hexdigest()))
        headers = {i.filename: i.header_offset for i in zf.infolist()}
        raw = buf.getbuffer()
        entries = []
        for m, name, sha in names:
            entries.append(PackEntry(m.sop_uid, m.series_uid, name, _data_offset(raw, headers[name]), len(m.data), sha))
        del raw
        index = {"format": FORMAT, "study_uid": study_uid,
                 "instances": [{"sop_uid": e.sop_uid, "series_uid": e.series_uid, "member": e.member,
                                "offset": e.offset, "length": e.length, "sha256": e.sha256} for e in entries]}
        info = zipfile.ZipInfo(INDEX, date_time=(1980, 1, 1, 0, 0, 0))
        zf.writestr(info, json.dumps(index, indent=1).encode())
    data = buf.getvalue()
    for e in entries:  # the offsets must point at the very bytes written
        if hashlib.sha256(data[e.offset:e.offset + e.length]).hexdigest() != e.sha256:
            raise IntegrityError(f"pack of study {study_uid}: {e.member} is not at the offset computed for it")
    return Pack(study_uid, data, hashlib.sha256(data).hexdigest(), tuple(entries))


def read_index(data: bytes) -> list[PackEntry]:
    """The index of a whole pack (for checking a pack without the catalog)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            body = json.loads(zf.read(INDEX))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise StorageError(f"not an ilm pack: {exc}") from None
    if body.get("format") != FORMAT:
        raise StorageError(f"not an ilm pack: format {body.get('format')!r}")
    return [PackEntry(i["sop_uid"], i["series_uid"], i["member"], int(i["offset"]), int(i["length"]), i["sha256"])
            for i in body["instances"]]


def member(data: bytes, offset: int, length: int, sha256: str | None = None) -> bytes:
    """The bytes of one instance of a whole pack held in memory, checked against ``sha256``."""
    if offset < 0 or length < 0 or offset + length > len(data):
        raise StorageError(f"range {offset}+{length} is outside the pack ({len(data)} bytes)")
    out = data[offset:offset + length]
    if sha256 is not None and hashlib.sha256(out).hexdigest() != sha256:
        raise IntegrityError(f"the bytes at {offset}+{length} of the pack do not match their SHA-256")
    return out
