"""STOW-RS stores the instances of a request together (ArchiveService.ingest_many):
files written in parallel, one catalog transaction per group of parts. What a
client relies on must not change: each instance stored exactly once, results in
the order of the parts, nothing acknowledged that is not stored and catalogued,
nothing left behind when the catalog refuses the group."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from support.http import serve

from ilm import service as service_module
from ilm.config import load_settings
from ilm.models import StudyFilter
from ilm.service import ArchiveService, iter_files
from ilm.web import create_app

from conftest import write_config

BOUNDARY = "ilm-batch-boundary-41c2"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
REFERENCED, FAILED, SOP_INSTANCE, FAILURE_REASON = "00081199", "00081198", "00081155", "00081197"


def multipart(parts: list[tuple[bytes, str]]) -> bytes:
    out = b""
    for data, media in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {media}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def make_instances(src: Path, studies: int, series: int, per_series: int) -> list[bytes]:
    """Copies of CT_small under new UIDs: ``studies`` x ``series`` x ``per_series`` instances."""
    out = []
    for st in range(studies):
        study_uid = generate_uid()
        for se in range(series):
            series_uid = generate_uid()
            for n in range(per_series):
                ds = pydicom.dcmread(src)
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.InstanceNumber = n + 1
                ds.Modality = ("CT", "MR")[se % 2]
                ds.StationName = f"STATION{st}{se}"
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                out.append(buf.getvalue())
    return out


def sop_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def tier_files(service: ArchiveService) -> list[Path]:
    return [p for p in (service.settings.home / "tiers" / "hot").rglob("*") if p.is_file()]


def study_rows(service: ArchiveService) -> list[tuple[object, ...]]:
    return sorted((s.study_instance_uid, s.instance_count, s.series_count, s.size_bytes, s.modalities, s.tiers)
                  for s in service.studies(StudyFilter(limit=1000)))


@pytest.fixture
def ct_small(pydicom_test_files: Path) -> Path:
    return pydicom_test_files / "CT_small.dcm"


def test_a_request_is_stored_in_order_each_instance_once_in_one_transaction(
        service: ArchiveService, ct_small: Path) -> None:
    good = make_instances(ct_small, studies=2, series=2, per_series=6)  # 24 new instances
    other = pydicom.dcmread(io.BytesIO(good[3]))
    other.PatientName = "Someone^Else"  # same SOP Instance UID as good[3], other content
    buf = io.BytesIO()
    other.save_as(buf, enforce_file_format=True)
    parts = [(d, "application/dicom") for d in good[:10]]
    parts += [(good[0], "application/dicom"),          # the same instance twice in one request
              (buf.getvalue(), "application/dicom"),   # a conflict with part 4 of this request
              (b"not dicom at all", "application/dicom"),
              (good[10], "text/plain")]
    parts += [(d, "application/dicom") for d in good[10:]]
    commits = []
    event.listen(service.catalog.engine, "commit", lambda conn: commits.append(1))
    with TestClient(create_app(service, auth=False)) as client:
        r = client.post("/dicomweb/studies", content=multipart(parts), headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 202, r.text
    body = r.json()
    referenced = [i[SOP_INSTANCE]["Value"][0] for i in body[REFERENCED]["Value"]]
    assert referenced == [sop_uid(d) for d in good[:10]] + [sop_uid(good[0])] + [sop_uid(d) for d in good[10:]]
    failed = [(i[SOP_INSTANCE].get("Value", [""])[0], i[FAILURE_REASON]["Value"][0]) for i in body[FAILED]["Value"]]
    assert failed == [(sop_uid(good[3]), 0x0111), ("", 0xC000), ("", 0xC000)]
    # every instance once in the catalog and once on disk, the totals of each study right
    assert study_rows(service) == sorted(
        (str(pydicom.dcmread(io.BytesIO(good[i]), stop_before_pixels=True).StudyInstanceUID), 12, 2,
         sum(len(d) for d in good[i:i + 12]), ("CT", "MR"), ("hot",)) for i in (0, 12))
    assert len(tier_files(service)) == 24
    # the new instances of the request in few transactions, not one per instance
    # (the conflict kept aside and the read-only lookups of the repeats commit on their own)
    assert len(commits) <= 4, len(commits)


def test_the_same_catalog_as_one_by_one(tmp_path: Path, service: ArchiveService, ct_small: Path) -> None:
    data = make_instances(ct_small, studies=2, series=3, per_series=3)
    data.append(data[0])  # a repeat
    many = service.ingest_many([(d, f"part {i}") for i, d in enumerate(data)])
    home = tmp_path / "one-by-one"  # the reference, one by one, on a SQLite catalog of its own (either backend)
    write_config(home, f"sqlite:///{home / 'catalog.sqlite'}")
    one = ArchiveService.open(load_settings(home=home, env={}))
    try:
        single = [one.ingest_bytes(d, f"part {i}") for i, d in enumerate(data)]
        assert [(r.status, r.sop_instance_uid, r.size) for r in many] == \
               [(r.status, r.sop_instance_uid, r.size) for r in single]
        assert [r.status.value for r in many].count("stored") == 18
        assert study_rows(service) == study_rows(one)
    finally:
        one.close()


def test_a_catalog_failure_fails_the_group_and_leaves_no_file(service: ArchiveService, ct_small: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_instances(ct_small, studies=1, series=1, per_series=5)

    def refuse(*args: object, **kwargs: object) -> list[bool]:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(service_module, "record_instances", refuse)
    with TestClient(create_app(service, auth=False)) as client:
        r = client.post("/dicomweb/studies", content=multipart([(d, "application/dicom") for d in data]),
                        headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 409
    assert [i[FAILURE_REASON]["Value"][0] for i in r.json()[FAILED]["Value"]] == [0xA700] * 5
    assert tier_files(service) == []
    assert study_rows(service) == []


@pytest.fixture
def http_server(service: ArchiveService) -> Iterator[str]:
    with serve(create_app(service, auth=False)) as url:
        yield url


def test_concurrent_clients_sending_the_same_instances_store_each_once(
        http_server: str, service: ArchiveService, ct_small: Path) -> None:
    data = make_instances(ct_small, studies=2, series=2, per_series=8)  # 32 instances
    # four clients, each sending every instance of its half (two clients per half), in its own order
    halves = [data[:16], data[16:]]
    requests = [halves[c % 2][::1 if c < 2 else -1] for c in range(4)]
    answers: list[int] = []
    start = threading.Barrier(4)

    def client(chunk: list[bytes]) -> None:
        with httpx.Client(timeout=120) as http:
            start.wait()
            for i in range(0, len(chunk), 5):
                r = http.post(f"{http_server}/dicomweb/studies",
                              content=multipart([(d, "application/dicom") for d in chunk[i:i + 5]]),
                              headers={"Content-Type": CONTENT_TYPE})
                answers.append(r.status_code)
                assert FAILED not in r.json(), r.text

    threads = [threading.Thread(target=client, args=(chunk,)) for chunk in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert answers == [200] * 16
    assert sorted(r[1] for r in study_rows(service)) == [16, 16]
    files = tier_files(service)
    assert len(files) == 32 and not [p for p in files if p.name.startswith(".tmp-")]


def test_import_stores_files_in_groups_in_their_order(service: ArchiveService, ct_small: Path,
                                                      tmp_path: Path) -> None:
    data = make_instances(ct_small, studies=1, series=2, per_series=30)  # 60 files: two groups of at most 50
    folder = tmp_path / "in"
    folder.mkdir()
    for i, d in enumerate(data):
        (folder / f"f{i:03d}.dcm").write_bytes(d)
    (folder / "f010a.dcm").write_bytes(data[3])            # the same instance again, in the first group
    (folder / "f020a.txt").write_text("not dicom")         # rejected with a reason
    (folder / "sub").mkdir()
    (folder / "sub" / "again.dcm").write_bytes(data[55])   # the same instance again, in a later group
    seen: list[str] = []
    commits = []
    event.listen(service.catalog.engine, "commit", lambda conn: commits.append(1))
    report = service.import_paths([folder], progress=lambda r: seen.append(r.source))
    assert (report.stored, report.duplicates, report.rejected) == (60, 2, 1)
    assert seen == [str(p) for p in iter_files([folder])]  # one result per file, in the order of the files
    assert len(tier_files(service)) == 60
    assert study_rows(service)[0][1:3] == (60, 2)
    assert len(commits) < 15  # groups, not one transaction per file
