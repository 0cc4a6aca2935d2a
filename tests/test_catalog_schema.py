"""The catalog schema comes from Alembic migrations and matches the code's metadata."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ilm.catalog import Catalog
from ilm.catalog.schema import metadata


def test_migrated_schema_matches_metadata(catalog_url: str) -> None:
    cat = Catalog.open(catalog_url)
    try:
        with cat.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            diff = compare_metadata(ctx, metadata)
            assert diff == [], diff
            assert ctx.get_current_revision() is not None
    finally:
        cat.close()


def test_reopening_is_idempotent_and_keeps_rows(catalog_url: str) -> None:
    cat = Catalog.open(catalog_url)
    with cat.write() as c:
        c.execute(sa.text("INSERT INTO patients (patient_id, issuer, name, birth_date_raw, sex) VALUES ('p1', '', '', '', '')"))
    cat.close()
    again = Catalog.open(catalog_url)
    try:
        with again.read() as c:
            assert c.execute(sa.text("SELECT count(*) FROM patients")).scalar_one() == 1
    finally:
        again.close()


def test_unreachable_catalog_is_a_clear_error() -> None:
    import pytest

    from ilm.errors import CatalogError
    from support.servers import free_port

    with pytest.raises(CatalogError, match="migration failed|cannot open"):
        Catalog.open(f"postgresql+psycopg://ilm@127.0.0.1:{free_port()}/nope?connect_timeout=2")


def test_a_catalog_that_passed_the_reserved_revisions_empty_is_repaired(catalog_url: str) -> None:
    """0012 and 0013 were reserved no-ops before they were filled: a catalog migrated in
    between lacks their tables and columns; opening it (0015) adds them, and keeps its rows."""
    cat = Catalog.open(catalog_url)
    with cat.write() as c:
        c.execute(sa.text("INSERT INTO patients (patient_id, issuer, name, birth_date_raw, sex) VALUES ('p1', '', '', '', '')"))
        c.execute(sa.text("DROP TABLE tier_history"))
        c.execute(sa.text("DROP TABLE received_history"))
        c.execute(sa.text("DROP TABLE plan_rule_actions"))
        c.execute(sa.text("ALTER TABLE plans DROP COLUMN rule_codes"))
        c.execute(sa.text("UPDATE alembic_version SET version_num = '0014'"))
    cat.close()
    again = Catalog.open(catalog_url)
    try:
        with again.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            assert compare_metadata(ctx, metadata) == []
        with again.read() as c:
            assert c.execute(sa.text("SELECT count(*) FROM patients")).scalar_one() == 1
    finally:
        again.close()
