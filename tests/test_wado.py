"""WADO-RS with dicomweb-client (and raw HTTP for the bytes) against a real uvicorn server."""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
import requests
import sqlalchemy as sa
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from conftest import write_config
from support.retrieve_data import ARCHIVE_TIER, StoredStudy, make_study
from support.http import serve

from ilm.config import Settings, load_settings
from ilm.lifecycle.move import move_study
from ilm.service import ArchiveService
from ilm.web import create_app
from ilm.web.wado import acceptable_syntaxes, NotAcceptable

SOURCES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_implicit.dcm"]


@pytest.fixture
def settings(home: Path, catalog_url: str) -> Settings:
    write_config(home, catalog_url, ARCHIVE_TIER)
    return load_settings(home=home, env={})


@pytest.fixture
def study(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> StoredStudy:
    return make_study(service, [pydicom_test_files / n for n in SOURCES], tmp_path / "src")


@pytest.fixture
def http_server(service: ArchiveService) -> Iterator[str]:
    with serve(create_app(service, auth=False)) as url:
        yield url


@pytest.fixture
def client(http_server: str) -> DICOMwebClient:
    return DICOMwebClient(f"{http_server}/dicomweb")


def parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related body, split on its boundary (headers, content)."""
    m = re.search(r"boundary=([^;\s]+)", response.headers["content-type"])
    assert m, response.headers["content-type"]
    boundary = b"--" + m.group(1).strip('"').encode()
    body = response.content
    assert body.endswith(boundary + b"--\r\n"), "the closing boundary is missing"
    out = []
    for chunk in body.split(boundary)[1:-1]:
        head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        out.append((headers, content.removesuffix(b"\r\n")))
    return out


def access_rows(service: ArchiveService) -> list[tuple[str, str, str, int]]:
    service.access.flush()
    with service.catalog.read() as c:
        return [tuple(r) for r in c.execute(sa.text(
            "SELECT study_uid, interface, who, instances FROM access_log ORDER BY id")).all()]


def last_access(service: ArchiveService, uid: str) -> object:
    service.access.flush()
    detail = service.study(uid)
    assert detail is not None
    return detail.summary.last_accessed_at


def locations(service: ArchiveService) -> list[tuple[str, str, str]]:
    with service.catalog.read() as c:
        return sorted(tuple(r) for r in c.execute(sa.text("SELECT tier, object_key, state FROM locations")).all())


def test_study_series_instance_come_back_as_stored(client: DICOMwebClient, http_server: str,
                                                   service: ArchiveService, study: StoredStudy) -> None:
    got = client.retrieve_study(study.study_uid)
    assert sorted(d.SOPInstanceUID for d in got) == sorted(study.sop_uids)
    for ds in got:
        stored = pydicom.dcmread(DicomBytesIO(study.blobs[ds.SOPInstanceUID]))
        assert ds == stored  # every element, pixel data included
        assert ds.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID
    series_uid, sops = next(iter(study.series.items()))
    got = client.retrieve_series(study.study_uid, series_uid)
    assert [d.SOPInstanceUID for d in got] == sops
    one = client.retrieve_instance(study.study_uid, series_uid, sops[-1])
    assert one.SOPInstanceUID == sops[-1]
    # byte for byte, with the stored transfer syntax on each part
    r = httpx.get(f"{http_server}/dicomweb/studies/{study.study_uid}",
                  headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    got_parts = parts(r)
    assert len(got_parts) == len(study.sop_uids)
    for headers, content in got_parts:
        ds = pydicom.dcmread(DicomBytesIO(content))
        assert content == study.blobs[ds.SOPInstanceUID]
        assert headers["Content-Type"] == f"application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
        assert int(headers["Content-Length"]) == len(content)


def test_unknown_study_series_instance_are_404(client: DICOMwebClient, study: StoredStudy) -> None:
    series_uid, sops = next(iter(study.series.items()))
    for call in (lambda: client.retrieve_study("1.2.3.4"),
                 lambda: client.retrieve_series(study.study_uid, "1.2.3.4"),
                 lambda: client.retrieve_instance(study.study_uid, series_uid, "1.2.3.4"),
                 lambda: client.retrieve_study_metadata("1.2.3.4")):
        with pytest.raises(requests.HTTPError) as info:
            call()
        assert info.value.response.status_code == 404


def test_metadata_is_dicom_json_with_bulk_data_uris(client: DICOMwebClient, http_server: str,
                                                     service: ArchiveService, study: StoredStudy) -> None:
    meta = client.retrieve_study_metadata(study.study_uid)
    assert len(meta) == len(study.sop_uids)
    bulky = 0
    for item in meta:
        ds = Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")
        stored = pydicom.dcmread(DicomBytesIO(study.blobs[ds.SOPInstanceUID]))
        assert ds.PatientID == stored.PatientID and ds.SOPClassUID == stored.SOPClassUID
        assert ds.Rows == stored.Rows
        pixel = item["7FE00010"]
        if len(stored.PixelData) <= 1024:  # small values stay inline (the JPEG 2000 sample: 266 bytes)
            assert base64.b64decode(pixel["InlineBinary"]) == stored.PixelData
            continue
        bulky += 1
        # dicomweb-client sends a Host header without the port, so only the path is checked here
        path = (f"/dicomweb/studies/{study.study_uid}/series/{stored.SeriesInstanceUID}"
                f"/instances/{stored.SOPInstanceUID}/bulkdata/7FE00010")
        assert "InlineBinary" not in pixel and pixel["BulkDataURI"].endswith(path)
        r = httpx.get(http_server + path)
        assert r.status_code == 200
        [(_, value)] = parts(r)
        assert value == stored.PixelData
    assert bulky == 3
    series_uid, sops = next(iter(study.series.items()))
    assert len(client.retrieve_series_metadata(study.study_uid, series_uid)) == len(sops)
    assert client.retrieve_instance_metadata(study.study_uid, series_uid, sops[0])["00080018"]["Value"] == [sops[0]]


def test_access_is_recorded_for_retrievals_not_for_metadata(client: DICOMwebClient, service: ArchiveService,
                                                            study: StoredStudy) -> None:
    client.retrieve_study_metadata(study.study_uid)
    assert access_rows(service) == []
    assert last_access(service, study.study_uid) is None
    client.retrieve_study(study.study_uid)
    series_uid, sops = next(iter(study.series.items()))
    client.retrieve_instance(study.study_uid, series_uid, sops[0])
    assert access_rows(service) == [(study.study_uid, "wado-rs", "127.0.0.1", len(study.sop_uids)),
                                    (study.study_uid, "wado-rs", "127.0.0.1", 1)]
    assert last_access(service, study.study_uid) is not None


def test_transfer_syntax_is_never_changed(http_server: str, study: StoredStudy) -> None:
    url = f"{http_server}/dicomweb/studies/{study.study_uid}"
    explicit = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    r = httpx.get(url, headers={"Accept": explicit})
    assert r.status_code == 406  # the JPEG 2000 and implicit VR instances cannot be sent as asked
    assert "transfer-syntax=*" in r.json()["detail"]
    series_of_ct = next(s for s, uids in study.series.items()
                        if pydicom.dcmread(DicomBytesIO(study.blobs[uids[0]])).file_meta.TransferSyntaxUID
                        == "1.2.840.10008.1.2.1")
    ct = study.series[series_of_ct][0]
    r = httpx.get(f"{url}/series/{series_of_ct}/instances/{ct}", headers={"Accept": explicit})
    assert r.status_code == 200 and parts(r)[0][1] == study.blobs[ct]
    assert httpx.get(url, headers={"Accept": "application/json"}).status_code == 406


def test_accept_header_parsing() -> None:
    assert acceptable_syntaxes(None) is None
    assert acceptable_syntaxes('multipart/related; type="application/dicom"') is None
    assert acceptable_syntaxes('multipart/related; type="application/dicom"; transfer-syntax=*') is None
    assert acceptable_syntaxes("*/*") is None
    assert acceptable_syntaxes('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90, '
                               'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
                               ) == {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.1"}
    with pytest.raises(NotAcceptable):
        acceptable_syntaxes('multipart/related; type="image/jpeg"')


def test_archived_study_answers_503_with_retry_after(http_server: str, client: DICOMwebClient,
                                                      service: ArchiveService, study: StoredStudy) -> None:
    move_study(service.catalog, service.tier, study.study_uid, "vault")
    url = f"{http_server}/dicomweb/studies/{study.study_uid}"
    r = httpx.get(url)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "30"  # no restore under way: one restore latency after a recall
    assert "restored first" in r.json()["detail"]
    assert httpx.get(f"{url}/metadata").status_code == 503
    [status] = service.recall([study.study_uid], "test")
    r = httpx.get(url)
    assert r.status_code == 503
    assert 1 <= int(r.headers["retry-after"]) <= 30
    assert "being restored" in r.json()["detail"]
    client.set_http_retry_params(retry=False)  # dicomweb-client retries a 503 by default
    with pytest.raises(requests.HTTPError) as info:
        client.retrieve_study(study.study_uid)
    assert info.value.response.status_code == 503
    assert access_rows(service) == []  # nothing was retrieved


def test_tier_down_answers_503_and_changes_nothing(http_server: str, service: ArchiveService, study: StoredStudy,
                                                    settings: Settings) -> None:
    move_study(service.catalog, service.tier, study.study_uid, "warm")
    before = locations(service)
    warm = settings.resolve("tiers/warm")
    shutil.move(warm, warm.with_name("warm-unplugged"))
    try:
        r = httpx.get(f"{http_server}/dicomweb/studies/{study.study_uid}")
        assert r.status_code == 503
        assert "warm" in r.json()["detail"]
    finally:
        shutil.move(warm.with_name("warm-unplugged"), warm)
    assert locations(service) == before
    assert access_rows(service) == []
    assert httpx.get(f"{http_server}/dicomweb/studies/{study.study_uid}").status_code == 200
