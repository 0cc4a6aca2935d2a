"""Writing to the catalog: one instance, with its patient, study, series and copy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, CursorResult

from ilm.catalog.schema import conflicts, instances, locations, patients, series, studies
from ilm.models import CopyState, InstanceFacts

__all__ = ["record_instance", "record_instances", "NewCopy", "record_conflict", "insert_ignore", "merge_multi"]


def insert_ignore(conn: Connection, table: Table, values: dict[str, Any], keys: list[str]) -> CursorResult[Any]:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL alike."""
    return conn.execute(_insert_ignore_stmt(conn, table, keys).values(**values))


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
    .values(instance_count=series.c.instance_count + bindparam("n"), size_bytes=series.c.size_bytes + bindparam("size"))
)

_BUMP_STUDY = (
    update(studies)
    .where(studies.c.id == bindparam("pk"))
    .values(
        instance_count=studies.c.instance_count + bindparam("n"),
        size_bytes=studies.c.size_bytes + bindparam("size"),
        series_count=studies.c.series_count + bindparam("new_series"),
        **{name: bindparam(f"v_{name}") for name in ("modalities", "sop_classes", "body_parts", "station_names",
                                                      "manufacturers", "patient_age", "tiers", "updated_at")},
    )
)


@dataclass(frozen=True)
class NewCopy:
    """One stored instance to catalog: its facts and its verified copy on ``tier``
    (``lock``: mode and retain-until of a copy on a WORM tier)."""

    facts: InstanceFacts
    size: int
    sha256: str
    tier: str
    key: str
    lock: tuple[str, datetime] | None = None


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
    """Catalog one stored instance and its verified copy on ``tier`` (see record_instances)."""
    return record_instances(conn, [NewCopy(f, size, sha256, tier, key, lock)], now=now,
                            patient_cache=patient_cache)[0]


def _study_row(conn: Connection, f: InstanceFacts, now: datetime,
               patient_cache: dict[tuple[str, str], int] | None) -> Any:
    """The study's row (locked for update on PostgreSQL), created from ``f`` when new."""
    study = conn.execute(_STUDY_ROW, {"uid": f.study_instance_uid}).first()
    if study is not None:
        return study
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
    return conn.execute(_STUDY_ROW, {"uid": f.study_instance_uid}).one()


def _series_pk(conn: Connection, f: InstanceFacts, study_pk: int) -> tuple[int, bool]:
    """The series' primary key, and whether this call created the series."""
    pk = conn.execute(_SERIES_PK, {"uid": f.series_instance_uid}).scalar()
    if pk is not None:
        return int(pk), False
    insert_ignore(
        conn,
        series,
        dict(
            series_uid=f.series_instance_uid,
            study_pk=study_pk,
            modality=f.modality,
            description=f.series_description,
            number=f.series_number,
            body_part=f.body_part_examined,
            station_name=f.station_name,
            series_date=f.series_date,
        ),
        ["series_uid"],
    )
    return int(conn.execute(_SERIES_PK, {"uid": f.series_instance_uid}).scalar_one()), True


def _merged(current: str, values: Iterable[str]) -> str:
    for v in values:
        current = merge_multi(current, v)
    return current


def record_instances(
    conn: Connection,
    copies: Sequence[NewCopy],
    *,
    now: datetime,
    patient_cache: dict[tuple[str, str], int] | None = None,
) -> list[bool]:
    """Catalog stored instances, each with its verified copy, inside the caller's transaction.

    One flag per copy, in order: False, changing nothing for it, when its SOP
    Instance UID is already catalogued (a concurrent store won the race, or
    the same UID came earlier in ``copies``). The study and series totals and
    facts are updated once per study and series, whatever the number of
    instances. ``patient_cache`` may carry patient ids between calls: patient
    rows are never deleted.
    """
    done = [False] * len(copies)
    by_study: dict[str, list[int]] = {}
    for i, c in enumerate(copies):
        by_study.setdefault(c.facts.study_instance_uid, []).append(i)
    insert_instance = _insert_ignore_stmt(conn, instances, ["sop_uid"]).returning(instances.c.id)
    for idxs in by_study.values():
        study = _study_row(conn, copies[idxs[0]].facts, now, patient_cache)
        series_pks: dict[str, tuple[int, bool]] = {}
        added: list[tuple[NewCopy, int, int]] = []  # copy, instance pk, series pk
        for i in idxs:
            c, f = copies[i], copies[i].facts
            if f.series_instance_uid not in series_pks:
                series_pks[f.series_instance_uid] = _series_pk(conn, f, study.id)
            series_pk = series_pks[f.series_instance_uid][0]
            instance_pk = conn.execute(insert_instance, dict(
                sop_uid=f.sop_instance_uid,
                series_pk=series_pk,
                study_pk=study.id,
                sop_class_uid=f.sop_class_uid,
                transfer_syntax_uid=f.transfer_syntax_uid,
                number=f.instance_number,
                size_bytes=c.size,
                sha256=c.sha256,
                received_at=now,
            )).scalar()
            if instance_pk is not None:
                done[i] = True
                added.append((c, int(instance_pk), series_pk))
        if not added:
            continue
        conn.execute(locations.insert(), [dict(
            instance_pk=pk,
            tier=c.tier,
            object_key=c.key,
            size_bytes=c.size,
            sha256=c.sha256,
            state=CopyState.VERIFIED.value,
            created_at=now,
            verified_at=now,
            lock_mode=c.lock[0] if c.lock else None,
            retain_until=c.lock[1] if c.lock else None,
        ) for c, pk, _ in added])
        facts = [c.facts for c, _, _ in added]
        grown = {spk for _, _, spk in added}
        conn.execute(_BUMP_STUDY, dict(
            pk=study.id,
            n=len(added),
            size=sum(c.size for c, _, _ in added),
            new_series=sum(1 for pk, new in series_pks.values() if new and pk in grown),
            v_modalities=_merged(study.modalities, (f.modality for f in facts)),
            v_sop_classes=_merged(study.sop_classes, (f.sop_class_uid for f in facts)),
            v_body_parts=_merged(study.body_parts, (f.body_part_examined for f in facts)),
            v_station_names=_merged(study.station_names, (f.station_name for f in facts)),
            v_manufacturers=_merged(study.manufacturers, (f.manufacturer for f in facts)),
            v_patient_age=study.patient_age or next((f.patient_age for f in facts if f.patient_age), ""),
            v_tiers=_merged(study.tiers, (c.tier for c, _, _ in added)),
            v_updated_at=now,
        ))
        bumps: dict[int, list[int]] = {}
        for c, _, spk in added:
            bumps.setdefault(spk, []).append(c.size)
        conn.execute(_BUMP_SERIES, [{"pk": pk, "n": len(sizes), "size": sum(sizes)} for pk, sizes in bumps.items()])
    return done


def _insert_ignore_stmt(conn: Connection, table: Table, keys: list[str]) -> Any:
    if conn.dialect.name == "postgresql":  # imported on a PostgreSQL catalog only (a SQLite one never loads it)
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=keys)
    return sqlite_insert(table).on_conflict_do_nothing(index_elements=keys)


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
