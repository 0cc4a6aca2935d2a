"""``ilm serve``: the DICOM (C-ECHO, C-STORE) and DICOMweb (STOW-RS) front-ends in one process."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Optional

import typer
from pydantic import ValidationError

from ilm.cli.app import HomeOption, app, console, fail, open_service
from ilm.config import DicomSettings, HttpSettings


def _override(model: DicomSettings | HttpSettings, what: str, **changes: object) -> DicomSettings | HttpSettings:
    """Settings with the command-line values applied, validated like the config file."""
    values = model.model_dump()
    values.update({k: v for k, v in changes.items() if v is not None})
    try:
        return type(model)(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        fail(f"{what}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}", 2)


@app.command()
def serve(
    home: Optional[Path] = HomeOption,
    dicom_port: Optional[int] = typer.Option(None, "--dicom-port", help="DICOM port (default: dicom.port of ilm.toml, 11112)."),
    http_port: Optional[int] = typer.Option(None, "--http-port", help="HTTP port (default: http.port of ilm.toml, 8080)."),
    ae_title: Optional[str] = typer.Option(None, "--ae-title", help="Our AE title (default: dicom.ae_title of ilm.toml, ILM)."),
    host: Optional[str] = typer.Option(None, "--host", help="Bind address of both servers (0.0.0.0: every interface)."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Receive images: DICOM C-ECHO/C-STORE and DICOMweb STOW-RS, until SIGINT or SIGTERM."""
    import uvicorn

    from ilm.dicom.server import start_dicom_server
    from ilm.web import create_app

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level: {log_level!r} is not one of debug, info, warning, error", 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("pynetdicom", "alembic"):  # pynetdicom logs every PDU at INFO, alembic every migration
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))

    # Our own handlers come first, so that uvicorn (which restores and re-raises
    # the signal it caught) ends up here instead of killing the process mid-shutdown.
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    with open_service(home) as service:
        dicom = _override(service.settings.dicom, "DICOM settings", port=dicom_port, ae_title=ae_title, host=host)
        http = _override(service.settings.http, "HTTP settings", port=http_port, host=host)
        assert isinstance(dicom, DicomSettings) and isinstance(http, HttpSettings)
        try:
            scp = start_dicom_server(service, dicom)
        except OSError as exc:
            fail(f"cannot listen for DICOM on {dicom.host}:{dicom.port}: {exc.strerror or exc}", 2)
        try:
            console.print(f"DICOM   AE {scp.ae_title} on {scp.host}:{scp.port} (C-ECHO, C-STORE)", highlight=False)
            console.print(f"DICOMweb http://{http.host}:{http.port}/dicomweb (STOW-RS); health at /health", highlight=False)
            console.print(f"archive {service.settings.home}; stop with Ctrl-C or SIGTERM", highlight=False)
            if not stop.is_set():
                config = uvicorn.Config(
                    create_app(service), host=http.host, port=http.port, log_level=log_level.lower(),
                    lifespan="off", access_log=level <= logging.DEBUG, timeout_graceful_shutdown=10,
                )
                server = uvicorn.Server(config)
                server.run()
                if not server.started and not stop.is_set():
                    fail(f"cannot listen for HTTP on {http.host}:{http.port}", 2)
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            if exc.code:
                fail(f"cannot listen for HTTP on {http.host}:{http.port}", 2)
            raise
        finally:
            scp.shutdown()
    console.print("stopped", highlight=False)
