"""The DICOM front-end with real clients: dcmtk's echoscu/storescu and pynetdicom's SCU."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from ilm.catalog.queries import StudyFilter
from ilm.config import DicomSettings
from ilm.dicom.server import DicomServer, start_dicom_server
from ilm.errors import StorageError
from ilm.service import ArchiveService
from ilm.uids import instance_key

pytestmark = pytest.mark.dcmtk

AET = "ILMTEST"

# Distinct SOP Instance UIDs, one transfer syntax each.
SAMPLES = [
    "CT_small.dcm",                    # Explicit VR Little Endian
    "ExplVR_BigEnd.dcm",               # Explicit VR Big Endian
    "MR_small_jpeg_ls_lossless.dcm",   # JPEG-LS Lossless (sent with a new SOP Instance UID: see _samples)
    "GDCMJ2K_TextGBR.dcm",             # JPEG 2000 Lossless
    "JPEG2000.dcm",                    # JPEG 2000
    "SC_rgb_jpeg_gdcm.dcm",            # JPEG Lossless SV1
    "SC_rgb_jpeg_dcmtk.dcm",           # JPEG Baseline
    "MR_small_RLE.dcm",                # RLE Lossless
    "image_dfl.dcm",                   # Deflated Explicit VR Little Endian
]


@pytest.fixture(scope="module")
def dcmtk() -> None:
    for tool in ("echoscu", "storescu"):
        if shutil.which(tool) is None:
            pytest.fail(f"dcmtk's {tool} is missing: run 'make test', which installs the dcmtk package")


@pytest.fixture
def scp(service: ArchiveService, dcmtk: None) -> Iterator[DicomServer]:
    srv = start_dicom_server(service, DicomSettings(ae_title=AET, host="127.0.0.1", port=0))
    try:
        yield srv
    finally:
        srv.shutdown(grace=2)


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _storescu(scp: DicomServer, *paths: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return _run("storescu", "-aet", "TESTSCU", "-aec", AET, *extra, "127.0.0.1", str(scp.port), *map(str, paths))


def _as_is_profile(paths: list[Path], folder: Path) -> tuple[str, ...]:
    """storescu options proposing, for each file, its own SOP class and transfer syntax.

    By default storescu proposes uncompressed syntaxes only and fails on what it
    cannot decompress; this profile makes it send every file as it is encoded.
    """
    syntaxes: dict[str, str] = {}
    contexts: set[tuple[str, str]] = set()
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        ts = str(ds.file_meta.TransferSyntaxUID)
        name = syntaxes.setdefault(ts, f"TS{len(syntaxes)}")
        contexts.add((str(ds.SOPClassUID), name))
    lines = ["[[TransferSyntaxes]]"]
    for ts, name in syntaxes.items():
        lines += [f"[{name}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[AsIs]"]
    lines += [f"PresentationContext{i} = {cls}\\{name}" for i, (cls, name) in enumerate(sorted(contexts), 1)]
    lines += ["[[Profiles]]", "[AsIs]", "PresentationContexts = AsIs"]
    cfg = folder / "storescu-as-is.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    return ("-xf", str(cfg), "AsIs")


def _instances(service: ArchiveService) -> dict[str, str]:
    """SOP Instance UID -> Study Instance UID of every instance on the hot tier, checked against the catalog."""
    on_tier = {}
    for key in service.tier("hot").keys():
        study, _series, name = key.split("/")
        on_tier[name.removesuffix(".dcm")] = study
    catalogued = sum(s.instance_count for s in service.studies(StudyFilter(limit=1000)))
    assert catalogued == len(on_tier)
    return on_tier


def _stored(service: ArchiveService, ds: Dataset) -> bytes:
    return service.tier("hot").get(instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))


def _scu_store(scp: DicomServer, *datasets: Dataset) -> list[Dataset]:
    """Send with pynetdicom's SCU over one association; the response status datasets."""
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 300  # a loaded CI machine is slow, not broken
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def _ct(pydicom_test_files: Path, **changes: object) -> Dataset:
    ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    ds.SOPInstanceUID = generate_uid()
    for k, v in changes.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


def test_echoscu(scp: DicomServer) -> None:
    r = _run("echoscu", "-aet", "TESTSCU", "-aec", AET, "127.0.0.1", str(scp.port))
    assert r.returncode == 0, r.stderr


