"""Plain values passed between layers: frozen dataclasses, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime

__all__ = [
    "InstanceFacts",
    "StoredObject",
    "IngestStatus",
    "IngestResult",
    "StudySummary",
    "SeriesSummary",
    "LocationSummary",
    "StudyDetail",
    "CopyState",
    "StudyFilter",
    "SummaryRow",
]


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One line of an archive summary (by modality, study year or tier)."""

    key: str
    studies: int
    series: int
    instances: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class StudyFilter:
    """What ``ilm studies`` and study queries filter on."""

    patient_id: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    modality: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """What the catalog keeps of one instance, read from its DICOM header."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: date | None = None
    patient_birth_date_raw: str = ""
    patient_sex: str = ""
    patient_age: str = ""
    study_date: date | None = None
    study_date_raw: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_description: str = ""
    study_id: str = ""
    referring_physician: str = ""
    institution_name: str = ""
    station_name: str = ""
    manufacturer: str = ""
    modality: str = ""
    body_part_examined: str = ""
    series_description: str = ""
    series_number: int | None = None
    series_date: date | None = None
    instance_number: int | None = None
    patient_identity_removed: bool = False
    lossy_compression: bool = False


class CopyState(str, enum.Enum):
    """State of one copy of an instance on one tier."""

    WRITING = "writing"      # a move is copying; not yet verified
    VERIFIED = "verified"    # the tier holds bytes whose SHA-256 matches
    DELETING = "deleting"    # committed elsewhere, being removed here
    RETAINED = "retained"    # moved elsewhere, kept here until its WORM lock ends (then dropped)
    MISSING = "missing"      # a fixity check found it gone (ilm.fixity)
    BAD = "bad"              # a fixity check read other bytes than its SHA-256 (kept for forensics)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object as a tier holds it."""

    key: str
    size: int
    sha256: str
    # Set by a ``put`` whose store itself checked, as it took them, that the bytes it
    # holds hash to ``sha256`` (S3: the server verified x-amz-checksum-sha256 and
    # accepted the upload), so no ``stat`` is needed to know what it holds.
    verified: bool = field(default=False, compare=False)


class IngestStatus(str, enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"     # same SOP Instance UID, same bytes: nothing to do
    CONFLICT = "conflict"       # same SOP Instance UID, other bytes: kept aside
    REJECTED = "rejected"       # not storable; reason says why


@dataclass(frozen=True, slots=True)
class IngestResult:
    status: IngestStatus
    source: str
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    size: int = 0
    reason: str = ""
    kept_aside_at: str = ""
    series_instance_uid: str = ""
    # REJECTED because the archive failed (a tier or the catalog), not because
    # of the data: the same instance may succeed when sent again later.
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class StudySummary:
    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: date | None
    modalities: tuple[str, ...]
    description: str
    accession_number: str
    series_count: int
    instance_count: int
    size_bytes: int
    tiers: tuple[str, ...]
    received_at: datetime | None
    last_accessed_at: datetime | None


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    series_instance_uid: str
    modality: str
    description: str
    number: int | None
    instance_count: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class LocationSummary:
    tier: str
    state: str
    instance_count: int
    size_bytes: int
    verified_at_newest: datetime | None = None
    locked_until: datetime | None = None  # WORM tiers: the latest retain-until of these copies


@dataclass(frozen=True, slots=True)
class StudyDetail:
    summary: StudySummary
    patient_birth_date: date | None
    patient_sex: str
    patient_age: str
    institution_name: str
    station_names: tuple[str, ...]
    body_parts: tuple[str, ...]
    sop_classes: tuple[str, ...]
    series: tuple[SeriesSummary, ...]
    locations: tuple[LocationSummary, ...]
    checksum_state: str
    extra: dict[str, str] = field(default_factory=dict)
