"""Read what the catalog needs from a DICOM file, and refuse what cannot be stored.

``read_instance`` takes the bytes of a file (or of a dataset plus its file meta,
as a C-STORE delivers them) and returns the facts and the exact bytes to store.
A Part 10 file is stored byte for byte as received; a bare dataset without a
file meta header gets one, so every stored object is a valid Part 10 file.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass
from datetime import date

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
)

from ilm.errors import InvalidUID, RejectedInstance
from ilm.models import InstanceFacts
from ilm.uids import validate_uid

__all__ = ["read_instance", "part10_bytes", "part10_header", "FileMeta", "parse_da", "facts_from_dataset", "dataset_bytes"]

_UNDEFINED = 0xFFFFFFFF
_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_LOSSY_TS = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203",
}


def parse_da(value: str) -> date | None:
    """A DICOM DA (YYYYMMDD, or the old YYYY.MM.DD) as a date; None when absent or invalid."""
    text = (value or "").strip().replace(".", "").replace("-", "")
    m = _DA.fullmatch(text)
    if not m:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


# The attributes the catalog reads, by keyword -> tag, for the fast path below.
_TAGS = {kw: tag_for_keyword(kw) for kw in (
    "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "IssuerOfPatientID",
    "PatientName", "PatientBirthDate", "PatientSex", "PatientAge", "StudyDate", "StudyTime", "AccessionNumber",
    "StudyDescription", "StudyID", "ReferringPhysicianName", "InstitutionName", "StationName", "Manufacturer",
    "Modality", "BodyPartExamined", "SeriesDescription", "SeriesNumber", "SeriesDate", "InstanceNumber",
    "PatientIdentityRemoved", "LossyImageCompression")}
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT"})
_PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e\x00]*")  # printable ASCII and NUL padding, no backslash


def _raw_text(ds: Dataset, keyword: str) -> str | None:
    """The value of a single-valued text attribute straight from its undecoded bytes, "" when
    absent; None when pydicom must decode it (multi-valued, not plain ASCII, a decoded element,
    another VR). Plain ASCII reads the same in every DICOM character set, and decoding ~30
    values through pydicom cost more than parsing the whole header."""
    elem = ds._dict.get(_TAGS[keyword])  # type: ignore[call-overload]
    if elem is None:
        return ""
    if type(elem) is not RawDataElement or (elem.VR is not None and elem.VR not in _TEXT_VRS):
        return None
    value = elem.value
    if value is None:
        return ""
    if not isinstance(value, bytes) or not _PLAIN.fullmatch(value):
        return None
    return value.decode("ascii")


def _text(ds: Dataset, keyword: str, limit: int = 256) -> str:
    raw = _raw_text(ds, keyword)
    if raw is not None:
        return raw.replace("\x00", "").strip()[:limit]
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value of one attribute must not sink the instance
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.replace("\x00", "").strip()[:limit]


def _uid(ds: Dataset, keyword: str) -> str:
    """A UID as sent, only its trailing padding removed: an inner NUL must fail validation."""
    raw = _raw_text(ds, keyword)
    if raw:
        return raw.rstrip("\x00 ")
    try:
        value = ds.get(keyword)
    except Exception:
        return "\x00invalid"
    return "" if value is None else str(value).rstrip("\x00 ")


def _int(ds: Dataset, keyword: str) -> int | None:
    raw = _raw_text(ds, keyword)
    if raw is not None:
        text = raw.replace("\x00", "").strip()
        if not text:
            return None
        if text.isdigit():
            return int(text)
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


def _check_complete(ds: Dataset, total: int, what: str) -> None:
    """Refuse a dataset whose last element claims more bytes than were received.

    pydicom returns a short value for a truncated file without complaint; a
    stored half image would be a lost image, so it is checked here.
    """
    for elem in ds._dict.values():  # raw elements keep their position and length
        tell = getattr(elem, "value_tell", None)
        length = getattr(elem, "length", None)
        if tell is None or length is None or length == _UNDEFINED:
            continue
        if tell + length > total:
            raise RejectedInstance(
                f"{what} is truncated: element {elem.tag} declares {length} bytes "
                f"at offset {tell} but only {total - tell} remain"
            )


def facts_from_dataset(ds: Dataset, transfer_syntax: str) -> InstanceFacts:
    """Extract the catalog facts from a parsed dataset; raise RejectedInstance on bad UIDs."""
    try:
        sop = validate_uid(_uid(ds, "SOPInstanceUID"), "SOPInstanceUID")
        sop_class = validate_uid(_uid(ds, "SOPClassUID"), "SOPClassUID")
        study = validate_uid(_uid(ds, "StudyInstanceUID"), "StudyInstanceUID")
        series = validate_uid(_uid(ds, "SeriesInstanceUID"), "SeriesInstanceUID")
    except InvalidUID as exc:
        raise RejectedInstance(str(exc)) from None
    birth_raw = _text(ds, "PatientBirthDate", 32)
    study_raw = _text(ds, "StudyDate", 32)
    return InstanceFacts(
        sop_instance_uid=sop,
        sop_class_uid=sop_class,
        series_instance_uid=series,
        study_instance_uid=study,
        transfer_syntax_uid=transfer_syntax,
        patient_id=_text(ds, "PatientID", 64),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
        patient_name=_text(ds, "PatientName", 200),
        patient_birth_date=parse_da(birth_raw),
        patient_birth_date_raw=birth_raw,
        patient_sex=_text(ds, "PatientSex", 16),
        patient_age=_text(ds, "PatientAge", 16),
        study_date=parse_da(study_raw),
        study_date_raw=study_raw,
        study_time=_text(ds, "StudyTime", 32),
        accession_number=_text(ds, "AccessionNumber", 64),
        study_description=_text(ds, "StudyDescription", 256),
        study_id=_text(ds, "StudyID", 32),
        referring_physician=_text(ds, "ReferringPhysicianName", 200),
        institution_name=_text(ds, "InstitutionName", 128),
        station_name=_text(ds, "StationName", 64),
        manufacturer=_text(ds, "Manufacturer", 128),
        modality=_text(ds, "Modality", 16).upper(),
        body_part_examined=_text(ds, "BodyPartExamined", 64).upper(),
        series_description=_text(ds, "SeriesDescription", 256),
        series_number=_int(ds, "SeriesNumber"),
        series_date=parse_da(_text(ds, "SeriesDate", 32)),
        instance_number=_int(ds, "InstanceNumber"),
        patient_identity_removed=_text(ds, "PatientIdentityRemoved", 8).upper() == "YES",
        lossy_compression=_text(ds, "LossyImageCompression", 8) == "01"
        or transfer_syntax in _LOSSY_TS,
    )


@dataclass(frozen=True)
class FileMeta:
    """The File Meta Information of an instance received as a bare dataset (C-STORE):
    the request's SOP class and instance, the presentation context's transfer syntax
    and the receiving implementation."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    implementation_class_uid: str = PYDICOM_IMPLEMENTATION_UID
    implementation_version_name: str = ""

    @classmethod
    def of(cls, ds: Dataset) -> "FileMeta":
        """The values of a pydicom file meta dataset."""
        return cls(str(ds.get("MediaStorageSOPClassUID", "")), str(ds.get("MediaStorageSOPInstanceUID", "")),
                   str(ds.get("TransferSyntaxUID", "")),
                   str(ds.get("ImplementationClassUID", "") or PYDICOM_IMPLEMENTATION_UID),
                   str(ds.get("ImplementationVersionName", "") or ""))


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element, explicit VR little endian (PS3.5 7.1.2)."""
    tag = struct.pack("<HH", 0x0002, element)
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    if len(value) > 0xFFFF:
        raise ValueError(f"(0002,{element:04X}) is too long")
    return tag + vr + struct.pack("<H", len(value)) + value


def _meta_text(value: str, pad: bytes, limit: int, what: str) -> bytes:
    raw = value.encode("ascii")  # UIDs, AE titles and version names are ASCII (UnicodeError otherwise)
    if len(raw) > limit or any(b < 0x20 or b > 0x7E for b in raw):
        raise ValueError(f"{what} {value[:80]!r} is not a valid value")
    return raw + pad if len(raw) % 2 else raw


def part10_header(meta: FileMeta) -> bytes:
    """Preamble, 'DICM' and the File Meta Information group of a Part 10 file (PS3.10 7.1).

    Written here rather than through pydicom's Dataset: six fixed elements, and
    building and writing them through pydicom cost a third of a C-STORE's handling."""
    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _meta_text(meta.sop_class_uid, b"\x00", 64, "SOP Class UID")),
        _meta_element(0x0003, b"UI", _meta_text(meta.sop_instance_uid, b"\x00", 64, "SOP Instance UID")),
        _meta_element(0x0010, b"UI", _meta_text(meta.transfer_syntax_uid, b"\x00", 64, "Transfer Syntax UID")),
        _meta_element(0x0012, b"UI", _meta_text(meta.implementation_class_uid, b"\x00", 64,
                                                "Implementation Class UID")),
        _meta_element(0x0013, b"SH", _meta_text(meta.implementation_version_name, b" ", 16,
                                                "Implementation Version Name"))
        if meta.implementation_version_name else b"",
    ))
    return b"\x00" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body


