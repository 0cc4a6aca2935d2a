"""The ``ilm`` command line: a thin Typer front-end over ArchiveService.

Each command group lives in its own module of this package and registers
itself on ``app`` when imported; every module here is imported at start.
Exit codes: 0 success, 1 the work ran but something failed (rejected files),
2 bad configuration or usage.
"""

from __future__ import annotations

import importlib
import pkgutil

from ilm.cli.app import app

__all__ = ["app", "main"]

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod != "app":
        importlib.import_module(f"{__name__}.{_mod}")


def main() -> None:
    app()
