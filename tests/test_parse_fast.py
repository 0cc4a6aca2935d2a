"""The ingest's shortcuts around pydicom give what pydicom gives.

``facts_from_dataset`` reads plain-ASCII single values straight from their
undecoded bytes, and ``part10_header`` writes the File Meta Information by
hand; both exist for speed (docs/operations.md, ingest speed) and must never
change what the catalog records or what is stored.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from ilm.dicom import parse
from ilm.dicom.parse import FileMeta, dataset_bytes, part10_header, read_instance
from ilm.errors import RejectedInstance


def _facts(data: bytes) -> dict[str, object] | str:
    try:
        return asdict(read_instance(data)[0])
    except RejectedInstance as exc:
        return f"rejected: {exc.reason}"


def test_facts_read_from_raw_bytes_equal_pydicoms_decoding(pydicom_test_files: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(p for p in pydicom_test_files.rglob("*") if p.is_file())
    assert len(files) > 50
    fast = {p.name: _facts(p.read_bytes()) for p in files}
    monkeypatch.setattr(parse, "_raw_text", lambda ds, keyword: None)  # every value through pydicom
    slow = {p.name: _facts(p.read_bytes()) for p in files}
    assert sum(isinstance(v, dict) for v in fast.values()) > 40
    assert fast == slow


def test_non_ascii_and_multi_valued_attributes_go_through_pydicom(pydicom_test_files: Path) -> None:
    ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jörg"
    ds.StationName = "A\\B"  # two values
    buf = io.BytesIO()
    ds.save_as(buf)
    facts, _ = read_instance(buf.getvalue())
    assert facts.patient_name == "Müller^Jörg"
    assert facts.station_name == "A\\B"


@pytest.mark.parametrize("version", ["", "ILM_1", "ODD"])
def test_part10_header_is_what_pydicom_writes(pydicom_test_files: Path, version: str) -> None:
    data = (pydicom_test_files / "CT_small.dcm").read_bytes()
    src = pydicom.dcmread(io.BytesIO(data))
    meta = FileMeta(src.SOPClassUID, src.SOPInstanceUID, src.file_meta.TransferSyntaxUID, "1.2.826.0.1.3680043.9.3811.3",
                    version)
    ref = FileMetaDataset()
    ref.FileMetaInformationVersion = b"\x00\x01"
    ref.MediaStorageSOPClassUID = meta.sop_class_uid
    ref.MediaStorageSOPInstanceUID = meta.sop_instance_uid
    ref.TransferSyntaxUID = meta.transfer_syntax_uid
    ref.ImplementationClassUID = meta.implementation_class_uid
    if version:
        ref.ImplementationVersionName = version
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    buf.write(b"\x00" * 128 + b"DICM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_file_meta_info(buf, ref, enforce_standard=True)
    if version:  # pydicom adds its own version name when there is none
        assert part10_header(meta) == buf.getvalue()
    stored = part10_header(meta) + dataset_bytes(data)
    back = pydicom.dcmread(io.BytesIO(stored))
    assert back.file_meta.MediaStorageSOPInstanceUID == src.SOPInstanceUID
    assert back.PixelData == src.PixelData


@pytest.mark.parametrize("bad", ["1.2.\u00e9", "1.2.3\n", "9" * 65])
def test_a_file_meta_that_cannot_be_written_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        part10_header(FileMeta("1.2.840.10008.5.1.4.1.1.2", bad, "1.2.840.10008.1.2"))
