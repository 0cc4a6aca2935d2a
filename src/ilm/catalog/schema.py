"""The catalog's tables (SQLAlchemy Core). Alembic migrations create them; a
test checks that the migrated database matches this metadata."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

__all__ = ["metadata", "patients", "studies", "series", "instances", "locations", "conflicts"]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

UID = String(64)
TS = DateTime(timezone=True)

patients = Table(
    "patients",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("issuer", String(64), nullable=False, server_default=""),
    Column("name", String(200), nullable=False, server_default=""),
    Column("birth_date", Date),
    Column("birth_date_raw", String(32), nullable=False, server_default=""),
    Column("sex", String(16), nullable=False, server_default=""),
    UniqueConstraint("patient_id", "issuer", name="uq_patients_identity"),
)

# Multi-valued facts (modalities, SOP classes, body parts, stations) are kept
# as backslash-joined text, DICOM's own multi-value separator, so that a policy
# can match them with one LIKE or regex on any database.
studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_uid", UID, nullable=False, unique=True),
    Column("patient_pk", Integer, ForeignKey("patients.id"), nullable=False),
    Column("study_date", Date),
    Column("study_date_raw", String(32), nullable=False, server_default=""),
    Column("study_time", String(32), nullable=False, server_default=""),
    Column("accession_number", String(64), nullable=False, server_default=""),
    Column("description", String(256), nullable=False, server_default=""),
    Column("study_id", String(32), nullable=False, server_default=""),
    Column("referring_physician", String(200), nullable=False, server_default=""),
    Column("institution_name", String(128), nullable=False, server_default=""),
    Column("station_names", Text, nullable=False, server_default=""),
    Column("manufacturers", Text, nullable=False, server_default=""),
    Column("modalities", Text, nullable=False, server_default=""),
    Column("sop_classes", Text, nullable=False, server_default=""),
    Column("body_parts", Text, nullable=False, server_default=""),
    Column("patient_age", String(16), nullable=False, server_default=""),
    Column("patient_identity_removed", Boolean, nullable=False, server_default=false()),
    Column("series_count", Integer, nullable=False, server_default="0"),
    Column("instance_count", Integer, nullable=False, server_default="0"),
    Column("size_bytes", BigInteger, nullable=False, server_default="0"),
    Column("state", String(16), nullable=False, server_default="active"),
    Column("received_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("last_accessed_at", TS),
    Index("ix_studies_patient", "patient_pk"),
    Index("ix_studies_date", "study_date"),
)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_uid", UID, nullable=False, unique=True),
    Column("study_pk", Integer, ForeignKey("studies.id"), nullable=False),
    Column("modality", String(16), nullable=False, server_default=""),
    Column("description", String(256), nullable=False, server_default=""),
    Column("number", Integer),
    Column("body_part", String(64), nullable=False, server_default=""),
    Column("station_name", String(64), nullable=False, server_default=""),
    Column("series_date", Date),
    Column("instance_count", Integer, nullable=False, server_default="0"),
    Column("size_bytes", BigInteger, nullable=False, server_default="0"),
    Index("ix_series_study", "study_pk"),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_uid", UID, nullable=False, unique=True),
    Column("series_pk", Integer, ForeignKey("series.id"), nullable=False),
    Column("study_pk", Integer, ForeignKey("studies.id"), nullable=False),
    Column("sop_class_uid", UID, nullable=False),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("number", Integer),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("received_at", TS, nullable=False),
    Index("ix_instances_series", "series_pk"),
    Index("ix_instances_study", "study_pk"),
)

# One row per copy of an instance on a tier. The catalog is the source of
# truth: a copy exists for ilm only when its row says VERIFIED.
locations = Table(
    "locations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_pk", Integer, ForeignKey("instances.id"), nullable=False),
    Column("tier", String(64), nullable=False),
    Column("object_key", String(255), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("verified_at", TS),
    UniqueConstraint("instance_pk", "tier", name="uq_locations_instance_tier"),
    Index("ix_locations_tier_state", "tier", "state"),
)

conflicts = Table(
    "conflicts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_uid", UID, nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("kept_at", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("received_at", TS, nullable=False),
    Index("ix_conflicts_sop", "sop_uid"),
)
