"""Catalog-only synthetic archives: bulk rows equal the plan, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from ilm.catalog import Catalog
from ilm.catalog.bulk import (
    SERIES_COLUMNS,
    STUDY_COLUMNS,
    BulkBatch,
    BulkLoader,
    _sqlite_datetime,
    set_last_accessed,
)
from ilm.catalog.schema import instances, locations, patients, series, studies
from ilm.service import ArchiveService
from ilm.synth.files import write_files
from ilm.synth.plan import SynthConfig, generate, plan, totals
from ilm.synth.rows import (
    NO_OBJECT_SHA256,
    apply_access_history,
    batch_for,
    load_catalog,
)

REF = date(2025, 6, 30)


def _scalar(cat: Catalog, q: sa.sql.Select) -> int:  # type: ignore[type-arg]
    with cat.read() as c:
        return int(c.execute(q).scalar_one() or 0)


def _count(cat: Catalog, table: sa.Table) -> int:
    return _scalar(cat, sa.select(sa.func.count()).select_from(table))


def test_catalog_only_20k_studies_match_the_plan(catalog_url: str) -> None:
    cat = Catalog.open(catalog_url)
    try:
        cfg = SynthConfig(reference=REF, studies=20_000, seed=11, scale=1.0)
        seen = []
        report = load_catalog(cat, cfg, chunk=5000, progress=lambda c: seen.append(c.studies))
        t = totals(generate(cfg))
        assert report.studies == sum(seen) == t.studies == 20_000
        assert _count(cat, studies) == t.studies
        assert _count(cat, series) == report.series == t.series
        assert _count(cat, patients) == report.patients == t.patients
        assert _count(cat, instances) == 0 and _count(cat, locations) == 0
        assert _scalar(cat, sa.select(sa.func.sum(studies.c.size_bytes))) == t.size_bytes == report.size_bytes
        assert _scalar(cat, sa.select(sa.func.sum(series.c.size_bytes))) == t.size_bytes
        assert _scalar(cat, sa.select(sa.func.sum(studies.c.instance_count))) == t.instances
        assert _scalar(cat, sa.select(sa.func.sum(series.c.instance_count))) == t.instances
        with cat.read() as c:
            bad_fk = c.execute(
                sa.select(sa.func.count()).select_from(series.outerjoin(studies, studies.c.id == series.c.study_pk))
                .where(studies.c.id.is_(None))
            ).scalar_one()
            assert bad_fk == 0
            counts_ok = c.execute(
                sa.select(sa.func.count()).select_from(studies).where(
                    studies.c.series_count != sa.select(sa.func.count()).where(series.c.study_pk == studies.c.id)
                    .scalar_subquery()
                )
            ).scalar_one()
            assert counts_ok == 0
            # The access history: last_accessed_at of each study is its newest read.
            want = {s.study_uid: s.last_accessed_at for s in generate(cfg)}
            got = dict(c.execute(sa.select(studies.c.study_uid, studies.c.last_accessed_at)).all())
        assert len(got) == len(want)
        for uid in list(want)[:: 97]:
            w, g = want[uid], got[uid]
            if w is None:
                assert g is None
            else:
                assert g.replace(tzinfo=None) == w.replace(tzinfo=None)
        assert sum(1 for v in got.values() if v is None) == sum(1 for v in want.values() if v is None)

        # The summary the demo prints comes out right from bulk rows.
        with cat.read() as c:
            from ilm.catalog.queries import archive_summary

            summary = archive_summary(c)
        assert sum(r.studies for r in summary["year"]) == 20_000
        assert sum(r.size_bytes for r in summary["modality"]) == t.size_bytes

        # A second load of the same plan changes nothing.
        again = load_catalog(cat, cfg, chunk=5000, workers=0)
        assert again.studies == 0 and again.skipped_studies == 20_000 and again.patients == 0
        assert _count(cat, studies) == 20_000
    finally:
        cat.close()


def test_with_instances_writes_locations(catalog_url: str) -> None:
    cat = Catalog.open(catalog_url)
    try:
        cfg = SynthConfig(reference=REF, studies=200, seed=12)
        report = load_catalog(cat, cfg, with_instances=True, tier="hot")
        t = totals(generate(cfg))
        assert report.instances == report.locations == t.instances
        assert _count(cat, instances) == _count(cat, locations) == t.instances
        with cat.read() as c:
            from ilm.catalog.queries import archive_summary

            by_tier = archive_summary(c)["tier"]
            assert [(r.key, r.studies, r.instances, r.size_bytes) for r in by_tier] == [
                ("hot", 200, t.instances, t.size_bytes)
            ]
            assert c.execute(sa.select(sa.func.count()).select_from(locations)
                             .where(locations.c.sha256 != NO_OBJECT_SHA256)).scalar_one() == 0
        with pytest.raises(ValueError):
            load_catalog(cat, cfg, with_instances=True)
    finally:
        cat.close()


def test_parallel_and_serial_loads_give_the_same_catalog(tmp_path: Path) -> None:
    cfg = SynthConfig(reference=REF, studies=25_000, seed=13, scale=1.0)
    rows = []
    for workers in (0, 2):
        cat = Catalog.open(f"sqlite:///{tmp_path / f'w{workers}.sqlite'}")
        try:
            r = load_catalog(cat, cfg, workers=workers, chunk=4000)
            assert r.studies == 25_000 and r.workers == workers
            with cat.read() as c:
                q = (sa.select(studies.c.study_uid, studies.c.size_bytes, studies.c.modalities, studies.c.last_accessed_at,
                               patients.c.patient_id, patients.c.birth_date)
                     .join(patients, patients.c.id == studies.c.patient_pk).order_by(studies.c.study_uid))
                rows.append(c.execute(q).all())
        finally:
            cat.close()
    assert rows[0] == rows[1]


def test_bulk_rows_equal_what_an_import_writes(service: ArchiveService, tmp_path: Path) -> None:
    cfg = SynthConfig(reference=REF, studies=60, seed=14, missing_rate=0.1)
    specs = plan(cfg)
    write_files(specs, tmp_path / "f", seed=cfg.seed)
    assert service.import_paths([tmp_path / "f"]).rejected == 0
    batch = batch_for(specs, tier=service.settings.ingest_tier)
    # Sizes are the plan's estimate (the header length varies a little); all else is exact.
    cols = [c for c in STUDY_COLUMNS if c not in ("received_at", "updated_at", "last_accessed_at", "size_bytes")]
    with service.catalog.read() as c:
        db = {r.study_uid: r for r in c.execute(sa.select(studies))}
        pats = {(r.patient_id, r.issuer): r for r in c.execute(sa.select(patients))}
        db_series = {r.series_uid: r for r in c.execute(sa.select(series))}
    assert len(db) == len(batch.studies) and len(db_series) == len(batch.series)
    for row in batch.studies:
        values = dict(zip(STUDY_COLUMNS, row[1:]))
        have = db[values["study_uid"]]
        for col in cols:
            assert getattr(have, col) == values[col], (col, values["study_uid"])
        assert abs(have.size_bytes - values["size_bytes"]) < 0.03 * values["size_bytes"]
        p = pats[row[0]]
        assert (p.name, p.birth_date, p.birth_date_raw, p.sex) == batch.patients[row[0]]
    for row in batch.series:
        values = dict(zip(SERIES_COLUMNS, row[1:]))
        have = db_series[values["series_uid"]]
        assert db[row[0]].id == have.study_pk
        for col in SERIES_COLUMNS:
            if col != "size_bytes":
                assert getattr(have, col) == values[col], (col, values["series_uid"])


def test_access_history_replayed_onto_imported_studies(service: ArchiveService, tmp_path: Path) -> None:
    cfg = SynthConfig(reference=REF, studies=20, seed=15)
    specs = plan(cfg)
    write_files(specs, tmp_path / "f")
    service.import_paths([tmp_path / "f"])
    n = apply_access_history(service.catalog, specs)
    assert n == sum(1 for s in specs if s.accesses)
    assert apply_access_history(service.catalog, specs) == 0  # nothing newer
    for s in specs:
        got = service.study(s.study_uid).summary.last_accessed_at  # type: ignore[union-attr]
        want = s.last_accessed_at
        assert (got is None) == (want is None)
        if want is not None:
            assert got.replace(tzinfo=None) == want.replace(tzinfo=None)  # type: ignore[union-attr]
    # A newer access recorded since is kept.
    uid = specs[0].study_uid
    later = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert set_last_accessed(service.catalog, {uid: later}) == 1
    assert set_last_accessed(service.catalog, {uid: later - timedelta(days=1)}) == 0


def test_sqlite_datetime_text_matches_sqlalchemy() -> None:
    dialect = sqlite.dialect()
    dt_proc = studies.c.received_at.type.dialect_impl(dialect).bind_processor(dialect)
    d_proc = studies.c.study_date.type.dialect_impl(dialect).bind_processor(dialect)
    for v in (datetime(2025, 1, 2, 3, 4, 5), datetime(2025, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc),
              datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=2)))):
        assert _sqlite_datetime(v) == dt_proc(v)  # type: ignore[misc]
    assert date(2025, 3, 4).isoformat() == d_proc(date(2025, 3, 4))  # type: ignore[misc]


def test_existing_patients_are_reused(catalog_url: str) -> None:
    cat = Catalog.open(catalog_url)
    try:
        key = ("P1", "ISSUER")
        row = ("x", date(2025, 1, 1), "", "", "", "", "", "", "", "", "", "", "", "", "", False, 0, 0, 0, "active",
               datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2025, 1, 1, tzinfo=timezone.utc), None, "hot")
        assert len(row) == len(STUDY_COLUMNS)
        b1 = BulkBatch(patients={key: ("A^B", None, "", "F")}, studies=[(key, "1.2.3", *row[1:])])
        assert BulkLoader(cat).load(b1).patients == 1
        b2 = BulkBatch(patients={key: ("A^B", None, "", "F")}, studies=[(key, "1.2.4", *row[1:])])
        c = BulkLoader(cat).load(b2)  # a new loader: finds the patient in the catalog
        assert c.patients == 0 and c.studies == 1
        assert _count(cat, patients) == 1
    finally:
        cat.close()
