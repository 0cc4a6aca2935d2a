"""QIDO-RS with a client nobody here wrote: dicomweb-client against a real uvicorn server.

Protocol corners (status codes, headers) are checked with plain httpx
against the same server, and the result cap with FastAPI's TestClient.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from dicomweb_client import DICOMwebClient
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from support import query_data as qd
from support.query_data import CT, MR
from support.http import serve

from ilm.catalog.schema import patients, series, studies
from ilm.service import ArchiveService
from ilm.web import create_app
from ilm.web.qido import qido_router


@pytest.fixture
def archive(service: ArchiveService) -> qd.Archive:
    return qd.load(service)


@pytest.fixture
def http_server(service: ArchiveService, archive: qd.Archive) -> Iterator[str]:
    with serve(create_app(service, auth=False)) as url:
        yield url


@pytest.fixture
def client(http_server: str) -> DICOMwebClient:
    return DICOMwebClient(f"{http_server}/dicomweb")


def datasets(results: list[dict[str, Any]]) -> list[Dataset]:
    return [Dataset.from_json(r) for r in results]


def keys(arch: qd.Archive, results: list[dict[str, Any]], keyword: str) -> list[str]:
    return [arch.key_of(str(ds[keyword].value)) for ds in datasets(results)]


def catalog_rows(service: ArchiveService) -> list[Any]:
    with service.catalog.read() as conn:
        return [list(conn.execute(sa.select(t).order_by(t.c.id))) for t in (patients, studies, series)]


# -- searches with dicomweb-client ---------------------------------------------------------


def test_search_for_studies(client: DICOMwebClient, archive: qd.Archive, http_server: str) -> None:
    results = client.search_for_studies()
    assert keys(archive, results, "StudyInstanceUID") == ["S7", "S3", "S2", "S1", "S4", "S5"]  # not S6: quarantined
    s2 = next(ds for ds in datasets(results) if ds.StudyInstanceUID == archive.study["S2"])
    assert str(s2.PatientName) == "Doe^John" and s2.PatientID == "PID001" and s2.PatientBirthDate == "19600101"
    assert s2.StudyDate == "20201231" and s2.StudyTime == "235959" and s2.AccessionNumber == "ACC_2"
    assert list(s2.ModalitiesInStudy) == ["MR", "SR"]
    assert s2.NumberOfStudyRelatedSeries == 2 and s2.NumberOfStudyRelatedInstances == 2
    assert s2.InstanceAvailability == "ONLINE" and s2.StudyDescription == "MR BRAIN 100%"
    # dicomweb-client sends "Host: 127.0.0.1" without the port; the URL follows the Host header
    assert s2.RetrieveURL == f"http://127.0.0.1/dicomweb/studies/{archive.study['S2']}"
    raw = next(r for r in results if r["0020000D"]["Value"] == [archive.study["S2"]])
    assert raw["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert raw["00201206"] == {"vr": "IS", "Value": [2]}
    assert raw["00080061"]["vr"] == "CS" and raw["00081190"]["vr"] == "UR"
    s5 = next(r for r in results if r["0020000D"]["Value"] == [archive.study["S5"]])
    assert s5["00080020"] == {"vr": "DA"}  # no study date: present, without a value
    s7 = next(ds for ds in datasets(results) if ds.StudyInstanceUID == archive.study["S7"])
    assert s7.PatientName.ideographic == "山田^太郎"


@pytest.mark.parametrize("filters, expected", [
    ({"PatientID": "PID001"}, ["S2", "S1"]),
    ({"00100020": "PID001"}, ["S2", "S1"]),                      # by tag
    ({"PatientName": "doe*"}, ["S3", "S2", "S1"]),               # wildcard, any case
    ({"StudyDate": "20200101-20201231"}, ["S2", "S1"]),          # range
    ({"StudyDate": "-20200115"}, ["S1", "S4"]),                  # open range
    ({"StudyDate": "20201231-"}, ["S7", "S3", "S2"]),
    ({"ModalitiesInStudy": "CT"}, ["S7", "S3", "S1"]),
    ({"ModalitiesInStudy": "MR", "PatientBirthDate": "-19701231"}, ["S2", "S4"]),
    ({"StudyTime": "1000-1200"}, ["S7", "S1"]),
    ({"AccessionNumber": "ACC6"}, []),                           # quarantined
], ids=["patient-id", "tag", "pn-wildcard", "date-range", "open-start", "open-end", "modalities", "two-keys",
        "time-range", "quarantined"])
def test_study_matching(client: DICOMwebClient, archive: qd.Archive, filters: dict[str, str],
                        expected: list[str]) -> None:
    assert keys(archive, client.search_for_studies(search_filters=filters), "StudyInstanceUID") == expected


def test_uid_lists(client: DICOMwebClient, archive: qd.Archive) -> None:
    s = archive.study
    both = client.search_for_studies(search_filters={"StudyInstanceUID": f"{s['S1']},{s['S3']}"})
    assert keys(archive, both, "StudyInstanceUID") == ["S3", "S1"]
    repeated = client.search_for_studies(search_filters={"StudyInstanceUID": [s["S1"], s["S4"], s["S6"]]})
    assert keys(archive, repeated, "StudyInstanceUID") == ["S1", "S4"]


def test_search_for_series(client: DICOMwebClient, archive: qd.Archive, http_server: str) -> None:
    of_s1 = client.search_for_series(study_instance_uid=archive.study["S1"])
    assert keys(archive, of_s1, "SeriesInstanceUID") == ["S1/1", "S1/2"]
    first = datasets(of_s1)[0]
    assert first.Modality == "CT" and first.SeriesNumber == 1 and first.NumberOfSeriesRelatedInstances == 2
    assert first.SeriesDescription == "AXIAL" and first.BodyPartExamined == "CHEST"
    assert first.StudyInstanceUID == archive.study["S1"]
    assert first.RetrieveURL == f"http://127.0.0.1/dicomweb/studies/{archive.study['S1']}/series/{archive.series['S1/1']}"
    assert "PatientName" not in first  # the study is fixed by the path: its attributes are not repeated
    mr = client.search_for_series(search_filters={"Modality": "mr"})
    assert sorted(keys(archive, mr, "SeriesInstanceUID")) == ["S2/1", "S4/1"]
    assert {ds.PatientID for ds in datasets(mr)} == {"PID001", "PID_3%"}  # /series: study attributes included
    assert client.search_for_series(search_filters={"SeriesNumber": "99"})[0]["0020000E"]["Value"] == \
        [archive.series["S2/2"]]


def test_search_for_instances(client: DICOMwebClient, archive: qd.Archive, http_server: str) -> None:
    of_series = client.search_for_instances(study_instance_uid=archive.study["S1"],
                                            series_instance_uid=archive.series["S1/1"])
    assert keys(archive, of_series, "SOPInstanceUID") == ["S1/1/1", "S1/1/2"]
    ds = datasets(of_series)[1]
    assert ds.SOPClassUID == CT and ds.InstanceNumber == 2 and ds.InstanceAvailability == "ONLINE"
    assert ds.RetrieveURL == (f"http://127.0.0.1/dicomweb/studies/{archive.study['S1']}/series/{archive.series['S1/1']}"
                              f"/instances/{archive.instance['S1/1/2']}")
    of_study = client.search_for_instances(study_instance_uid=archive.study["S1"])
    assert keys(archive, of_study, "SOPInstanceUID") == ["S1/1/1", "S1/1/2", "S1/2/1"]
    assert all(d.Modality == "CT" for d in datasets(of_study))  # series attributes included
    mr = client.search_for_instances(search_filters={"SOPClassUID": MR})
    assert sorted(keys(archive, mr, "SOPInstanceUID")) == ["S2/1/1", "S4/1/1"]
    assert {d.PatientID for d in datasets(mr)} == {"PID001", "PID_3%"}
    assert client.search_for_instances(search_filters={"SOPInstanceUID": archive.instance["S6/1/1"]}) == []


def test_limit_offset(client: DICOMwebClient, archive: qd.Archive) -> None:
    assert keys(archive, client.search_for_studies(limit=2), "StudyInstanceUID") == ["S7", "S3"]
    assert keys(archive, client.search_for_studies(limit=2, offset=1), "StudyInstanceUID") == ["S3", "S2"]
    assert keys(archive, client.search_for_studies(offset=5), "StudyInstanceUID") == ["S5"]
    assert client.search_for_studies(offset=6) == []
    every = client.search_for_studies(limit=2, get_remaining=True)  # pages until an empty answer
    assert keys(archive, every, "StudyInstanceUID") == ["S7", "S3", "S2", "S1", "S4", "S5"]
    page = client.search_for_instances(study_instance_uid=archive.study["S1"], limit=1, offset=2)
    assert keys(archive, page, "SOPInstanceUID") == ["S1/2/1"]


def test_includefield(client: DICOMwebClient, archive: qd.Archive) -> None:
    [plain] = client.search_for_studies(search_filters={"PatientID": "PID001"}, limit=1)
    assert "00080062" not in plain and "00080080" not in plain  # SOPClassesInStudy, InstitutionName: not defaults
    [more] = client.search_for_studies(search_filters={"PatientID": "PID001"}, limit=1,
                                       fields=["SOPClassesInStudy", "00101010"])  # keyword and tag (PatientAge)
    assert more["00080062"]["vr"] == "UI" and more["00101010"]["vr"] == "AS"
    [every] = client.search_for_studies(search_filters={"PatientID": "PID001"}, limit=1, fields=["all"])
    for tag in ("00080062", "00080080", "00100021", "00201200", "00080056"):
        assert tag in every, tag
    series = client.search_for_series(study_instance_uid=archive.study["S1"], fields=["StationName"])
    assert all("00081010" in s for s in series)
    # matching keys come back even when not asked for
    [s3] = client.search_for_studies(search_filters={"PatientSex": "F"})
    assert s3["00100040"]["Value"] == ["F"]


def test_sql_metacharacters_match_literally_and_change_nothing(
    client: DICOMwebClient, service: ArchiveService, archive: qd.Archive
) -> None:
    before, access = catalog_rows(service), qd.access_snapshot(service)
    q = client.search_for_studies
    assert keys(archive, q(search_filters={"AccessionNumber": "ACC_2"}), "StudyInstanceUID") == ["S2"]
    assert keys(archive, q(search_filters={"AccessionNumber": "ACC%4"}), "StudyInstanceUID") == ["S4"]
    assert keys(archive, q(search_filters={"PatientID": "PID_3%"}), "StudyInstanceUID") == ["S4"]
    assert keys(archive, q(search_filters={"PatientName": "O'Brien*"}), "StudyInstanceUID") == ["S5"]
    assert keys(archive, q(search_filters={"StudyDescription": "*100%"}), "StudyInstanceUID") == ["S2"]
    for value in ("%", "_", "'", "%%", "ACC%", "x' OR '1'='1", "'; DELETE FROM studies; --", "ACC\\%"):
        assert q(search_filters={"AccessionNumber": value}) == [], value
        assert q(search_filters={"PatientName": value}) == [], value
    assert q(search_filters={"StudyDescription": "%"}) == []
    assert catalog_rows(service) == before
    assert qd.access_snapshot(service) == access


def test_queries_do_not_count_as_access(client: DICOMwebClient, service: ArchiveService, archive: qd.Archive) -> None:
    before = qd.access_snapshot(service)
    client.search_for_studies()
    client.search_for_series()
    client.search_for_instances()
    client.search_for_series(study_instance_uid=archive.study["S1"])
    client.search_for_instances(study_instance_uid=archive.study["S1"], series_instance_uid=archive.series["S1/1"])
    assert qd.access_snapshot(service) == before


# -- protocol corners with httpx --------------------------------------------------------------


def test_retrieve_url_follows_the_host_header(http_server: str, archive: qd.Archive) -> None:
    [r] = httpx.get(f"{http_server}/dicomweb/studies", params={"AccessionNumber": "ACC1"}).json()
    assert r["00081190"]["Value"] == [f"{http_server}/dicomweb/studies/{archive.study['S1']}"]
    [r] = httpx.get(f"{http_server}/dicomweb/studies", params={"AccessionNumber": "ACC1"},
                    headers={"Host": "pacs.example.org"}).json()
    assert r["00081190"]["Value"] == [f"http://pacs.example.org/dicomweb/studies/{archive.study['S1']}"]


def test_nothing_found_is_204_with_an_empty_body(http_server: str, client: DICOMwebClient) -> None:
    r = httpx.get(f"{http_server}/dicomweb/studies", params={"PatientID": "NOBODY"})
    assert r.status_code == 204 and r.content == b""
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    r = httpx.get(f"{http_server}/dicomweb/studies", params={"PatientID": "PID001"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"


@pytest.mark.parametrize("path, params, message", [
    ("studies", {"foo": "1"}, "'foo' is not a DICOM keyword"),
    ("studies", {"limit": "-1"}, "limit must be a non-negative integer"),
    ("studies", {"limit": "ten"}, "limit must be a non-negative integer"),
    ("studies", {"offset": "1.5"}, "offset must be a non-negative integer"),
    ("studies", {"StudyDate": "2020-01-01"}, "not a date"),
    ("studies", {"StudyDate": "20201231-20200101"}, "ends before it starts"),
    ("studies", {"Modality": "CT"}, "use ModalitiesInStudy"),
    ("studies", {"StudyInstanceUID": "1.2.*"}, "wildcards are not allowed in UIDs"),
    ("studies", {"includefield": "NoSuchKeyword"}, "includefield 'NoSuchKeyword'"),
    ("studies", {"fuzzymatching": "maybe"}, "fuzzymatching must be true or false"),
    ("studies", {"99990010": "x"}, "no DICOM attribute has that tag"),
    ("studies/not-a-uid/series", {}, "is not a UID"),
    ("series", {"SOPClassUID": CT}, "IMAGE-level attribute"),
    ("studies/1.2.3/series", {"StudyInstanceUID": "1.2.4"}, "already given in the path"),
], ids=["unknown-parameter", "negative-limit", "word-limit", "fraction-offset", "iso-date", "reversed-range",
        "lower-level", "uid-wildcard", "bad-includefield", "bad-fuzzy", "unknown-tag", "bad-path-uid",
        "image-key-on-series", "uid-twice"])
def test_bad_parameters_are_400_with_a_message(http_server: str, path: str, params: dict[str, str],
                                               message: str) -> None:
    r = httpx.get(f"{http_server}/dicomweb/{path}", params=params)
    assert r.status_code == 400, r.text
    assert message in r.json()["detail"]


def test_unsupported_attributes_and_fuzzy_matching_are_warnings(http_server: str) -> None:
    r = httpx.get(f"{http_server}/dicomweb/studies", params={"PatientID": "PID001", "PatientWeight": "70"})
    assert r.status_code == 200 and len(r.json()) == 2  # ignored for matching
    assert r.headers["warning"].startswith("299 ") and "PatientWeight" in r.headers["warning"]
    r = httpx.get(f"{http_server}/dicomweb/studies", params={"PatientName": "doe*", "fuzzymatching": "true"})
    assert r.status_code == 200 and "fuzzymatching" in r.headers["warning"]


def test_only_json_is_offered(http_server: str) -> None:
    r = httpx.get(f"{http_server}/dicomweb/studies", headers={"Accept": "multipart/related; type=\"application/dicom+xml\""})
    assert r.status_code == 406
    r = httpx.get(f"{http_server}/dicomweb/studies", headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200
    r = httpx.get(f"{http_server}/dicomweb/studies", params={"accept": "application/json"})
    assert r.status_code == 200


def test_results_are_capped_with_a_warning(service: ArchiveService, archive: qd.Archive) -> None:
    app = FastAPI()
    app.state.auth = False  # access control is tested in test_auth.py
    app.include_router(qido_router(service, max_results=4))
    with TestClient(app) as c:
        r = c.get("/dicomweb/studies")
        assert r.status_code == 200 and len(r.json()) == 4
        assert "Additional results can be requested" in r.headers["warning"]
        r = c.get("/dicomweb/studies", params={"offset": 4})
        assert len(r.json()) == 2 and "warning" not in r.headers
        r = c.get("/dicomweb/studies", params={"limit": 3})
        assert len(r.json()) == 3 and "warning" not in r.headers  # the client's own limit


def test_catalog_failure_is_503(http_server: str, service: ArchiveService, monkeypatch: pytest.MonkeyPatch) -> None:
    from ilm.errors import CatalogError

    def down(*args: object, **kwargs: object) -> None:
        raise CatalogError("catalog unavailable: OperationalError")

    monkeypatch.setattr(service, "query", down)
    r = httpx.get(f"{http_server}/dicomweb/studies")
    assert r.status_code == 503 and "catalog unavailable" in r.json()["detail"]
    monkeypatch.undo()
    assert httpx.get(f"{http_server}/dicomweb/studies").status_code == 200
