"""Opening the catalog database: engine set-up per dialect and migrations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ilm.errors import CatalogError

__all__ = ["create_catalog_engine", "migrate", "MIGRATIONS"]

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_setup(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin, so that
        # writers can take the write lock up front (BEGIN IMMEDIATE) and never
        # deadlock upgrading a read lock.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit's write-ahead log is flushed before the commit returns (durable);
        # NORMAL: flushed at checkpoints only (catalog.sqlite_synchronous).
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")


def create_catalog_engine(url: str, *, sqlite_synchronous: str = "full") -> Engine:
    """An engine for ``url`` (sqlite:///... or postgresql+psycopg://...); ``sqlite_synchronous``
    ("full" or "normal") is SQLite's PRAGMA synchronous."""
    if sqlite_synchronous not in ("full", "normal"):
        raise CatalogError(f"sqlite_synchronous must be 'full' or 'normal', not {sqlite_synchronous!r}")
    try:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, pool_size=8, max_overflow=16, pool_timeout=60)
            _sqlite_setup(engine, sqlite_synchronous.upper())
        else:
            engine = create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise CatalogError(f"catalog {url!r}: cannot open: {exc}") from None
    return engine


def _head() -> str | None:
    """The newest revision, from the ``revision`` / ``down_revision`` lines of the migration files
    (None when they do not name exactly one)."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for f in (MIGRATIONS / "versions").glob("[0-9]*.py"):
        src = f.read_text(encoding="utf-8")
        rev = re.search(r"^revision\b[^=]*=\s*['\"]([^'\"]+)['\"]", src, re.M)
        down = re.search(r"^down_revision\b[^=]*=(.*)$", src, re.M)
        if rev is None or down is None:
            return None
        revisions.add(rev.group(1))
        downs.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else None


def _at_head(engine: Engine) -> bool:
    """Whether the catalog already records the newest revision (then Alembic has nothing to do and is
    not even imported: opening the catalog is most of what a short command such as ilm plan costs)."""
    head = _head()
    if head is None:
        return False
    try:
        with engine.connect() as conn:
            found = {r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))}
            conn.rollback()
    except SQLAlchemyError:  # a new catalog (no table yet): Alembic creates it
        return False
    return found == {head}


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic."""
    if revision == "head" and _at_head(engine):
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.connect() as conn:
            conn.info["write"] = True
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                # The flag belongs to the pooled connection: left set, whoever reads on it next would
                # BEGIN IMMEDIATE and wait for (or hold) the write lock.
                conn.info["write"] = False
    except SQLAlchemyError as exc:
        raise CatalogError(f"catalog {engine.url!r}: migration failed: {exc}") from None
