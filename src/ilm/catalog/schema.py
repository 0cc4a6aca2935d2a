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

__all__ = [
    "metadata", "patients", "studies", "series", "instances", "locations", "conflicts",
    "holds", "audit_log", "plans", "plan_actions", "plan_rule_actions", "moves", "tombstones", "access_log", "restores",
    "api_tokens", "object_keys", "tier_history", "received_history",
]

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
    Column("labels", Text, nullable=False, server_default=""),
    # Tiers holding a verified copy of any instance (backslash-joined), kept up
    # to date by ingest and moves so that policies need not scan locations.
    Column("tiers", Text, nullable=False, server_default=""),
    Column("quarantined_at", TS),
    Column("quarantine_until", TS),
    Column("expired_rule", String(128)),
    Column("expired_plan", String(32)),
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
    # A restored copy of an archived instance is dropped after this moment
    # (the archive copy remains); NULL for every other copy.
    Column("expires_at", TS),
    # An instance inside a packed study object: its byte range in that object.
    Column("pack_offset", BigInteger),
    Column("pack_length", BigInteger),
    # Fixity (migration 0007): a copy written to a replica tier (the ``replicas``
    # tier option) is kept by moves and not counted in studies.tiers; a copy a
    # check found 'bad' or 'missing' says why and when (NULL while it is good).
    Column("replica", Boolean, nullable=False, server_default=false()),
    Column("problem", Text),
    Column("problem_at", TS),
    # A copy on a WORM tier (migration 0008): locked by the tier until retain_until
    # (lock_mode governance | compliance); no ilm path deletes it before then.
    Column("retain_until", TS),
    Column("lock_mode", String(16)),
    UniqueConstraint("instance_pk", "tier", name="uq_locations_instance_tier"),
    Index("ix_locations_tier_state", "tier", "state"),
    Index("ix_locations_verified_at", "verified_at"),
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

# -- lifecycle (migration 0002) ---------------------------------------------

# Legal holds on a study or a patient. A hold is released, never deleted, so
# that the audit trail can always say what was held when.
holds = Table(
    "holds",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("scope", String(16), nullable=False),  # study | patient
    Column("target", String(64), nullable=False),  # Study Instance UID or Patient ID
    Column("reason", Text, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("released_at", TS),
    Column("released_by", String(128)),
    Index("ix_holds_target", "scope", "target"),
)

# Append-only, hash-chained: each row's hash covers its content and the
# previous row's hash, so a changed or removed row breaks the chain.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", TS, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(32), nullable=False),
    Column("study_uid", String(64)),
    Column("plan_id", String(32)),
    Column("rule_id", String(128)),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Index("ix_audit_log_study", "study_uid"),
)

# How far the audit trail has been sent as DICOM audit messages (migration 0009):
# one row per export stream ("atna"), so that each entry is sent once across processes.
audit_export = Table(
    "audit_export",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("last_id", Integer, nullable=False),
    Column("updated_at", TS, nullable=False),
)