def test_large_pdus_are_offered(scp: DicomServer) -> None:
    """maximum_pdu_size = 0 (the default): the peer may send PDUs of any size."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
    assert assoc.is_established
    try:
        assert assoc.acceptor.maximum_length == 0
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def _samples(pydicom_test_files: Path, folder: Path) -> list[Path]:
    """SAMPLES; the JPEG-LS one re-saved (encoding untouched) under a new UID, as the
    MR_small variants all share one SOP Instance UID."""
    out = []
    for name in SAMPLES:
        path = pydicom_test_files / name
        if name == "MR_small_jpeg_ls_lossless.dcm":
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            path = folder / name
            ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def test_storescu_stores_every_transfer_syntax(
    scp: DicomServer, service: ArchiveService, pydicom_test_files: Path, tmp_path: Path
) -> None:
    files = _samples(pydicom_test_files, tmp_path)
    r = _storescu(scp, *files, extra=("-v", *_as_is_profile(files, tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.count("Received Store Response (Success)") == len(files), r.stderr
    held = _instances(service)
    for path in files:
        sent = pydicom.dcmread(path)
        assert held.get(sent.SOPInstanceUID) == sent.StudyInstanceUID, path.name
        blob = _stored(service, sent)
        assert blob[128:132] == b"DICM", path.name  # a Part 10 file
        got = pydicom.dcmread(pydicom.filebase.DicomBytesIO(blob))
        assert got.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
        assert got.file_meta.MediaStorageSOPClassUID == sent.SOPClassUID
        got_ts, sent_ts = got.file_meta.TransferSyntaxUID, sent.file_meta.TransferSyntaxUID
        if sent_ts.is_compressed:
            # encapsulated pixel data travels and is kept byte for byte
            assert got_ts == sent_ts, path.name
            assert got.PixelData == sent.PixelData, path.name
        elif "PixelData" in sent:
            # storescu may re-encode uncompressed data (e.g. big to little endian): same pixels
            assert (got.pixel_array == sent.pixel_array).all(), path.name
        for elem in sent:
            if elem.tag in (0x7FE00010, 0xFFFCFFFC):  # pixels compared above; storescu drops trailing padding
                continue
            assert elem.tag in got, f"{path.name}: {elem.keyword or elem.tag} missing"
            assert got[elem.tag].value == elem.value, f"{path.name}: {elem.keyword or elem.tag}"


def test_resending_is_a_successful_no_op(scp: DicomServer, service: ArchiveService, pydicom_test_files: Path) -> None:
    files = [pydicom_test_files / n for n in ("CT_small.dcm", "MR_small_RLE.dcm")]
    assert _storescu(scp, *files, extra=("-xr",)).returncode == 0  # -xr: propose RLE too
    before = {k: _stored(service, pydicom.dcmread(pydicom_test_files / n)) for k, n in enumerate(files)}
    r = _storescu(scp, *files, extra=("-xr", "-v"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Received Store Response (Success)") == 2, r.stderr
    assert len(_instances(service)) == 2
    assert {k: _stored(service, pydicom.dcmread(pydicom_test_files / n)) for k, n in enumerate(files)} == before


def test_dataset_without_study_uid_is_refused_with_a_comment(
    scp: DicomServer, service: ArchiveService, pydicom_test_files: Path, tmp_path: Path
) -> None:
    bad = _ct(pydicom_test_files, StudyInstanceUID=None)
    [status] = _scu_store(scp, bad)
    assert status.Status == 0xC000
    assert "StudyInstanceUID" in status.ErrorComment
    assert len(status.ErrorComment) <= 64
    assert _instances(service) == {}
    # dcmtk reports the failure too, and nothing is stored
    path = tmp_path / "bad.dcm"
    bad.save_as(path)
    r = _storescu(scp, path, extra=("-v",))
    assert "Received Store Response (Error: CannotUnderstand)" in r.stderr, r.stderr
    assert _instances(service) == {}
    # the next good store, on a new association, succeeds
    good = _ct(pydicom_test_files)
    [status] = _scu_store(scp, good)
    assert status.Status == 0x0000
    assert set(_instances(service)) == {good.SOPInstanceUID}


def test_other_content_under_a_stored_uid_is_a_duplicate_failure(
    scp: DicomServer, service: ArchiveService, pydicom_test_files: Path
) -> None:
    first = _ct(pydicom_test_files)
    assert _scu_store(scp, first)[0].Status == 0x0000
    original = _stored(service, first)
    other = first.copy()
    other.PatientName = "Someone^Else"
    [status] = _scu_store(scp, other)
    assert status.Status == 0x0111
    assert "other content" in status.ErrorComment
    assert _stored(service, first) == original


def test_storage_failure_is_out_of_resources(
    scp: DicomServer, service: ArchiveService, pydicom_test_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tier = service.tier("hot")

    def broken_put(key: str, data: bytes, sha256: str | None = None) -> None:
        raise StorageError("disk on fire")

    monkeypatch.setattr(tier, "put", broken_put)
    [status] = _scu_store(scp, _ct(pydicom_test_files))
    assert status.Status == 0xA700
    assert "disk on fire" in status.ErrorComment
    assert _instances(service) == {}


def test_handler_exception_is_0xC211_and_the_server_keeps_serving(
    scp: DicomServer, service: ArchiveService, pydicom_test_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "ingest_dataset", boom)
    first, second = _scu_store(scp, _ct(pydicom_test_files), _ct(pydicom_test_files))
    assert first.Status == 0xC211 and second.Status == 0xC211
    assert "boom" in first.ErrorComment
    monkeypatch.undo()
    good = _ct(pydicom_test_files)
    assert _scu_store(scp, good)[0].Status == 0x0000
    r = _storescu(scp, pydicom_test_files / "MR_small.dcm")
    assert r.returncode == 0, r.stderr
    assert len(_instances(service)) == 2


def test_parallel_associations(scp: DicomServer, service: ArchiveService, pydicom_test_files: Path) -> None:
    """Several senders at once: every instance is stored once."""
    import concurrent.futures

    batches = [[_ct(pydicom_test_files) for _ in range(5)] for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = [s for r in pool.map(lambda b: _scu_store(scp, *b), batches) for s in r]
    assert [s.Status for s in statuses] == [0] * 20
    assert len(_instances(service)) == 20
