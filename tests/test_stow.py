"""DICOMweb STOW-RS: with FastAPI's TestClient, and with a real uvicorn server and dicomweb-client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from support.http import serve

from ilm.catalog.queries import StudyFilter
from ilm.service import ArchiveService
from ilm.uids import instance_key
from ilm.web import create_app

BOUNDARY = "ilm-test-boundary-7d3f"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
REFERENCED, FAILED, RETRIEVE_URL = "00081199", "00081198", "00081190"
SOP_CLASS, SOP_INSTANCE, FAILURE_REASON = "00081150", "00081155", "00081197"


def multipart(*parts: bytes, part_type: str | None = "application/dicom") -> bytes:
    out = b""
    for p in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        if part_type:
            out += f"Content-Type: {part_type}\r\n".encode()
        out += b"\r\n" + p + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def instance_count(service: ArchiveService) -> int:
    return sum(s.instance_count for s in service.studies(StudyFilter(limit=1000)))


def stored_bytes(service: ArchiveService, ds: Dataset) -> bytes:
    return service.tier("hot").get(instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))


def items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(body.get(tag, {}).get("Value", []))


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


@pytest.fixture
def client(service: ArchiveService) -> Iterator[TestClient]:
    with TestClient(create_app(service, auth=False)) as c:
        yield c


@pytest.fixture
def files(pydicom_test_files: Path) -> dict[str, Path]:
    return {n: pydicom_test_files / f"{n}.dcm" for n in ("CT_small", "MR_small", "JPEG2000", "rtdose")}


def post(client: TestClient, body: bytes, url: str = "/dicomweb/studies", content_type: str = CONTENT_TYPE) -> httpx.Response:
    return client.post(url, content=body, headers={"Content-Type": content_type})


def test_health(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_stores_instances(client: TestClient, service: ArchiveService, files: dict[str, Path]) -> None:
    sent = [files["CT_small"], files["MR_small"], files["JPEG2000"]]
    r = post(client, multipart(*(p.read_bytes() for p in sent)))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    body = r.json()
    assert FAILED not in body
    refs = items(body, REFERENCED)
    assert len(refs) == 3
    for path, ref in zip(sent, refs):
        ds = pydicom.dcmread(path)
        assert value(ref, SOP_INSTANCE) == ds.SOPInstanceUID
        assert value(ref, SOP_CLASS) == ds.SOPClassUID
        assert value(ref, RETRIEVE_URL).endswith(
            f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
        assert stored_bytes(service, ds) == path.read_bytes()  # a Part 10 file is kept byte for byte
    assert instance_count(service) == 3
    # the response parses as a DICOM dataset
    assert len(Dataset.from_json(body).ReferencedSOPSequence) == 3


def test_same_instance_again_is_success(client: TestClient, service: ArchiveService, files: dict[str, Path]) -> None:
    body = multipart(files["CT_small"].read_bytes())
    assert post(client, body).status_code == 200
    r = post(client, body)
    assert r.status_code == 200
    assert len(items(r.json(), REFERENCED)) == 1
    assert instance_count(service) == 1


def test_bad_part_fails_alone_with_202(client: TestClient, service: ArchiveService, files: dict[str, Path]) -> None:
    r = post(client, multipart(files["CT_small"].read_bytes(), b"this is not DICOM", files["MR_small"].read_bytes()))
    assert r.status_code == 202, r.text
    body = r.json()
    assert [value(i, SOP_INSTANCE) for i in items(body, REFERENCED)] == [
        pydicom.dcmread(files["CT_small"]).SOPInstanceUID, pydicom.dcmread(files["MR_small"]).SOPInstanceUID]
    [failed] = items(body, FAILED)
    assert value(failed, FAILURE_REASON) == 0xC000
    assert instance_count(service) == 2


def test_part_of_another_media_type_fails(client: TestClient, service: ArchiveService, files: dict[str, Path]) -> None:
    body = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + files["CT_small"].read_bytes()
            + f"\r\n--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode() + files["MR_small"].read_bytes()
            + f"\r\n--{BOUNDARY}--\r\n".encode())
    r = post(client, body)
    assert r.status_code == 202
    assert value(items(r.json(), FAILED)[0], FAILURE_REASON) == 0xC000
    assert instance_count(service) == 1


def test_all_bad_is_409(client: TestClient, service: ArchiveService) -> None:
    r = post(client, multipart(b"garbage", b"\x00" * 200))
    assert r.status_code == 409
    body = r.json()
    assert len(items(body, FAILED)) == 2 and REFERENCED not in body
    assert instance_count(service) == 0


def test_conflicting_content_is_0111(client: TestClient, service: ArchiveService, files: dict[str, Path], tmp_path: Path) -> None:
    assert post(client, multipart(files["CT_small"].read_bytes())).status_code == 200
    ds = pydicom.dcmread(files["CT_small"])
    ds.PatientName = "Other^Person"
    other = tmp_path / "other.dcm"
    ds.save_as(other)
    r = post(client, multipart(other.read_bytes()))
    assert r.status_code == 409
    [failed] = items(r.json(), FAILED)
    assert value(failed, FAILURE_REASON) == 0x0111
    assert value(failed, SOP_INSTANCE) == ds.SOPInstanceUID
    assert stored_bytes(service, ds) == files["CT_small"].read_bytes()


def test_study_in_url_refuses_other_studies(client: TestClient, service: ArchiveService, files: dict[str, Path]) -> None:
    ct = pydicom.dcmread(files["CT_small"])
    r = post(client, multipart(files["CT_small"].read_bytes(), files["MR_small"].read_bytes()),
             url=f"/dicomweb/studies/{ct.StudyInstanceUID}")
    assert r.status_code == 202
    body = r.json()
    assert value(body, RETRIEVE_URL).endswith(f"/dicomweb/studies/{ct.StudyInstanceUID}")
    [failed] = items(body, FAILED)
    assert value(failed, FAILURE_REASON) == 0xA900
    assert value(failed, SOP_INSTANCE) == pydicom.dcmread(files["MR_small"]).SOPInstanceUID
    assert instance_count(service) == 1


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ("application/json", 415),
        ('multipart/related; type="application/dicom+json"; boundary=' + BOUNDARY, 415),
        ("multipart/form-data; boundary=" + BOUNDARY, 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
    ],
    ids=["single-dicom", "json", "metadata-type", "form-data", "no-boundary"],
)
def test_wrong_media_type(client: TestClient, service: ArchiveService, files: dict[str, Path], content_type: str, status: int) -> None:
    r = post(client, multipart(files["CT_small"].read_bytes()), content_type=content_type)
    assert r.status_code == status, r.text
    assert "detail" in r.json()
    assert instance_count(service) == 0


def test_malformed_bodies_are_400_and_store_nothing(client: TestClient, service: ArchiveService, files: dict[str, Path]) -> None:
    whole = multipart(files["CT_small"].read_bytes(), files["MR_small"].read_bytes())
    truncated = whole[: len(whole) - 5000]
    assert post(client, truncated).status_code == 400
    assert post(client, b"no boundary anywhere in here").status_code == 400
    assert post(client, f"--{BOUNDARY}--\r\n".encode()).status_code == 400  # no parts
    assert instance_count(service) == 0
    assert post(client, whole).status_code == 200  # and the next request is served


def test_oversized_body_is_413_and_stores_nothing(service: ArchiveService, files: dict[str, Path]) -> None:
    body = multipart(files["CT_small"].read_bytes(), files["MR_small"].read_bytes())
    with TestClient(create_app(service, max_request_bytes=len(body) - 1, auth=False)) as c:
        assert post(c, body).status_code == 413  # told by Content-Length

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            for i in range(0, len(body), 8192):
                yield body[i:i + 8192]

        r = c.post("/dicomweb/studies", content=chunks(), headers={"Content-Type": CONTENT_TYPE})
        assert r.status_code == 413
        assert instance_count(service) == 0
        small = multipart(files["MR_small"].read_bytes())
        assert post(c, small).status_code == 200


# -- a real server and a real client ---------------------------------------------


@pytest.fixture
def http_server(service: ArchiveService) -> Iterator[str]:
    with serve(create_app(service, auth=False)) as url:
        yield url


def test_dicomweb_client_stores(http_server: str, service: ArchiveService, pydicom_test_files: Path) -> None:
    client = DICOMwebClient(f"{http_server}/dicomweb")
    # about 1.1 MB: dicomweb-client sends it with chunked transfer encoding
    names = ["CT_small", "examples_overlay", "examples_palette", "examples_rgb_color", "waveform_ecg"]
    datasets = [pydicom.dcmread(pydicom_test_files / f"{n}.dcm") for n in names]
    result = client.store_instances(datasets)
    assert [r.ReferencedSOPInstanceUID for r in result.ReferencedSOPSequence] == [d.SOPInstanceUID for d in datasets]
    assert "FailedSOPSequence" not in result
    assert instance_count(service) == len(datasets)
    for ds in datasets:
        got = pydicom.dcmread(pydicom.filebase.DicomBytesIO(stored_bytes(service, ds)))
        assert got.SOPInstanceUID == ds.SOPInstanceUID
        assert got.PixelData == ds.PixelData if "PixelData" in ds else True


def test_dicomweb_client_partial_and_total_failure(http_server: str, service: ArchiveService, pydicom_test_files: Path) -> None:
    client = DICOMwebClient(f"{http_server}/dicomweb")
    good = pydicom.dcmread(pydicom_test_files / "MR_small.dcm")
    bad = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    bad.SOPInstanceUID = generate_uid()
    del bad.StudyInstanceUID
    result = client.store_instances([good, bad])  # 202: the client returns the response
    assert [r.ReferencedSOPInstanceUID for r in result.ReferencedSOPSequence] == [good.SOPInstanceUID]
    [failed] = result.FailedSOPSequence
    assert failed.FailureReason == 0xC000
    assert instance_count(service) == 1
    with pytest.raises(requests.HTTPError) as info:
        client.store_instances([bad])
    assert info.value.response.status_code == 409
    # a request that is not STOW at all, then the server still serves
    r = httpx.post(f"{http_server}/dicomweb/studies", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    assert httpx.get(f"{http_server}/health").json() == {"status": "ok"}
    other = pydicom.dcmread(pydicom_test_files / "JPEG2000.dcm")
    assert len(client.store_instances([other]).ReferencedSOPSequence) == 1
    assert instance_count(service) == 2
