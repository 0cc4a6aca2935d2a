"""The query engine behind C-FIND and QIDO-RS, table-driven, on SQLite and PostgreSQL.

One archive (tests/support/query_data.py) is loaded per catalog and module;
each case names a level, the filters and the entities it must find.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import CATALOGS, write_config
from support import query_data as qd
from support.query_data import CT, MR, SR

from ilm.catalog.schema import studies
from ilm.config import load_settings
from ilm.errors import InvalidQuery
from ilm.service import ArchiveService

ARCH, _ = qd.build_datasets()
S, R, I = ARCH.study, ARCH.series, ARCH.instance  # noqa: E741


@pytest.fixture(scope="module", params=CATALOGS)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveService]:
    """One archive per catalog for the whole module: the queries only read."""
    home = tmp_path_factory.mktemp("find")
    admin = None
    if request.param == "sqlite":
        url = f"sqlite:///{home / 'catalog.sqlite'}"
    else:
        pg = request.getfixturevalue("postgres")
        name = "t_" + uuid.uuid4().hex[:12]
        admin = sa.create_engine(pg.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = pg.url(name)
    write_config(home / "home", url)
    svc = ArchiveService.open(load_settings(home=home / "home", env={}))
    try:
        qd.load(svc)
        yield svc
    finally:
        svc.close()
        if admin is not None:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
            admin.dispose()


UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
          "IMAGE": "SOPInstanceUID"}


def found(service: ArchiveService, level: str, filters: dict[str, str]) -> set[str]:
    rows = service.query(level, filters)
    keys = [r[UNIQUE[level]] for r in rows]
    assert len(keys) == len(set(keys)), f"duplicates in {keys}"
    if level == "PATIENT":
        ids = {p["PatientID"]: k for k, p in qd.PATIENTS.items()}
        return {ids[k] for k in keys}
    return {ARCH.key_of(k) for k in keys}


ALL_ACTIVE = {"S1", "S2", "S3", "S4", "S5", "S7"}

# (level, filters, expected keys) - a comment per case says what it shows.
CASES: list[tuple[str, str, dict[str, str], set[str]]] = [
    # universal matching
    ("study-all", "STUDY", {}, ALL_ACTIVE),  # S6 is quarantined: never found
    ("study-empty-values-are-universal", "STUDY", {"PatientName": "", "StudyDate": "", "AccessionNumber": "*"},
     ALL_ACTIVE),
    # single value
    ("patient-id", "STUDY", {"PatientID": "PID001"}, {"S1", "S2"}),
    ("patient-id-is-case-sensitive", "STUDY", {"PatientID": "pid001"}, set()),
    ("accession", "STUDY", {"AccessionNumber": "ACC1"}, {"S1"}),
    ("study-uid", "STUDY", {"StudyInstanceUID": S["S3"]}, {"S3"}),
    ("quarantined-by-uid", "STUDY", {"StudyInstanceUID": S["S6"]}, set()),
    ("quarantined-by-accession", "STUDY", {"AccessionNumber": "ACC6"}, set()),
    ("patient-sex", "STUDY", {"PatientSex": "F"}, {"S3"}),  # P5 (F) has only a quarantined study
    ("study-id", "STUDY", {"StudyID": "2"}, {"S2"}),
    # PN: case-insensitive, alphabetic group of a multi-group name
    ("pn-any-case", "STUDY", {"PatientName": "DOE^JOHN"}, {"S1", "S2"}),
    ("pn-wildcard-any-case", "STUDY", {"PatientName": "doe*"}, {"S1", "S2", "S3"}),
    ("pn-alphabetic-group", "STUDY", {"PatientName": "yamada^tarou"}, {"S7"}),
    ("pn-ideographic-wildcard", "STUDY", {"PatientName": "*山田*"}, {"S7"}),
    ("pn-non-ascii", "STUDY", {"PatientName": "Müller^Hans"}, {"S4"}),
    ("pn-quote", "STUDY", {"PatientName": "O'Brien*"}, {"S5"}),
    ("referring-physician", "STUDY", {"ReferringPhysicianName": "SMITH^ANNA"}, {"S1", "S2"}),
    # wildcards; SQL's % and _ match literally
    ("wildcard-question", "STUDY", {"AccessionNumber": "ACC?"}, {"S1", "S7"}),
    ("underscore-is-literal", "STUDY", {"AccessionNumber": "ACC_2"}, {"S2"}),
    ("percent-is-literal", "STUDY", {"AccessionNumber": "ACC%4"}, {"S4"}),
    ("lone-percent-matches-nothing", "STUDY", {"AccessionNumber": "ACC%"}, set()),
    ("quote-literal", "STUDY", {"AccessionNumber": "ACC'5"}, {"S5"}),
    ("injection-is-a-value", "STUDY", {"PatientID": "x' OR '1'='1"}, set()),
    ("wildcard-percent-suffix", "STUDY", {"StudyDescription": "*100%"}, {"S2"}),
    ("wildcard-underscore-inside", "STUDY", {"StudyDescription": "Knie_*"}, {"S4"}),
    ("wildcard-is-case-sensitive", "STUDY", {"StudyDescription": "ct*"}, {"S3"}),
    ("wildcard-upper", "STUDY", {"StudyDescription": "CT*"}, {"S1", "S7"}),
    # dates and times
    ("date-single", "STUDY", {"StudyDate": "20200115"}, {"S1"}),
    ("date-range", "STUDY", {"StudyDate": "20200101-20201231"}, {"S1", "S2"}),
    ("date-open-start", "STUDY", {"StudyDate": "-20200115"}, {"S1", "S4"}),  # S5 has no date
    ("date-open-end", "STUDY", {"StudyDate": "20201231-"}, {"S2", "S3", "S7"}),
    ("date-list", "STUDY", {"StudyDate": "20200115\\20210301"}, {"S1", "S3"}),
    ("birth-date-range", "STUDY", {"PatientBirthDate": "-19701231"}, {"S1", "S2", "S4"}),
    ("time-range", "STUDY", {"StudyTime": "1000-1200"}, {"S1", "S7"}),  # 1200 covers 12:00:00-12:00:59
    ("time-open-end", "STUDY", {"StudyTime": "1400-"}, {"S2", "S4"}),
    ("time-single-prefix", "STUDY", {"StudyTime": "0800"}, {"S3"}),
    ("date-and-time", "STUDY", {"StudyDate": "20200101-", "StudyTime": "1000-"}, {"S1", "S2", "S7"}),
    # multi-valued study attributes; lists
    ("modalities-in-study", "STUDY", {"ModalitiesInStudy": "CT"}, {"S1", "S3", "S7"}),
    ("modalities-list", "STUDY", {"ModalitiesInStudy": "MR\\US"}, {"S2", "S4", "S5"}),
    ("modalities-wildcard", "STUDY", {"ModalitiesInStudy": "S?"}, {"S2"}),
    ("modalities-upper-cased", "STUDY", {"ModalitiesInStudy": "mr"}, {"S2", "S4"}),
    ("sop-classes-in-study", "STUDY", {"SOPClassesInStudy": SR}, {"S2"}),
    ("uid-list-backslash", "STUDY", {"StudyInstanceUID": f"{S['S1']}\\{S['S4']}\\{S['S6']}"}, {"S1", "S4"}),
    ("uid-list-comma", "STUDY", {"StudyInstanceUID": f"{S['S2']},{S['S3']}"}, {"S2", "S3"}),
    ("combined", "STUDY", {"PatientName": "d*", "StudyDate": "20200101-", "ModalitiesInStudy": "CT"}, {"S1", "S3"}),
    # patient level
    ("patients-all", "PATIENT", {}, {"P1", "P2", "P3", "P4", "P6"}),  # P5 only has a quarantined study
    ("patients-by-name", "PATIENT", {"PatientName": "*o*"}, {"P1", "P2", "P4", "P6"}),
    ("patient-id-with-metacharacters", "PATIENT", {"PatientID": "PID_3%"}, {"P3"}),
    ("patient-id-underscore-literal", "PATIENT", {"PatientID": "PID_0*"}, set()),
    ("patient-quarantined-only", "PATIENT", {"PatientID": "PID005"}, set()),
    ("patient-birth-date", "PATIENT", {"PatientBirthDate": "19850505"}, {"P2"}),
    # series level
    ("series-of-study", "SERIES", {"StudyInstanceUID": S["S1"]}, {"S1/1", "S1/2"}),
    ("series-modality", "SERIES", {"Modality": "CT"}, {"S1/1", "S1/2", "S3/1", "S7/1"}),
    ("series-number", "SERIES", {"SeriesNumber": "99"}, {"S2/2"}),
    ("series-body-part-any-case", "SERIES", {"BodyPartExamined": "chest"}, {"S1/1", "S1/2"}),
    ("series-description-wildcard", "SERIES", {"SeriesDescription": "*AL"}, {"S1/1", "S1/2"}),
    ("series-upper-level-keys", "SERIES", {"PatientID": "PID001", "Modality": "MR"}, {"S2/1"}),
    ("series-by-uid-list", "SERIES", {"SeriesInstanceUID": f"{R['S2/2']}\\{R['S6/1']}"}, {"S2/2"}),
    # image level
    ("instances-of-series", "IMAGE", {"SeriesInstanceUID": R["S1/1"]}, {"S1/1/1", "S1/1/2"}),
    ("instance-number", "IMAGE", {"InstanceNumber": "7"}, {"S3/1/1"}),
    ("sop-class", "IMAGE", {"SOPClassUID": MR}, {"S2/1/1", "S4/1/1"}),
    ("quarantined-instance", "IMAGE", {"SOPInstanceUID": I["S6/1/1"]}, set()),
    ("image-with-study-keys", "IMAGE", {"StudyDate": "20200115", "SOPClassUID": CT},
     {"S1/1/1", "S1/1/2", "S1/2/1"}),
]


@pytest.mark.parametrize("level, filters, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_matching(loaded: ArchiveService, level: str, filters: dict[str, str], expected: set[str]) -> None:
    assert found(loaded, level, filters) == expected


BAD: list[tuple[str, str, dict[str, str], str]] = [
    ("unknown-level", "WORKLIST", {}, "query level"),
    ("unknown-attribute", "STUDY", {"Foo": "1"}, "'Foo' is not an attribute"),
    ("lower-level-attribute", "STUDY", {"Modality": "CT"}, "use ModalitiesInStudy"),
    ("series-key-at-patient-level", "PATIENT", {"StudyDate": "20200101"}, "STUDY-level attribute"),
    ("iso-date", "STUDY", {"StudyDate": "2020-01-01"}, "not a date"),
    ("impossible-date", "STUDY", {"StudyDate": "20201301"}, "not a valid date"),
    ("date-wildcard", "STUDY", {"StudyDate": "2020*"}, "wildcards are not allowed"),
    ("reversed-range", "STUDY", {"StudyDate": "20201231-20200101"}, "ends before it starts"),
    ("bare-dash", "STUDY", {"StudyDate": "-"}, "without bounds"),
    ("bad-time", "STUDY", {"StudyTime": "2561"}, "not a time"),
    ("uid-wildcard", "STUDY", {"StudyInstanceUID": "1.2.*"}, "wildcards are not allowed in UIDs"),
    ("not-a-uid", "STUDY", {"StudyInstanceUID": "abc"}, "is not a UID"),
    ("not-a-number", "SERIES", {"SeriesNumber": "one"}, "not an integer"),
    ("return-key-with-value", "STUDY", {"NumberOfStudyRelatedSeries": "2"}, "return key only"),
    ("empty-list-item", "STUDY", {"ModalitiesInStudy": "CT\\\\MR"}, "empty value"),
]


@pytest.mark.parametrize("level, filters, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_queries_are_refused(loaded: ArchiveService, level: str, filters: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidQuery, match=message.replace("*", r"\*")):
        loaded.query(level, filters)


def test_values_returned(loaded: ArchiveService) -> None:
    [row] = loaded.query("STUDY", {"StudyInstanceUID": S["S2"]})
    assert row["PatientName"] == "Doe^John"
    assert row["PatientID"] == "PID001"
    assert row["PatientBirthDate"] == "19600101"
    assert row["StudyDate"] == "20201231" and row["StudyTime"] == "235959"
    assert row["ModalitiesInStudy"] == ["MR", "SR"]
    assert row["SOPClassesInStudy"] == sorted([MR, SR])
    assert row["NumberOfStudyRelatedSeries"] == 2 and row["NumberOfStudyRelatedInstances"] == 2
    assert row["InstanceAvailability"] == "ONLINE"
    assert row["StudyDescription"] == "MR BRAIN 100%"
    [s5] = loaded.query("STUDY", {"AccessionNumber": "ACC'5"})
    assert s5["StudyDate"] == "" and s5["StudyTime"] == ""
    [p1] = loaded.query("PATIENT", {"PatientID": "PID001"})
    assert (p1["NumberOfPatientRelatedStudies"], p1["NumberOfPatientRelatedSeries"],
            p1["NumberOfPatientRelatedInstances"]) == (2, 4, 5)
    assert "StudyInstanceUID" not in p1  # nothing of a lower level
    [ser] = loaded.query("SERIES", {"SeriesInstanceUID": R["S1/1"]})
    assert ser["Modality"] == "CT" and ser["SeriesNumber"] == 1 and ser["NumberOfSeriesRelatedInstances"] == 2
    assert ser["StudyInstanceUID"] == S["S1"] and ser["PatientName"] == "Doe^John"  # upper levels too
    [img] = loaded.query("IMAGE", {"SOPInstanceUID": I["S1/1/2"]})
    assert img["InstanceNumber"] == 2 and img["SOPClassUID"] == CT
    assert img["AvailableTransferSyntaxUID"] == "1.2.840.10008.1.2.1"


def test_fields_and_unique_keys(loaded: ArchiveService) -> None:
    rows = loaded.query("SERIES", {"StudyInstanceUID": S["S1"]}, fields=["Modality", "NoSuchThing", "SOPInstanceUID"])
    assert [set(r) for r in rows] == [{"Modality", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"}] * 2


def test_order_limit_offset(loaded: ArchiveService) -> None:
    every = [ARCH.key_of(r["StudyInstanceUID"]) for r in loaded.query("STUDY", {})]
    assert every == ["S7", "S3", "S2", "S1", "S4", "S5"]  # newest first, no date last
    page = [ARCH.key_of(r["StudyInstanceUID"]) for r in loaded.query("STUDY", {}, limit=2, offset=1)]
    assert page == ["S3", "S2"]
    assert loaded.query("STUDY", {}, limit=0) == []
    assert loaded.query("STUDY", {}, offset=100) == []
    series = [ARCH.key_of(r["SeriesInstanceUID"]) for r in loaded.query("SERIES", {"PatientID": "PID001"})]
    assert series == ["S2/1", "S2/2", "S1/1", "S1/2"]
    with pytest.raises(InvalidQuery, match="limit"):
        loaded.query("STUDY", {}, limit=-1)
    with pytest.raises(InvalidQuery, match="offset"):
        loaded.query("STUDY", {}, offset=-5)


def test_values_are_bound_never_in_the_sql(loaded: ArchiveService) -> None:
    statements: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(loaded.catalog.engine, "before_cursor_execute", capture)
    try:
        loaded.query("STUDY", {"PatientID": "x'; DROP TABLE studies; --", "AccessionNumber": "ZZ%Q*",
                               "PatientName": "Zq*"}, limit=7, offset=3)
    finally:
        sa.event.remove(loaded.catalog.engine, "before_cursor_execute", capture)
    assert statements
    for sql in statements:
        for needle in ("DROP TABLE", "ZZ", "zq", "Zq"):
            assert needle not in sql
    with loaded.catalog.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(studies)).scalar_one() == len(qd.STUDIES)


def test_queries_are_not_access(loaded: ArchiveService) -> None:
    before = qd.access_snapshot(loaded)
    for level in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        assert loaded.query(level, {})
    loaded.query("STUDY", {"StudyInstanceUID": S["S1"]})
    assert qd.access_snapshot(loaded) == before
    assert before[1] == 0 and all(at is None for _, at in before[0])


def test_archive_tier_is_nearline(tmp_path: Path, catalog_url: str) -> None:
    """InstanceAvailability says NEARLINE when every copy is on an archive tier."""
    write_config(tmp_path / "home", catalog_url, extra="""
[tiers.vault]
kind = "filesystem"
path = "tiers/vault"
archive = true
""")
    svc = ArchiveService.open(load_settings(home=tmp_path / "home", env={}))
    try:
        qd.load(svc)
        with svc.catalog.write() as conn:
            conn.execute(sa.update(studies).where(studies.c.study_uid == S["S3"]).values(tiers="vault"))
        rows = {ARCH.key_of(r["StudyInstanceUID"]): r["InstanceAvailability"]
                for r in svc.query("STUDY", {}, fields=["InstanceAvailability"])}
        assert rows["S3"] == "NEARLINE" and rows["S1"] == "ONLINE"
    finally:
        svc.close()
