"""The Typer application and helpers shared by every command module."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from ilm.config import Settings, load_settings
from ilm.errors import ConfigError, IlmError
from ilm.service import ArchiveService

__all__ = ["app", "console", "err_console", "fail", "open_service", "settings_from", "print_json", "HomeOption"]

app = typer.Typer(
    name="ilm",
    help="Image lifecycle management for DICOM archives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

HomeOption = typer.Option(None, "--home", envvar="ILM_HOME", help="The archive's home folder (default ./ilm-demo).")


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_from(home: Path | None) -> Settings:
    try:
        return load_settings(home=home)
    except ConfigError as exc:
        fail(str(exc), 2)


@contextmanager
def open_service(home: Path | None) -> Iterator[ArchiveService]:
    settings = settings_from(home)
    try:
        service = ArchiveService.open(settings)
    except IlmError as exc:
        fail(str(exc), 2)
    try:
        yield service
    finally:
        service.close()


def _default(o: Any) -> Any:
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if isinstance(o, Enum):
        return o.value
    if is_dataclass(o) and not isinstance(o, type):
        return asdict(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_json(value: Any) -> None:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    elif isinstance(value, list):
        value = [asdict(v) if is_dataclass(v) and not isinstance(v, type) else v for v in value]
    sys.stdout.write(json.dumps(value, default=_default, indent=2) + "\n")
