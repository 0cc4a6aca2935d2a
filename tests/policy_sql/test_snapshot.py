"""The plan's second connection (ilm.catalog.policy_sql.same_snapshot) sees the catalog as the plan does.

A plan reads the catalog totals it hashes on a second connection, in a
thread, while its own connection decides the studies. Both must see the same
catalog: a hold placed in between would otherwise be counted in the plan's
catalog hash but not in its decisions (or the other way round). On SQLite no
commit can come in between (the plan's writer holds the lock); on PostgreSQL
one can, and the second connection must not see it.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from ilm.catalog import Catalog
from ilm.catalog.policy_sql import catalog_state, consistent_read, same_snapshot
from ilm.catalog.schema import holds


def _hold(conn: sa.Connection, target: str) -> None:
    conn.execute(holds.insert().values(scope="study", target=target, reason="litigation", created_by="t",
                                       created_at=datetime(2026, 1, 1, tzinfo=timezone.utc)))


def test_second_connection_sees_the_plans_snapshot(catalog_url: str) -> None:
    catalog = Catalog.open(catalog_url)
    with catalog.write() as conn:
        _hold(conn, "1.2.3")
    other_writer = sa.create_engine(catalog_url, connect_args={"timeout": 0.5} if catalog_url.startswith("sqlite")
                                    else {})
    try:
        with catalog.write() as conn:
            consistent_read(conn)
            seen = catalog_state(conn)  # the plan's snapshot starts here
            assert seen["holds"] == 1
            # A hold placed by someone else now.
            if catalog_url.startswith("sqlite"):
                # The plan holds the write lock: nothing can commit before it ends.
                with pytest.raises(sa.exc.OperationalError, match="locked"), other_writer.begin() as c:
                    _hold(c, "4.5.6")
            else:
                with other_writer.begin() as c:
                    _hold(c, "4.5.6")
                with other_writer.connect() as c:  # committed: a new transaction sees it
                    assert catalog_state(c)["holds"] == 2
            with same_snapshot(conn) as second:
                assert second is not None
                assert catalog_state(second) == seen
    finally:
        other_writer.dispose()
        catalog.close()


def test_in_memory_sqlite_has_no_second_connection() -> None:
    # A second connection to an in-memory SQLite database would be another database (or, with
    # SQLAlchemy's pool for it, the same connection used from two threads): the caller reads in line.
    engine = sa.create_engine("sqlite://")
    try:
        with engine.connect() as conn, same_snapshot(conn) as second:
            assert second is None
    finally:
        engine.dispose()
