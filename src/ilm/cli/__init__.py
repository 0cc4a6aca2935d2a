"""The ``ilm`` command line: a thin Typer front-end over ArchiveService.

Each command group lives in its own module and registers itself on ``app``.
Exit codes: 0 success, 1 the work ran but something failed (rejected files),
2 bad configuration or usage.
"""

from __future__ import annotations

from ilm.cli.app import app

from ilm.cli import archive as _archive  # noqa: F401  (registers commands)

__all__ = ["app", "main"]


def main() -> None:
    app()
