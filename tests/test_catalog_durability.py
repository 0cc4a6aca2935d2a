"""A committed catalog row survives a power failure on SQLite by default (PRAGMA synchronous=FULL:
the write-ahead log is flushed at every commit); ``catalog.sqlite_synchronous = "normal"`` trades
that for speed, on request only."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from ilm.config import load_settings, write_default_config
from ilm.service import ArchiveService

_LEVELS = {0: "off", 1: "normal", 2: "full", 3: "extra"}


def _synchronous(service: ArchiveService) -> str:
    """PRAGMA synchronous of a read and of a write connection of the service's catalog."""
    with service.catalog.read() as conn:
        read = conn.execute(text("PRAGMA synchronous")).scalar_one()
    with service.catalog.write() as conn:
        write = conn.execute(text("PRAGMA synchronous")).scalar_one()
    assert read == write
    return _LEVELS[int(read)]


@pytest.mark.parametrize("configured,expected", [(None, "full"), ("full", "full"), ("normal", "normal")])
def test_sqlite_catalog_flushes_every_commit_unless_told_otherwise(tmp_path: Path, configured: str | None,
                                                                   expected: str) -> None:
    write_default_config(tmp_path)
    cfg = tmp_path / "ilm.toml"
    text_ = cfg.read_text()
    assert 'sqlite_synchronous = "full"' in text_  # ilm init writes the key, commented, with its default
    if configured is None:
        text_ = text_.replace('sqlite_synchronous = "full"\n', "")
    else:
        text_ = text_.replace('sqlite_synchronous = "full"', f'sqlite_synchronous = "{configured}"')
    cfg.write_text(text_)
    service = ArchiveService.open(load_settings(home=tmp_path, env={}))
    try:
        assert _synchronous(service) == expected
    finally:
        service.close()
