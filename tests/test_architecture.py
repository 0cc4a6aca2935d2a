"""Import rules from DESIGN.md, checked by reading the source."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import ilm

SRC = Path(ilm.__file__).parent


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def _modules(sub: str = "") -> list[Path]:
    return sorted((SRC / sub).rglob("*.py"))


def _rel(p: Path) -> str:
    return p.relative_to(SRC).as_posix()


def test_only_catalog_talks_sql() -> None:
    for p in _modules():
        if _rel(p).startswith("catalog/"):
            continue
        bad = {m for m in _imports(p) if m.split(".")[0] in ("sqlalchemy", "psycopg", "sqlite3", "alembic")}
        # the service catches SQLAlchemy's exceptions, it runs no SQL
        if _rel(p) == "service.py":
            bad -= {"sqlalchemy.exc"}
        assert not bad, f"{_rel(p)} imports {bad}"


def test_only_s3_backend_imports_boto() -> None:
    for p in _modules():
        if _rel(p) == "storage/s3.py":
            continue
        bad = {m for m in _imports(p) if m.split(".")[0] in ("boto3", "botocore")}
        assert not bad, f"{_rel(p)} imports {bad}"


def test_front_ends_do_not_reach_catalog_or_storage_internals() -> None:
    front = [p for p in _modules() if _rel(p).startswith(("cli/", "web/")) or _rel(p) == "dicom/server.py"]
    for p in front:
        bad = {m for m in _imports(p) if m.startswith(("ilm.catalog", "ilm.storage.s3", "sqlalchemy", "boto3"))}
        assert not bad, f"{_rel(p)} imports {bad}"


def test_pure_packages_do_no_io() -> None:
    for sub in ("policy", "cost"):
        for p in _modules(sub) if (SRC / sub).exists() else []:
            bad = {
                m for m in _imports(p)
                if m.split(".")[0] in ("sqlalchemy", "boto3", "botocore", "socket", "subprocess", "requests", "httpx", "pynetdicom")
                or m.startswith(("ilm.catalog", "ilm.storage", "ilm.service", "ilm.web", "ilm.dicom.server"))
            }
            assert not bad, f"{_rel(p)} imports {bad}"


def test_public_modules_declare_all() -> None:
    missing = []
    for info in pkgutil.walk_packages(ilm.__path__, "ilm."):
        if ".migrations" in info.name or info.name.endswith("__main__") or info.name.startswith("ilm.cli."):
            continue
        mod = importlib.import_module(info.name)
        if not info.ispkg and not hasattr(mod, "__all__"):
            missing.append(info.name)
    assert not missing, f"modules without __all__: {missing}"
