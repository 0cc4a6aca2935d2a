"""Small builders shared by the policy tests."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from ilm.policy import PatientFacts, Policy, StudyFacts, parse_policy, patient_facts_from_studies
from ilm.policy.facts import Hold

__all__ = ["NOW", "TIERS", "CT_IMAGE", "MG_PRESENTATION", "BREAST_TOMO", "SECONDARY_CAPTURE",
           "study", "policy", "patient_of", "at"]

NOW = date(2025, 6, 15)
TIERS = frozenset({"hot", "warm"})
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
BREAST_TOMO = "1.2.840.10008.5.1.4.1.1.13.1.3"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def at(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, 12, 0, tzinfo=timezone.utc)


def study(**kw: Any) -> StudyFacts:
    """An adult's CT chest study of 2010, on the hot tier, never read since."""
    base: dict[str, Any] = dict(
        study_uid="1.2.3.4", patient_key="P1", patient_id="P1",
        study_date=date(2010, 3, 1), study_date_raw="20100301",
        birth_date=date(1960, 5, 5), birth_date_raw="19600505", patient_age_raw="049Y", sex="F",
        modalities=("CT", "SR"), sop_classes=(CT_IMAGE,), body_parts=("CHEST",),
        institution="General Hospital", stations=("CT01",), manufacturers=("ACME",),
        description="CT CHEST W/O", accession="A100", size_bytes=200_000_000, instance_count=400,
        tiers=("hot",), labels=(), received_at=at(date(2010, 3, 1)), last_accessed_at=None,
    )
    base.update(kw)
    if "study_date" in kw and "study_date_raw" not in kw:
        base["study_date_raw"] = kw["study_date"].strftime("%Y%m%d") if kw["study_date"] else ""
    if "study_date" in kw and "received_at" not in kw and kw["study_date"]:
        base["received_at"] = at(kw["study_date"])
    if "birth_date" in kw and "birth_date_raw" not in kw:
        base["birth_date_raw"] = kw["birth_date"].strftime("%Y%m%d") if kw["birth_date"] else ""
    return StudyFacts(**base)


def patient_of(s: StudyFacts, others: tuple[StudyFacts, ...] = (), holds: tuple[Hold, ...] = ()) -> PatientFacts:
    """The patient's facts computed from this study and the patient's other studies."""
    facts = patient_facts_from_studies((s, *others), {s.patient_key: holds})
    return facts[s.patient_key]


def policy(text: str) -> Policy:
    return parse_policy(text, known_tiers=TIERS, source="test.yaml")
