"""The catalog adapter of policy evaluation: catalog rows -> StudyFacts, PatientFacts.

Reads every study once, in pages, with the holds, the tiers that hold
verified copies and the latest retain-until of its WORM copies. Patient
facts are derived from all of a patient's studies,
quarantined ones included (a later study still counts as an encounter).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ilm.catalog.locks import study_locks
from ilm.catalog.retention import list_holds, patient_key
from ilm.catalog.schema import patients, studies
from ilm.policy.facts import Hold, HoldScope, PatientFacts, StudyFacts, patient_facts_from_studies, split_multi

__all__ = ["PolicyInputs", "load_policy_inputs"]


@dataclass(frozen=True, slots=True)
class PolicyInputs:
    studies: list[StudyFacts]            # the active studies a plan decides on
    patients: dict[str, PatientFacts]    # by patient key


def _iter_rows(conn: Connection, study_uids: list[str] | None) -> Iterator[tuple[StudyFacts, str]]:
    """Rows of all studies, or of every study of the patients of ``study_uids``."""
    q = select(
        studies.c.study_uid, studies.c.state, studies.c.study_date, studies.c.study_date_raw, studies.c.patient_age,
        studies.c.modalities, studies.c.sop_classes, studies.c.body_parts, studies.c.institution_name,
        studies.c.station_names, studies.c.manufacturers, studies.c.description, studies.c.accession_number,
        studies.c.patient_identity_removed, studies.c.size_bytes, studies.c.instance_count, studies.c.labels,
        studies.c.received_at, studies.c.last_accessed_at, studies.c.tiers,
        patients.c.patient_id, patients.c.issuer, patients.c.birth_date, patients.c.birth_date_raw, patients.c.sex,
    ).join(patients, patients.c.id == studies.c.patient_pk).where(studies.c.state != "purging")
    if study_uids is not None:
        pats = select(studies.c.patient_pk).where(studies.c.study_uid.in_(study_uids))
        q = q.where(studies.c.patient_pk.in_(pats))
    for r in conn.execution_options(yield_per=20_000).execute(q):
        yield (
            StudyFacts(
                study_uid=r.study_uid, patient_key=patient_key(r.patient_id, r.issuer), patient_id=r.patient_id,
                issuer=r.issuer, study_date=r.study_date, study_date_raw=r.study_date_raw, birth_date=r.birth_date,
                birth_date_raw=r.birth_date_raw, patient_age_raw=r.patient_age, sex=r.sex,
                modalities=split_multi(r.modalities), sop_classes=split_multi(r.sop_classes),
                body_parts=split_multi(r.body_parts), institution=r.institution_name,
                stations=split_multi(r.station_names), manufacturers=split_multi(r.manufacturers),
                description=r.description, accession=r.accession_number,
                identity_removed=bool(r.patient_identity_removed), size_bytes=int(r.size_bytes),
                instance_count=int(r.instance_count), labels=split_multi(r.labels), tiers=split_multi(r.tiers),
                received_at=r.received_at,
                last_accessed_at=r.last_accessed_at,
            ),
            r.state,
        )


def load_policy_inputs(conn: Connection, study_uids: list[str] | None = None) -> PolicyInputs:
    """Facts for the active studies (all, or those named) and their patients."""
    study_holds: dict[str, list[Hold]] = defaultdict(list)
    patient_holds: dict[str, list[Hold]] = defaultdict(list)
    for h in list_holds(conn):
        hold = Hold(scope=HoldScope(h.scope), reason=h.reason, placed_by=h.created_by, placed_at=h.created_at)
        (study_holds if h.scope == "study" else patient_holds)[h.target].append(hold)
    only = set(study_uids) if study_uids is not None else None
    locks = study_locks(conn, study_uids)  # WORM copies: their latest retain-until
    everything: list[StudyFacts] = []
    active: list[StudyFacts] = []
    for facts, state in _iter_rows(conn, study_uids):
        everything.append(facts)
        if state == "active" and (only is None or facts.study_uid in only):
            if facts.study_uid in study_holds:
                facts = replace(facts, holds=tuple(study_holds[facts.study_uid]))
            if facts.study_uid in locks:
                facts = replace(facts, locked_until=locks[facts.study_uid])
            active.append(facts)
    wanted = {s.patient_key for s in active}
    pats = patient_facts_from_studies(
        (s for s in everything if s.patient_key in wanted),
        {k: tuple(v) for k, v in patient_holds.items()},
    )
    return PolicyInputs(studies=active, patients=pats)
