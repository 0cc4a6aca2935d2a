"""A short command pays only for what it uses.

``ilm plan`` (and every command that only reads the catalog) is a fresh
process each time an administrator runs it; its start-up is part of its
wall time (issue 3: a plan over 1M studies in 3 s). These tests run the
real ``ilm plan`` in a new interpreter and check that it never imports the
DICOM stack (pydicom, numpy, pynetdicom), the web stack, boto3, the ORM or
Alembic when the catalog is already at the newest revision; and that
Alembic still migrates a catalog that is not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from conftest import write_config

from ilm.catalog import Catalog
from ilm.catalog.engine import MIGRATIONS, _head, create_catalog_engine, migrate

REPO = Path(__file__).resolve().parents[1]
NOT_FOR_A_PLAN = ("pydicom", "numpy", "pynetdicom", "fastapi", "starlette", "uvicorn", "boto3", "botocore",
                  "alembic", "sqlalchemy.orm", "sqlalchemy.dialects.postgresql", "PIL")

_RUN = r"""
import json, sys
from ilm.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted({m.split(".")[0] if m.split(".")[0] != "sqlalchemy" else m for m in sys.modules} & set(NOT))
    sys.stderr.write("\nIMPORTED " + json.dumps(heavy) + "\n")
"""


def _run_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    code = f"NOT = {list(NOT_FOR_A_PLAN)!r}\n" + _RUN
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=REPO)
    line = [x for x in proc.stderr.splitlines() if x.startswith("IMPORTED ")]
    assert line, proc.stderr[-2000:]
    return proc, json.loads(line[-1].removeprefix("IMPORTED "))


def test_plan_imports_neither_dicom_nor_web_nor_alembic(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home, f"sqlite:///{home / 'catalog.sqlite'}")
    Catalog.open(f"sqlite:///{home / 'catalog.sqlite'}").close()  # migrated here, so the plan finds it current
    proc, heavy = _run_cli("plan", "--home", str(home), "--policy", str(REPO / "policies" / "us-mqsa-texas.yaml"),
                           "--as-of", "2026-06-30", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["plan_id"]
    assert heavy == [], f"ilm plan imported {heavy}"


def test_head_is_alembics_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert _head() == ScriptDirectory.from_config(cfg).get_current_head()


def test_a_catalog_behind_is_still_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    engine = create_catalog_engine(url)
    try:
        migrate(engine, "0014")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0014"
        migrate(engine)  # not at the head: Alembic runs
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == _head()
    finally:
        engine.dispose()
