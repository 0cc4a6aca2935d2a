"""Reading the catalog: study lists, one study's detail, archive summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.engine import Connection

from ilm.catalog.schema import instances, locations, patients, series, studies
from ilm.models import LocationSummary, SeriesSummary, StudyDetail, StudyFilter, StudySummary, SummaryRow

__all__ = [
    "list_studies", "study_detail", "find_instance", "archive_summary", "location_exists", "instance_locations",
    "ping", "tier_usage",
]


def ping(conn: Connection) -> None:
    """A read of the catalog (readiness checks): raises when the database cannot answer it.
    A table, not ``SELECT 1``: SQLite answers that even from a file that is no database."""
    conn.execute(select(studies.c.id).limit(1)).first()


def _split(text: str) -> tuple[str, ...]:
    return tuple(v for v in (text or "").split("\\") if v)


def find_instance(conn: Connection, sop_uid: str) -> tuple[str, int] | None:
    """(sha256, size) of a catalogued instance, or None."""
    row = conn.execute(
        select(instances.c.sha256, instances.c.size_bytes).where(instances.c.sop_uid == sop_uid)
    ).first()
    return None if row is None else (row.sha256, int(row.size_bytes))


def location_exists(conn: Connection, tier: str, key: str) -> bool:
    return conn.execute(
        select(locations.c.id).where(locations.c.tier == tier, locations.c.object_key == key).limit(1)
    ).first() is not None


def instance_locations(conn: Connection, sop_uid: str) -> list[tuple[str, str]]:
    """(tier, key) of the verified copies of an instance."""
    return [(r[0], r[1]) for r in conn.execute(
        select(locations.c.tier, locations.c.object_key).join(instances, instances.c.id == locations.c.instance_pk)
        .where(instances.c.sop_uid == sop_uid, locations.c.state == "verified")
    )]


def _summary(row: Any, tiers: tuple[str, ...]) -> StudySummary:
    return StudySummary(
        study_instance_uid=row.study_uid,
        patient_id=row.patient_id,
        patient_name=row.name,
        study_date=row.study_date,
        modalities=_split(row.modalities),
        description=row.description,
        accession_number=row.accession_number,
        series_count=row.series_count,
        instance_count=row.instance_count,
        size_bytes=int(row.size_bytes),
        tiers=tiers,
        received_at=row.received_at,
        last_accessed_at=row.last_accessed_at,
    )


def _study_select() -> Any:
    return select(studies, patients.c.patient_id, patients.c.name, patients.c.birth_date, patients.c.sex).join(
        patients, patients.c.id == studies.c.patient_pk
    )


def list_studies(conn: Connection, flt: StudyFilter) -> list[StudySummary]:
    q = _study_select().where(studies.c.state == "active")
    if flt.patient_id:
        q = q.where(patients.c.patient_id == flt.patient_id)
    if flt.date_from:
        q = q.where(studies.c.study_date >= flt.date_from)
    if flt.date_to:
        q = q.where(studies.c.study_date <= flt.date_to)
    if flt.modality:
        m = flt.modality.upper()
        q = q.where(("\\" + studies.c.modalities + "\\").like(f"%\\{m}\\%", escape="!"))
    q = q.order_by(studies.c.study_date.desc(), studies.c.id.desc()).limit(flt.limit).offset(flt.offset)
    rows = conn.execute(q).all()
    return [_summary(r, _split(r.tiers)) for r in rows]


def study_detail(conn: Connection, study_uid: str) -> StudyDetail | None:
    row = conn.execute(_study_select().where(studies.c.study_uid == study_uid)).first()
    if row is None:
        return None
    ser = conn.execute(
        select(series).where(series.c.study_pk == row.id).order_by(series.c.number, series.c.series_uid)
    ).all()
    locs = conn.execute(
        select(
            locations.c.tier,
            locations.c.state,
            func.count().label("n"),
            func.coalesce(func.sum(locations.c.size_bytes), 0).label("bytes"),
            func.max(locations.c.verified_at).label("verified"),
            func.max(locations.c.retain_until).label("locked"),
        )
        .join(instances, instances.c.id == locations.c.instance_pk)
        .where(instances.c.study_pk == row.id)
        .group_by(locations.c.tier, locations.c.state)
        .order_by(locations.c.tier)
    ).all()
    location_list = tuple(
        LocationSummary(tier=r.tier, state=r.state, instance_count=r.n, size_bytes=int(r.bytes),
                        verified_at_newest=r.verified, locked_until=r.locked)
        for r in locs
    )
    verified_instances = conn.execute(
        select(func.count(distinct(locations.c.instance_pk)))
        .join(instances, instances.c.id == locations.c.instance_pk)
        .where(instances.c.study_pk == row.id, locations.c.state == "verified")
    ).scalar_one()
    if row.instance_count == 0:
        checksum_state = "empty"
    elif verified_instances == row.instance_count:
        checksum_state = "verified"
    else:
        checksum_state = f"{row.instance_count - verified_instances} of {row.instance_count} instances without a verified copy"
    tiers = tuple(sorted({loc.tier for loc in location_list}))
    return StudyDetail(
        summary=_summary(row, tiers),
        patient_birth_date=row.birth_date,
        patient_sex=row.sex,
        patient_age=row.patient_age,
        institution_name=row.institution_name,
        station_names=_split(row.station_names),
        body_parts=_split(row.body_parts),
        sop_classes=_split(row.sop_classes),
        series=tuple(
            SeriesSummary(
                series_instance_uid=s.series_uid, modality=s.modality, description=s.description,
                number=s.number, instance_count=s.instance_count, size_bytes=int(s.size_bytes),
            )
            for s in ser
        ),
        locations=location_list,
        checksum_state=checksum_state,
        extra={"state": row.state, "study_date_raw": row.study_date_raw},
    )


def _by_tier(conn: Connection) -> Sequence[Any]:
    return conn.execute(
        select(
            locations.c.tier,
            func.count(distinct(instances.c.study_pk)),
            func.count(distinct(instances.c.series_pk)),
            func.count(),
            func.coalesce(func.sum(locations.c.size_bytes), 0),
        )
        .join(instances, instances.c.id == locations.c.instance_pk)
        .group_by(locations.c.tier)
        .order_by(locations.c.tier)
    ).all()


def tier_usage(conn: Connection) -> dict[str, tuple[int, int]]:
    """Per tier: (studies with a copy on it, bytes of those copies); the tier part of archive_summary."""
    return {str(t): (int(st), int(b)) for t, st, _se, _n, b in _by_tier(conn)}


def archive_summary(conn: Connection) -> dict[str, list[SummaryRow]]:
    """Studies, series, instances and bytes by modality, by study year and by tier."""
    by_modality = conn.execute(
        select(
            series.c.modality,
            func.count(distinct(series.c.study_pk)),
            func.count(),
            func.coalesce(func.sum(series.c.instance_count), 0),
            func.coalesce(func.sum(series.c.size_bytes), 0),
        )
        .join(studies, studies.c.id == series.c.study_pk)
        .where(studies.c.state == "active")
        .group_by(series.c.modality)
        .order_by(func.sum(series.c.size_bytes).desc())
    ).all()
    year = func.extract("year", studies.c.study_date) if conn.dialect.name == "postgresql" else func.strftime("%Y", studies.c.study_date)
    by_year = conn.execute(
        select(
            year.label("y"),
            func.count(),
            func.coalesce(func.sum(studies.c.series_count), 0),
            func.coalesce(func.sum(studies.c.instance_count), 0),
            func.coalesce(func.sum(studies.c.size_bytes), 0),
        )
        .where(studies.c.state == "active")
        .group_by("y")
        .order_by("y")
    ).all()
    by_tier = _by_tier(conn)

    def rows(result: Any, unknown: str) -> list[SummaryRow]:
        out = []
        for k, st, se, n, b in result:
            key = unknown if k in (None, "") else str(int(k)) if isinstance(k, float) else str(k)
            out.append(SummaryRow(key, int(st), int(se), int(n), int(b)))
        return out

    return {
        "modality": rows(by_modality, "(none)"),
        "year": rows(by_year, "(no date)"),
        "tier": rows(by_tier, "(none)"),
    }
