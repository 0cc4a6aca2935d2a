"""The catalog's pooled connections: the connection the migration used does not keep writing.

A reader that got it would BEGIN IMMEDIATE, take SQLite's write lock, and make
a writer beside it (a plan with its second connection, ilm report after ilm
cost's readers) wait 60 s and fail with "database is locked"."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import sqlalchemy as sa

from ilm.catalog import Catalog


def test_readers_after_the_migration_do_not_take_the_write_lock(tmp_path: Path) -> None:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        with ExitStack() as stack:
            # three connections at once: the migration's (back in the pool) is one of them
            readers = [stack.enter_context(catalog.engine.connect()) for _ in range(3)]
            assert not [r for r in readers if r.info.get("write")]
            for r in readers:  # each reads in a transaction of its own, all open together
                r.exec_driver_sql("PRAGMA busy_timeout=100")
                assert r.execute(sa.text("SELECT count(*) FROM studies")).scalar_one() == 0
            with catalog.write() as writer:  # and a writer still gets the write lock beside them
                writer.exec_driver_sql("PRAGMA busy_timeout=100")
                writer.execute(sa.text("DELETE FROM holds"))
    finally:
        catalog.close()
