"""Writing to the catalog: one instance, with its patient, study, series and copy."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.engine import Connection, CursorResult

from ilm.catalog.schema import conflicts, instances, locations, patients, series, studies
from ilm.models import CopyState, InstanceFacts

__all__ = ["record_instance", "record_conflict", "insert_ignore", "merge_multi"]


def insert_ignore(conn: Connection, table: Table, values: dict[str, Any], keys: list[str]) -> CursorResult[Any]:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL alike."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return conn.execute(insert(table).values(**values).on_conflict_do_nothing(index_elements=keys))


def merge_multi(current: str, value: str) -> str:
    """Add ``value`` to a backslash-joined set kept sorted; '' adds nothing."""
    if not value:
        return current
    items = set(filter(None, current.split("\\")))
    if value in items:
        return current
    items.add(value)
    return "\\".join(sorted(items))


def _patient_pk(conn: Connection, f: InstanceFacts, cache: dict[tuple[str, str], int] | None) -> int:
    ident = (f.patient_id, f.issuer_of_patient_id)
    if cache is not None and ident in cache:
        return cache[ident]
    key = (patients.c.patient_id == f.patient_id) & (patients.c.issuer == f.issuer_of_patient_id)
    pk = conn.execute(select(patients.c.id).where(key)).scalar()
    if pk is not None and cache is not None:
        cache[ident] = int(pk)  # a row another transaction committed: safe to share
    if pk is None:
        insert_ignore(
            conn,
            patients,
            dict(
                patient_id=f.patient_id,
                issuer=f.issuer_of_patient_id,
                name=f.patient_name,
                birth_date=f.patient_birth_date,
                birth_date_raw=f.patient_birth_date_raw,
                sex=f.patient_sex,
            ),
            ["patient_id", "issuer"],
        )
        # Not cached: this transaction may still roll back, and another thread
        # must not point a study at a patient row that never committed.
        pk = conn.execute(select(patients.c.id).where(key)).scalar_one()
    return int(pk)


# Statements of the ingest hot path, built once: SQLAlchemy then only binds
# parameters and finds the compiled form in its cache.
_STUDY_ROW = (
    select(studies.c.id, studies.c.modalities, studies.c.sop_classes, studies.c.body_parts,
           studies.c.station_names, studies.c.manufacturers, studies.c.patient_age, studies.c.tiers)
    .where(studies.c.study_uid == bindparam("uid"))
    .with_for_update()
)
_SERIES_PK = select(series.c.id).where(series.c.series_uid == bindparam("uid"))
_BUMP_SERIES = (
    update(series)
    .where(series.c.id == bindparam("pk"))
    .values(instance_count=series.c.instance_count + 1, size_bytes=series.c.size_bytes + bindparam("size"))
)


def record_instance(
    conn: Connection,
    f: InstanceFacts,
    *,
    size: int,
    sha256: str,
    tier: str,
    key: str,
    now: datetime,
    patient_cache: dict[tuple[str, str], int] | None = None,
    lock: tuple[str, datetime] | None = None,
) -> bool:
    """Catalog one stored instance and its verified copy on ``tier``.

    Returns False, changing nothing, when the SOP Instance UID is already
    catalogued (a concurrent store won the race). Runs inside the caller's
    transaction. ``patient_cache`` may carry patient ids between calls:
    patient rows are never deleted. ``lock``: (mode, retain-until) of a copy on a WORM tier.
    """
    study = conn.execute(_STUDY_ROW, {"uid": f.study_instance_uid}).first()
    if study is None:
        insert_ignore(
            conn,
            studies,
            dict(
                study_uid=f.study_instance_uid,
                patient_pk=_patient_pk(conn, f, patient_cache),
                study_date=f.study_date,
                study_date_raw=f.study_date_raw,
                study_time=f.study_time,
                accession_number=f.accession_number,
                description=f.study_description,
                study_id=f.study_id,
                referring_physician=f.referring_physician,
                institution_name=f.institution_name,
                patient_age=f.patient_age,
                patient_identity_removed=f.patient_identity_removed,
                received_at=now,
                updated_at=now,
            ),
            ["study_uid"],
        )
        study = conn.execute(_STUDY_ROW, {"uid": f.study_instance_uid}).one()
    series_pk = conn.execute(_SERIES_PK, {"uid": f.series_instance_uid}).scalar()
    new_series = 0
    if series_pk is None:
        insert_ignore(
            conn,
            series,
            dict(
                series_uid=f.series_instance_uid,
                study_pk=study.id,
                modality=f.modality,
                description=f.series_description,
                number=f.series_number,
                body_part=f.body_part_examined,
                station_name=f.station_name,
                series_date=f.series_date,
            ),
            ["series_uid"],
        )
        series_pk = conn.execute(_SERIES_PK, {"uid": f.series_instance_uid}).scalar_one()
        new_series = 1
    instance_pk = conn.execute(
        _insert_ignore_stmt(conn, instances, ["sop_uid"]).returning(instances.c.id),
        dict(
            sop_uid=f.sop_instance_uid,
            series_pk=series_pk,
            study_pk=study.id,
            sop_class_uid=f.sop_class_uid,
            transfer_syntax_uid=f.transfer_syntax_uid,
            number=f.instance_number,
            size_bytes=size,
            sha256=sha256,
            received_at=now,
        ),
    ).scalar()
    if instance_pk is None:
        return False
    conn.execute(
        locations.insert(),
        dict(
            instance_pk=instance_pk,
            tier=tier,
            object_key=key,
            size_bytes=size,
            sha256=sha256,
            state=CopyState.VERIFIED.value,
            created_at=now,
            verified_at=now,
            lock_mode=lock[0] if lock else None,
            retain_until=lock[1] if lock else None,
        ),
    )
    conn.execute(
        update(studies)
        .where(studies.c.id == study.id)
        .values(
            instance_count=studies.c.instance_count + 1,
            size_bytes=studies.c.size_bytes + size,
            series_count=studies.c.series_count + new_series,
            modalities=merge_multi(study.modalities, f.modality),
            sop_classes=merge_multi(study.sop_classes, f.sop_class_uid),
            body_parts=merge_multi(study.body_parts, f.body_part_examined),
            station_names=merge_multi(study.station_names, f.station_name),
            manufacturers=merge_multi(study.manufacturers, f.manufacturer),
            patient_age=study.patient_age or f.patient_age,
            tiers=merge_multi(study.tiers, tier),
            updated_at=now,
        )
    )
    conn.execute(_BUMP_SERIES, {"pk": series_pk, "size": size})
    return True


def _insert_ignore_stmt(conn: Connection, table: Table, keys: list[str]) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing(index_elements=keys)


def record_conflict(
    conn: Connection, f: InstanceFacts, *, sha256: str, size: int, kept_at: str, source: str, now: datetime
) -> None:
    conn.execute(
        conflicts.insert().values(
            sop_uid=f.sop_instance_uid,
            study_uid=f.study_instance_uid,
            sha256=sha256,
            size_bytes=size,
            kept_at=kept_at,
            source=source[:1000],
            received_at=now,
        )
    )
