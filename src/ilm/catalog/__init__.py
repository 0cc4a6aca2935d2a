"""The catalog: the only package that talks SQL. SQLite by default, PostgreSQL at scale.

``Catalog`` owns the engine; reads and writes go through its two context
managers so that SQLite writers take the write lock up front.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine

from ilm.catalog.engine import create_catalog_engine, migrate

__all__ = ["Catalog"]


class Catalog:
    """A migrated catalog database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True, sqlite_synchronous: str = "full") -> "Catalog":
        engine = create_catalog_engine(url, sqlite_synchronous=sqlite_synchronous)
        if upgrade:
            migrate(engine)
        return cls(engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection inside one transaction, committed on success."""
        with self.engine.connect() as conn:
            conn.info["write"] = True
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info["write"] = False

    def close(self) -> None:
        self.engine.dispose()
