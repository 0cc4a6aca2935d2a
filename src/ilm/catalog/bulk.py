"""Bulk loading of catalog rows: many studies per transaction, no per-row round trips.

Used by ``ilm synth --catalog-only`` to build catalogs of a million studies
and more for scale tests, and usable by any importer that already knows
whole studies (a migration from another archive's database).

The caller hands over one :class:`BulkBatch` per transaction: value tuples
in the column orders below, each led by the natural key of its parent
instead of the parent's row id:

- ``patients``: (patient_id, issuer) -> values in :data:`PATIENT_COLUMNS`.
- ``studies``: ``((patient_id, issuer), *values in STUDY_COLUMNS)``. Counts
  (``series_count``, ``instance_count``, ``size_bytes``) and the
  backslash-joined multi-valued facts are the caller's: nothing is
  recomputed.
- ``series``: ``(study_uid, *values in SERIES_COLUMNS)``.
- ``instances`` (optional): ``(series_uid, object_key, *values in
  INSTANCE_COLUMNS)``; one ``locations`` row on ``BulkBatch.tier``, in state
  ``BulkBatch.location_state``, is written beside each instance.

Without instance rows a study has its counts and sizes but no location: it
is on no tier as far as the catalog knows (the by-tier summary leaves it
out). That is what scale tests of a million studies want: a million
studies hold about a hundred million instances, which real catalogs do
hold but which take hours to generate. Pass instances when a test needs
tiers.

Studies whose Study Instance UID is already catalogued are skipped with
their series and instances (so a load can be resumed); patients already
catalogued are reused. Row ids are reserved up front (PostgreSQL: from the
table's sequence; SQLite: above the current maximum, under the write lock
that the batch's transaction holds), so parents and children go in with
one ``executemany`` (SQLite) or ``COPY`` (PostgreSQL) per table, and
several processes may load batches into the same catalog at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Date, DateTime, Table, bindparam, func, or_, select, text, update
from sqlalchemy.engine import Connection

from ilm.catalog import Catalog
from ilm.catalog.schema import instances, locations, patients, series, studies
from ilm.models import CopyState

__all__ = [
    "BulkBatch",
    "BulkCounts",
    "BulkLoader",
    "set_last_accessed",
    "PATIENT_COLUMNS",
    "STUDY_COLUMNS",
    "SERIES_COLUMNS",
    "INSTANCE_COLUMNS", "set_received"]

PATIENT_COLUMNS = ("name", "birth_date", "birth_date_raw", "sex")
STUDY_COLUMNS = (
    "study_uid", "study_date", "study_date_raw", "study_time", "accession_number", "description", "study_id",
    "referring_physician", "institution_name", "station_names", "manufacturers", "modalities", "sop_classes",
    "body_parts", "patient_age", "patient_identity_removed", "series_count", "instance_count", "size_bytes",
    "state", "received_at", "updated_at", "last_accessed_at", "tiers",
)
SERIES_COLUMNS = (
    "series_uid", "modality", "description", "number", "body_part", "station_name", "series_date",
    "instance_count", "size_bytes",
)
INSTANCE_COLUMNS = ("sop_uid", "sop_class_uid", "transfer_syntax_uid", "number", "size_bytes", "sha256", "received_at")
_LOCATION_COLUMNS = ("instance_pk", "tier", "object_key", "size_bytes", "sha256", "state", "created_at", "verified_at")

_IN_CHUNK = 5000  # values per IN (...) query
_SQLITE_CACHE_KB = 128 * 1024
_SIZE = 1 + STUDY_COLUMNS.index("size_bytes")
_STUDY_UID = 1 + STUDY_COLUMNS.index("study_uid")
_SERIES_UID = 1 + SERIES_COLUMNS.index("series_uid")


def _check_columns() -> None:
    """Every column above must exist; every other column must have a default or allow NULL."""
    for table, cols, fks in (
        (patients, ("patient_id", "issuer") + PATIENT_COLUMNS, ()),
        (studies, STUDY_COLUMNS, ("patient_pk",)),
        (series, SERIES_COLUMNS, ("study_pk",)),
        (instances, INSTANCE_COLUMNS, ("series_pk", "study_pk")),
        (locations, _LOCATION_COLUMNS, ()),
    ):
        names = {c.name for c in table.columns}
        unknown = set(cols) - names
        required = {
            c.name for c in table.columns
            if c.name not in cols and c.name != "id" and c.name not in fks
            and not c.nullable and c.server_default is None
        }
        if unknown or required:
            raise RuntimeError(
                f"ilm.catalog.bulk is out of date with table {table.name}: "
                f"unknown columns {sorted(unknown)}, required columns not filled {sorted(required)}"
            )


_check_columns()


@dataclass
class BulkBatch:
    patients: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    studies: list[tuple[Any, ...]] = field(default_factory=list)
    series: list[tuple[Any, ...]] = field(default_factory=list)
    instances: list[tuple[Any, ...]] = field(default_factory=list)
    tier: str = ""
    location_state: str = CopyState.VERIFIED.value

    def extend(self, other: "BulkBatch") -> None:
        self.patients.update(other.patients)
        self.studies.extend(other.studies)
        self.series.extend(other.series)
        self.instances.extend(other.instances)


@dataclass
class BulkCounts:
    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    locations: int = 0
    skipped_studies: int = 0
    size_bytes: int = 0

    def add(self, other: "BulkCounts") -> None:
        for name in BulkCounts.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _chunks(values: Sequence[Any], n: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(values), n):
        yield values[i : i + n]


def _reserve_ids(conn: Connection, table: Table, n: int) -> range | list[int]:
    """``n`` unused primary keys of ``table`` for rows inserted in this transaction."""
    if n == 0:
        return []
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": table.name, "n": n},
        )
        return [int(r[0]) for r in rows]
    # SQLite: the batch's transaction holds the write lock (BEGIN IMMEDIATE),
    # so nobody else can take an id above the maximum before we commit.
    top = int(conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one())
    return range(top + 1, top + 1 + n)


def _sqlite_datetime(v: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME text: "YYYY-MM-DD HH:MM:SS.ffffff", wall clock, no offset.
    return v.isoformat(" ", "microseconds")[:26]


_BUILDERS: dict[tuple[str, str, int, int, tuple[str, ...]], Callable[..., tuple[Any, ...]]] = {}


def _builder(dialect: Any, table: Table, lead: int, offset: int, cols: Sequence[str]) -> Callable[..., tuple[Any, ...]]:
    """``f(a_0 .. a_lead-1, r)`` -> the row ``(a_0 .. a_lead-1, r[offset], r[offset + 1], ...)``,
    each value of ``r`` converted to what the database is given for its column.

    Generated once per table and layout (as ``collections.namedtuple`` does), so
    that a row costs one tuple and no Python loop. For SQLite, dates and
    datetimes become the text SQLAlchemy would store (``isoformat``, several
    times faster than SQLAlchemy's formatters; a test checks the text is the
    same); other types with a bind processor go through it. PostgreSQL's COPY
    takes the Python values as they are.
    """
    key = (dialect.name, table.name, lead, offset, tuple(cols))
    cached = _BUILDERS.get(key)
    if cached is not None:
        return cached
    env: dict[str, Any] = {"_dt": _sqlite_datetime, "_d": date.isoformat}
    args = [f"a{i}" for i in range(lead)]
    items = list(args)
    for j, c in enumerate(cols):
        x = f"r[{offset + j}]"
        t = table.c[c].type
        if dialect.name != "sqlite":
            items.append(x)
        elif isinstance(t, DateTime):
            items.append(f"(None if {x} is None else _dt({x}))")
        elif isinstance(t, Date):
            items.append(f"(None if {x} is None else _d({x}))")
        else:
            proc = t._cached_bind_processor(dialect)
            if proc is None:
                items.append(x)
            else:
                env[f"_p{j}"] = proc
                items.append(f"(None if {x} is None else _p{j}({x}))")
    src = f"def build({', '.join(args + ['r'])}):\n    return ({', '.join(items)},)\n"
    exec(src, env)  # noqa: S102 - generated from column names of our own schema
    built: Callable[..., tuple[Any, ...]] = env["build"]
    _BUILDERS[key] = built
    return built


def _insert(conn: Connection, table: Table, cols: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """INSERT rows built by :func:`_builder` (values in ``cols`` order) at driver speed:
    one ``executemany`` of a statement compiled once (SQLite), or ``COPY`` (PostgreSQL)."""
    if not rows:
        return
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in cols)
    if dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            with cur.copy(f"COPY {quote(table.name)} ({names}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
        return
    sql = f"INSERT INTO {quote(table.name)} ({names}) VALUES ({', '.join('?' * len(cols))})"
    conn.exec_driver_sql(sql, rows)


def _existing_studies(conn: Connection, uids: list[str]) -> set[str]:
    known: set[str] = set()
    for part in _chunks(uids):
        if conn.dialect.name == "sqlite":
            q = f"SELECT study_uid FROM studies WHERE study_uid IN ({', '.join('?' * len(part))})"
            known.update(r[0] for r in conn.exec_driver_sql(q, tuple(part)))
        else:
            known.update(conn.execute(select(studies.c.study_uid).where(studies.c.study_uid.in_(part))).scalars())
    return known


class BulkLoader:
    """Loads batches into one catalog; remembers the patients it has seen."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._patient_pk: dict[tuple[str, str], int] = {}

    def load(self, batch: BulkBatch) -> BulkCounts:
        """Insert one batch in one transaction; return what was inserted."""
        new_patients: dict[tuple[str, str], int] = {}
        with self.catalog.write() as conn:
            if conn.dialect.name == "sqlite":
                # Index pages of a large catalog: a bigger page cache for this batch only.
                before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
                conn.exec_driver_sql(f"PRAGMA cache_size={-_SQLITE_CACHE_KB}")
                try:
                    counts = self._load(conn, batch, new_patients)
                finally:
                    conn.exec_driver_sql(f"PRAGMA cache_size={int(before or -2000)}")
            else:
                counts = self._load(conn, batch, new_patients)
        self._patient_pk.update(new_patients)  # only once committed
        return counts

    def _load(self, conn: Connection, b: BulkBatch, new_patients: dict[tuple[str, str], int]) -> BulkCounts:
        c = BulkCounts()
        d = conn.dialect
        # 1. Studies already catalogued are skipped, with their series and instances.
        known = _existing_studies(conn, [s[_STUDY_UID] for s in b.studies])
        study_rows, series_rows, instance_rows = b.studies, b.series, b.instances
        if known:
            c.skipped_studies = len(known)
            study_rows = [s for s in study_rows if s[_STUDY_UID] not in known]
            series_rows = [s for s in series_rows if s[0] not in known]
            kept_series = {s[_SERIES_UID] for s in series_rows}
            instance_rows = [i for i in instance_rows if i[0] in kept_series]
        if not study_rows:
            return c

        # 2. Patients: reuse the catalogued ones, insert the others.
        missing = [k for k in {s[0] for s in study_rows} if k not in self._patient_pk]
        if missing:
            found = self._find_patients(conn, missing)
            self._patient_pk.update(found)
            fresh = [k for k in missing if k not in found]
            build = _builder(d, patients, 3, 0, PATIENT_COLUMNS)
            rows = []
            for key, pk in zip(fresh, _reserve_ids(conn, patients, len(fresh))):
                rows.append(build(pk, key[0], key[1], b.patients[key]))
                new_patients[key] = pk
            _insert(conn, patients, ("id", "patient_id", "issuer") + PATIENT_COLUMNS, rows)
            c.patients = len(rows)
        pk_of_patient = {**self._patient_pk, **new_patients} if new_patients else self._patient_pk

        # 3. Studies.
        build = _builder(d, studies, 2, 1, STUDY_COLUMNS)
        ids = _reserve_ids(conn, studies, len(study_rows))
        rows = [build(pk, pk_of_patient[r[0]], r) for r, pk in zip(study_rows, ids)]
        study_pk = {r[_STUDY_UID]: pk for r, pk in zip(study_rows, ids)}
        _insert(conn, studies, ("id", "patient_pk") + STUDY_COLUMNS, rows)
        c.studies = len(rows)
        c.size_bytes = sum(r[_SIZE] for r in study_rows)

        # 4. Series.
        build = _builder(d, series, 2, 1, SERIES_COLUMNS)
        ids = _reserve_ids(conn, series, len(series_rows))
        rows = [build(pk, study_pk[r[0]], r) for r, pk in zip(series_rows, ids)]
        series_pk = {r[_SERIES_UID]: (pk, study_pk[r[0]]) for r, pk in zip(series_rows, ids)}
        _insert(conn, series, ("id", "study_pk") + SERIES_COLUMNS, rows)
        c.series = len(rows)

        # 5. Instances and their copies.
        if instance_rows:
            build = _builder(d, instances, 3, 2, INSTANCE_COLUMNS)
            build_loc = _builder(d, locations, 0, 0, _LOCATION_COLUMNS)
            rows, locs = [], []
            tier, state = b.tier, b.location_state
            verified = state == CopyState.VERIFIED.value
            for r, pk in zip(instance_rows, _reserve_ids(conn, instances, len(instance_rows))):
                se, st = series_pk[r[0]]
                rows.append(build(pk, se, st, r))
                # r: series_uid, object_key, sop_uid, sop_class_uid, transfer_syntax_uid, number, size_bytes, sha256, received_at
                locs.append(build_loc((pk, tier, r[1], r[6], r[7], state, r[8], r[8] if verified else None)))
            _insert(conn, instances, ("id", "series_pk", "study_pk") + INSTANCE_COLUMNS, rows)
            _insert(conn, locations, _LOCATION_COLUMNS, locs)
            c.instances = c.locations = len(rows)
        return c

    @staticmethod
    def _find_patients(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        wanted = set(keys)
        found: dict[tuple[str, str], int] = {}
        ids = sorted({k[0] for k in keys})
        for part in _chunks(ids):
            if conn.dialect.name == "sqlite":
                q = f"SELECT patient_id, issuer, id FROM patients WHERE patient_id IN ({', '.join('?' * len(part))})"
                rows: Iterable[Any] = conn.exec_driver_sql(q, tuple(part))
            else:
                rows = conn.execute(select(patients.c.patient_id, patients.c.issuer, patients.c.id)
                                    .where(patients.c.patient_id.in_(part)))
            for pid, issuer, pk in rows:
                if (pid, issuer) in wanted:
                    found[(pid, issuer)] = int(pk)
        return found


def set_last_accessed(catalog: Catalog, last_access: dict[str, Any], chunk: int = 10_000) -> int:
    """Set ``studies.last_accessed_at`` of the given Study Instance UIDs (an access
    history replayed from elsewhere); keeps a newer value already recorded. Returns
    the number of studies updated."""
    stmt = (
        update(studies)
        .where(studies.c.study_uid == bindparam("uid"))
        .where(or_(studies.c.last_accessed_at.is_(None), studies.c.last_accessed_at < bindparam("at")))
        .values(last_accessed_at=bindparam("at"))
    )
    items = [{"uid": uid, "at": at} for uid, at in last_access.items() if at is not None]
    n = 0
    for part in _chunks(items, chunk):
        with catalog.write() as conn:
            r = conn.execute(stmt, list(part))
            n += max(r.rowcount, 0)
    return n


def set_received(catalog: Catalog, received: dict[str, Any], chunk: int = 10_000) -> int:
    """Set ``studies.received_at`` to an earlier moment (a history replayed from
    elsewhere, as the demo does for its synthetic years); a later value is never
    set. Returns the number of studies updated."""
    stmt = (
        update(studies)
        .where(studies.c.study_uid == bindparam("uid"), studies.c.received_at > bindparam("at"))
        .values(received_at=bindparam("at"))
    )
    items = [{"uid": uid, "at": at} for uid, at in received.items() if at is not None]
    n = 0
    for part in _chunks(items, chunk):
        with catalog.write() as conn:
            r = conn.execute(stmt, list(part))
            n += max(r.rowcount, 0)
    return n
