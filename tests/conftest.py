"""Fixtures shared by the whole suite.

Every test that takes ``catalog_url`` (directly or through ``settings`` or
``service``) runs twice: on SQLite and on a real PostgreSQL server started on
127.0.0.1 for this session. ILM_TEST_CATALOGS=sqlite limits the run to one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from support import servers

from ilm.config import Settings, load_settings
from ilm.service import ArchiveService

pytest_plugins = ["support.fixtures_s3"]

CATALOGS = [c for c in os.environ.get("ILM_TEST_CATALOGS", "sqlite,postgresql").split(",") if c]


@pytest.fixture(scope="session")
def postgres() -> Iterator[servers.Postgres]:
    if not servers.postgres_available():
        pytest.fail("PostgreSQL server binaries are missing: run 'make test', which installs them")
    pg = servers.start_postgres()
    try:
        yield pg
    finally:
        servers.stop_postgres(pg)


@pytest.fixture(params=CATALOGS)
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_catalog(request.param, tmp_path, request)


def fresh_catalog(kind: str, folder: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new, empty catalog: a SQLite file in ``folder``, or a new database on the
    session's PostgreSQL server (dropped afterwards). For fixtures of any scope."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'catalog.sqlite'}"
        return
    pg: servers.Postgres = request.getfixturevalue("postgres")
    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield pg.url(name)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def write_config(home: Path, catalog_url: str, extra: str = "") -> Path:
    """A config with two filesystem tiers under ``home`` and the given catalog."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "ilm.toml"
    path.write_text(
        f"""
[catalog]
url = "{catalog_url}"

[tiers.hot]
kind = "filesystem"
path = "tiers/hot"
cost_per_gb_month = 0.10
fsync = false

[tiers.warm]
kind = "filesystem"
path = "tiers/warm"
cost_per_gb_month = 0.03
fsync = false
{extra}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def settings(home: Path, catalog_url: str) -> Settings:
    write_config(home, catalog_url)
    return load_settings(home=home, env={})


@pytest.fixture
def service(settings: Settings) -> Iterator[ArchiveService]:
    svc = ArchiveService.open(settings)
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture(scope="session")
def pydicom_test_files() -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"