plans = Table(
    "plans",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", TS, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("as_of", Date, nullable=False),
    Column("policy_name", String(128), nullable=False),
    Column("policy_path", Text, nullable=False),
    Column("policy_sha256", String(64), nullable=False),
    Column("catalog_sha256", String(64), nullable=False),
    Column("plan_sha256", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # planned | applying | applied | failed
    Column("approved_by", String(128)),
    Column("summary", Text, nullable=False),  # JSON
    # JSON: code -> [decision, target tier, rule id, reason] of the rows in plan_rule_actions
    Column("rule_codes", Text),
)

# One row per study the plan acts on or a protection vetoed; studies that no
# rule matched and nothing vetoed are counted in the summary only.
plan_actions = Table(
    "plan_actions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("plan_id", String(32), ForeignKey("plans.id"), nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("decision", String(16), nullable=False),  # transition | expire | keep
    Column("target_tier", String(64)),
    Column("rule_id", String(128)),
    Column("vetoes", Text, nullable=False, server_default=""),  # JSON list
    Column("fingerprint", String(64), nullable=False),  # the study facts the plan saw
    Column("instance_count", Integer, nullable=False, server_default="0"),
    Column("size_bytes", BigInteger, nullable=False, server_default="0"),
    Column("state", String(16), nullable=False, server_default="pending"),  # pending|done|skipped|failed
    Column("reason", Text, nullable=False, server_default=""),
    Column("updated_at", TS),
    UniqueConstraint("plan_id", "study_uid", name="uq_plan_actions_plan_study"),
    Index("ix_plan_actions_state", "plan_id", "state"),
)

# The studies a rule decided on its own in the database (ilm.catalog.policy_sql): a short row
# per study, the rule's decision and reason looked up by code in plans.rule_codes; the study's
# instances, bytes and last read as the plan saw them (its fingerprint, holds 0) and its tiers
# (the plan's cost). A row of plan_actions is written instead for a study the pure evaluation
# decided. One key, no foreign key: a million of these rows go in from one INSERT ... SELECT.
plan_rule_actions = Table(
    "plan_rule_actions",
    metadata,
    Column("plan_id", String(32), primary_key=True),
    Column("study_pk", Integer, primary_key=True, autoincrement=False),
    Column("code", Integer, nullable=False),
    Column("instance_count", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("last_accessed_at", TS),
    Column("tiers", Text, nullable=False),  # where the study was, for the plan's cost before and after
    Column("state", String(16), nullable=False, server_default="pending"),  # pending|done|skipped|failed
    Column("reason", Text),  # NULL: the rule's own reason
    Column("updated_at", TS),
    sqlite_with_rowid=False,
)

# The journal of copy -> verify -> commit -> delete. A row that is not 'done'
# or 'rolled_back' after a crash is finished or undone by recovery.
moves = Table(
    "moves",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("plan_id", String(32)),
    Column("instance_pk", Integer, ForeignKey("instances.id"), nullable=False),
    Column("src_tier", String(64), nullable=False),
    Column("dst_tier", String(64), nullable=False),
    Column("object_key", String(255), nullable=False),
    Column("state", String(16), nullable=False),  # copying | committed | done | rolled_back
    Column("started_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Index("ix_moves_state", "state"),
)

# What stays of a purged study: enough to answer "where did it go, and who said so".
tombstones = Table(
    "tombstones",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_uid", UID, nullable=False, unique=True),
    Column("patient_id", String(64), nullable=False),
    Column("study_date", Date),
    Column("instance_count", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("rule_id", String(128)),
    Column("plan_id", String(32)),
    Column("approved_by", String(128)),
    Column("expired_at", TS, nullable=False),
    Column("purged_at", TS, nullable=False),
)

# -- access (migration 0004) -------------------------------------------------

# One row per retrieval (C-GET, C-MOVE, WADO-RS, export); queries do not count,
# as S3 does not count HEAD or LIST. Written in batches by the service.
access_log = Table(
    "access_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", TS, nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("interface", String(16), nullable=False),  # c-get | c-move | wado-rs | export
    Column("who", String(128), nullable=False, server_default=""),  # calling AE title or user
    Column("instances", Integer, nullable=False, server_default="0"),
    Index("ix_access_log_study", "study_uid"),
    Index("ix_access_log_at", "at"),
)

# Restores from archive tiers (tape, Glacier): requested, ready after the
# tier's latency, copied to the restore tier, then expired.
restores = Table(
    "restores",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_uid", UID, nullable=False),
    Column("archive_tier", String(64), nullable=False),
    Column("target_tier", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # requested | restoring | ready | failed | expired
    Column("requested_by", String(128), nullable=False, server_default=""),
    Column("requested_at", TS, nullable=False),
    Column("ready_at", TS, nullable=False),  # when the archive releases the data
    Column("completed_at", TS),
    Column("expires_at", TS),
    Column("detail", Text, nullable=False, server_default=""),
    # migration 0014: the worker copying it ("host:pid:nonce") and until when, renewed while it copies
    Column("lease_owner", String(128), nullable=False, server_default=""),
    Column("lease_until", TS),
    Index("ix_restores_study", "study_uid"),
    Index("ix_restores_state", "state"),
)

# -- API tokens (migration 0006) ----------------------------------------------

# Only the SHA-256 of a token is stored (ilm.security.roles says why that is enough).
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False),
    Column("role", String(16), nullable=False),  # viewer | operator | approver | admin
    Column("hash", String(64), nullable=False, unique=True),
    Column("created_at", TS, nullable=False),
    Column("created_by", String(128), nullable=False, server_default=""),
    Column("expires_at", TS),
    Column("revoked_at", TS),
    Column("last_used_at", TS),
    Index("ix_api_tokens_name", "name"),
)

# -- encryption at rest (migration 0011) ------------------------------------------

# The master key id each object on an encrypted tier was last seen wrapped by
# (ilm keys rotate/retire write it; the object header stays the truth).
object_keys = Table(
    "object_keys",
    metadata,
    Column("tier", String(64), primary_key=True),
    Column("object_key", String(255), primary_key=True),
    Column("key_id", String(32), nullable=False),
    Column("checked_at", TS, nullable=False),
    Index("ix_object_keys_key_id", "key_id"),
)

# -- storage by tier over time (migration 0012, ilm.history) ----------------------

# Studies, instances and bytes per tier on a day: the day's last snapshot. Rows
# marked reconstructed were backfilled at the first snapshot (docs/cost.md).
tier_history = Table(
    "tier_history",
    metadata,
    Column("day", Date, primary_key=True),
    Column("tier", String(64), primary_key=True),
    Column("studies", BigInteger, nullable=False),
    Column("instances", BigInteger, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("reconstructed", Boolean, nullable=False, server_default=false()),
    Column("recorded_at", TS, nullable=False),
)

# What arrived on a day, counted when it arrived (later deletions do not lower it).
received_history = Table(
    "received_history",
    metadata,
    Column("day", Date, primary_key=True),
    Column("studies", BigInteger, nullable=False),
    Column("instances", BigInteger, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("reconstructed", Boolean, nullable=False, server_default=false()),
    Column("recorded_at", TS, nullable=False),
)