def part10_bytes(file_meta: FileMeta | Dataset, dataset: bytes) -> bytes:
    """A Part 10 file from a file meta and the encoded dataset (as C-STORE receives it).
    ValueError (or UnicodeError) for a file meta value that cannot be written."""
    meta = file_meta if isinstance(file_meta, FileMeta) else FileMeta.of(file_meta)
    return part10_header(meta) + dataset


def read_instance(data: bytes, what: str = "file") -> tuple[InstanceFacts, bytes]:
    """Parse ``data``; return its facts and the Part 10 bytes to store.

    Raises RejectedInstance with a one-line reason for anything that is not a
    complete DICOM instance with valid SOP, study and series UIDs.
    """
    if not data:
        raise RejectedInstance(f"{what} is empty")
    if len(data) < 132 and not data[:4].strip(b"\x00"):
        raise RejectedInstance(f"{what} is too short to be DICOM ({len(data)} bytes)")
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError,
            NotImplementedError, AttributeError, IndexError, UnicodeError) as exc:
        raise RejectedInstance(f"{what} is not readable DICOM: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # pydicom raises many kinds on hostile input
        raise RejectedInstance(f"{what} is not readable DICOM: {type(exc).__name__}: {exc}") from None
    if len(ds._dict) == 0:
        raise RejectedInstance(f"{what} is not DICOM: no data elements")
    if not has_preamble and min(ds._dict).group not in (0x0002, 0x0008):
        raise RejectedInstance(f"{what} is not DICOM: no 'DICM' marker and no DICOM header at its start")
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts != DeflatedExplicitVRLittleEndian:  # offsets of a deflated body are not file offsets
        _check_complete(ds, len(data), what)
    if "SOPInstanceUID" not in ds and "StudyInstanceUID" not in ds:
        raise RejectedInstance(f"{what} is not a DICOM instance: no SOP Instance UID or Study Instance UID")

    if not ts:
        if ds.original_encoding[0] is None:
            raise RejectedInstance(f"{what} has no transfer syntax and its encoding cannot be told")
        implicit, little = ds.original_encoding
        ts = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    facts = facts_from_dataset(ds, ts)
    if has_preamble and meta is not None and meta.get("TransferSyntaxUID"):
        return facts, data
    # A bare dataset, or a meta header without a transfer syntax: write a proper Part 10 file.
    new_meta = FileMetaDataset()
    new_meta.MediaStorageSOPClassUID = UID(facts.sop_class_uid)
    new_meta.MediaStorageSOPInstanceUID = UID(facts.sop_instance_uid)
    new_meta.TransferSyntaxUID = UID(ts)
    ds.file_meta = new_meta
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(buf, enforce_file_format=True, implicit_vr=None, little_endian=None)
    except Exception as exc:
        raise RejectedInstance(f"{what} cannot be rewritten as a Part 10 file: {type(exc).__name__}: {exc}") from None
    return facts, buf.getvalue()


def dataset_bytes(data: bytes) -> bytes:
    """The encoded dataset of a Part 10 file, without preamble and file meta.

    Uses the meta's group length, which every conformant writer includes;
    without one, the whole file is returned (compared as is).
    """
    if len(data) < 144 or data[128:132] != b"DICM" or data[132:138] != b"\x02\x00\x00\x00UL":
        return data
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length:]
