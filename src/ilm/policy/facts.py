"""What evaluation knows about a study and its patient: plain frozen values.

The catalog adapter fills these from the catalog; evaluation never reads
anything else. Multi-valued catalog columns (``modalities``, ``sop_classes``,
``body_parts``, ``station_names``) are backslash-joined text: pass them
through :func:`split_multi`. Raw DICOM strings are kept beside parsed dates
so that an unparsable value can be named when a study is kept because of it.

:func:`patient_facts_from_studies` derives every :class:`PatientFacts` from
the full list of a patient's studies; an adapter may compute the same fields
with one SQL aggregate instead, as long as the meaning is the same.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime

__all__ = [
    "HoldScope",
    "Hold",
    "StudyFacts",
    "PatientFacts",
    "split_multi",
    "is_mammography",
    "patient_facts_from_studies",
    "MAMMOGRAPHY_SOP_CLASSES",
    "SECONDARY_CAPTURE_SOP_CLASS",
]

# Digital Mammography X-Ray (For Presentation, For Processing), Breast
# Tomosynthesis, Breast Projection X-Ray (For Presentation, For Processing).
MAMMOGRAPHY_SOP_CLASSES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1.2",
        "1.2.840.10008.5.1.4.1.1.1.2.1",
        "1.2.840.10008.5.1.4.1.1.13.1.3",
        "1.2.840.10008.5.1.4.1.1.13.1.4",
        "1.2.840.10008.5.1.4.1.1.13.1.5",
    }
)
# Some vendors store tomosynthesis as Secondary Capture with BodyPartExamined BREAST.
SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"


class HoldScope(str, enum.Enum):
    STUDY = "study"
    PATIENT = "patient"


@dataclass(frozen=True, slots=True)
class Hold:
    """A legal hold: nothing it covers may be expired while it exists."""

    scope: HoldScope
    reason: str
    placed_by: str = ""
    placed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StudyFacts:
    """The catalog's facts about one study, as evaluation sees them.

    ``patient_key`` identifies the patient across studies (the catalog's
    patient row id, or issuer and PatientID joined): it is the key of the
    :class:`PatientFacts` passed beside the study.
    ``*_raw`` fields hold the DICOM text as received; the parsed value is
    ``None`` when the text was empty or unparsable. ``tiers`` are the tiers
    holding a verified copy of the study's instances. ``holds`` are holds on
    this study; holds on the patient belong to :class:`PatientFacts`.
    ``locked_until`` is the latest retain-until of the study's copies on WORM
    tiers (None: no locked copy): nothing may delete it before then.
    """

    study_uid: str
    patient_key: str = ""
    patient_id: str = ""
    issuer: str = ""
    study_date: date | None = None
    study_date_raw: str = ""
    birth_date: date | None = None
    birth_date_raw: str = ""
    patient_age_raw: str = ""
    sex: str = ""
    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    institution: str = ""
    stations: tuple[str, ...] = ()
    manufacturers: tuple[str, ...] = ()
    description: str = ""
    accession: str = ""
    identity_removed: bool = False
    size_bytes: int = 0
    instance_count: int = 0
    tiers: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    received_at: datetime | None = None
    last_accessed_at: datetime | None = None
    holds: tuple[Hold, ...] = ()
    locked_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class PatientFacts:
    """Facts about a patient that span studies.

    ``newest_study_date`` is the last encounter: the newest usable StudyDate
    among all the patient's studies the archive knows (quarantined ones
    included). ``undated_study_count`` counts the patient's studies whose
    StudyDate is missing or unparsable: any of them could be the last
    encounter, so "last encounter + N" is unknown while it is not zero.
    ``mammogram_dates`` are the StudyDates of the patient's mammography
    studies (see :func:`is_mammography`). ``holds`` are holds on the patient.
    """

    patient_key: str
    newest_study_date: date | None = None
    undated_study_count: int = 0
    mammogram_dates: tuple[date, ...] = ()
    holds: tuple[Hold, ...] = ()


def split_multi(text: str | None) -> tuple[str, ...]:
    """Split a backslash-joined catalog value into its non-empty, trimmed parts."""
    if not text:
        return ()
    if "\\" not in text:  # one value, the common case (a plan splits a million of them)
        one = text.strip()
        return (one,) if one else ()
    return tuple(s for s in (p.strip() for p in text.split("\\")) if s)


def is_mammography(study: StudyFacts) -> bool:
    """True if the study holds mammography: MG, a mammography/breast SOP class,
    or Secondary Capture of the breast."""
    if any(m.strip().upper() == "MG" for m in study.modalities):
        return True
    classes = {c.strip() for c in study.sop_classes}
    if classes & MAMMOGRAPHY_SOP_CLASSES:
        return True
    breast = any(b.strip().upper() == "BREAST" for b in study.body_parts)
    return breast and SECONDARY_CAPTURE_SOP_CLASS in classes


def patient_facts_from_studies(
    studies: Iterable[StudyFacts],
    patient_holds: Mapping[str, tuple[Hold, ...]] | None = None,
) -> dict[str, PatientFacts]:
    """Derive each patient's facts from all of the patient's studies.

    Pass every study of every patient concerned, not only those being
    evaluated: a later study or mammogram changes the retention of earlier ones.
    """
    newest: dict[str, date | None] = {}
    undated: dict[str, int] = defaultdict(int)
    mammo: dict[str, list[date]] = defaultdict(list)
    for s in studies:
        key = s.patient_key
        current = newest.get(key)
        if s.study_date is None:
            undated[key] += 1
            newest.setdefault(key, None)
        elif current is None or s.study_date > current:
            newest[key] = s.study_date
        if s.study_date is not None and is_mammography(s):
            mammo[key].append(s.study_date)
    holds = patient_holds or {}
    return {
        key: PatientFacts(
            patient_key=key,
            newest_study_date=newest[key],
            undated_study_count=undated.get(key, 0),
            mammogram_dates=tuple(sorted(set(mammo.get(key, ())))),
            holds=tuple(holds.get(key, ())),
        )
        for key in newest
    }
