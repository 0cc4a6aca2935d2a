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
from ilm.cli.watermark import start_watermark_checks
from ilm.config import DicomSettings, HttpSettings
from ilm.errors import ConfigError, IlmError
from ilm.history import DailySnapshots
from ilm.security.tls import https_options
from ilm.service import ArchiveService


def _override(model: DicomSettings | HttpSettings, what: str, **changes: object) -> DicomSettings | HttpSettings:
    """Settings with the command-line values applied, validated like the config file."""
    values = model.model_dump()
    values.update({k: v for k, v in changes.items() if v is not None})
    try:
        return type(model)(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])  # empty for a check of several keys (auth and host)
        fail(f"{what}: {where + ': ' if where else ''}{err['msg']}", 2)


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
        try:
            encrypted = service.check_encryption()  # no usable master key: refuse to start (docs/security.md)
        except IlmError as exc:
            fail(str(exc), 2)
        if encrypted:
            console.print(f"encryption: envelope on tier(s) {', '.join(encrypted)}", highlight=False)
        recovered = service.recover()  # finish or undo moves a crash interrupted, before serving
        if recovered.rolled_back or recovered.finished or recovered.problems:
            console.print(f"recovered interrupted moves: {recovered.finished} finished, {recovered.rolled_back} rolled back",
                          highlight=False)
            for p in recovered.problems:
                logging.getLogger("ilm").warning("recovery: %s", p)
        scheduler = _start_scheduler(service, stop)
        restorer = _start_restore_worker(service, stop)
        watermarks = start_watermark_checks(service, stop)  # capacity watermarks (docs/tiers.md)
        history = DailySnapshots(service.snapshot_tiers, stop).start()  # storage by tier over time (docs/cost.md)
        service.promotions.start()  # access-based tiering: promotion on read, prefetch of priors (docs/tiers.md)
        # The dashboard's figures, counted now in the background so that its first visitor does not wait.
        threading.Thread(target=_warm_overview, args=(service,), name="ilm-overview-warmup", daemon=True).start()
        if service.promotions.active:
            console.print(f"tiering: promoting studies on read/prefetch, at most {service.promotions.per_minute}/min",
                          highlight=False)
        if service.scrub.start():  # fixity: re-check every copy at a bounded rate (docs/security.md)
            fx = service.settings.fixity
            console.print(f"fixity: scrubbing at {fx.scrub_mb_per_s:g} MB/s, each copy every {fx.scrub_interval_days} days",
                          highlight=False)
        dicom = _override(service.settings.dicom, "DICOM settings", port=dicom_port, ae_title=ae_title, host=host)
        http = _override(service.settings.http, "HTTP settings", port=http_port, host=host)
        assert isinstance(dicom, DicomSettings) and isinstance(http, HttpSettings)
        try:
            https = https_options(http.tls_cert, http.tls_key, service.settings.resolve)  # HTTPS files, checked
            scp = start_dicom_server(service, dicom)
        except ConfigError as exc:  # certificate or key files (docs/security.md)
            fail(str(exc), 2)
        except OSError as exc:
            fail(f"cannot listen for DICOM on {dicom.host}:{dicom.port}: {exc.strerror or exc}", 2)
        service.atna.application(started=True, launcher=_launcher(), ae_title=scp.ae_title)  # audit: Application Start
        try:
            console.print(f"DICOM   AE {scp.ae_title} on {scp.host}:{scp.port}{' over TLS' if dicom.tls_cert else ''} (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE, Storage Commitment)", highlight=False)
            console.print(f"DICOMweb {'https' if https else 'http'}://{http.host}:{http.port}/dicomweb (STOW-RS, QIDO-RS, WADO-RS); restores at /api/restores; health at /health", highlight=False)
            console.print(f"REST API {'https' if https else 'http'}://{http.host}:{http.port}/api (described at /docs); "
                          "metrics at /metrics; readiness at /health/ready", highlight=False)
            console.print(f"archive {service.settings.home}; stop with Ctrl-C or SIGTERM", highlight=False)
            if not stop.is_set():
                config = uvicorn.Config(
                    create_app(service), host=http.host, port=http.port, log_level=log_level.lower(),
                    lifespan="off", access_log=level <= logging.DEBUG, timeout_graceful_shutdown=10,
                    ssl_certfile=https.get("ssl_certfile"), ssl_keyfile=https.get("ssl_keyfile"),
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
            stop.set()
            scp.shutdown()
            service.atna.application(started=False, launcher=_launcher())  # audit: Application Stop
            if scheduler is not None:
                scheduler.join(timeout=30)
            if restorer is not None:
                restorer.join(timeout=30)
            if watermarks is not None:
                watermarks.join(timeout=30)
            history.join(timeout=30)
    console.print("stopped", highlight=False)


def _warm_overview(service: ArchiveService) -> None:
    try:
        service.overview()
    except Exception as exc:  # the first dashboard visitor counts them instead
        logging.getLogger("ilm.overview").warning("dashboard figures not counted at start: %s", exc)


def _launcher() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return ""


def _start_scheduler(service: "ArchiveService", stop: threading.Event) -> threading.Thread | None:
    """Plan lifecycle.schedule_policy now and every schedule_interval_minutes."""
    lc = service.settings.lifecycle
    if not lc.schedule_policy:
        return None
    log = logging.getLogger("ilm.scheduler")

    def loop() -> None:
        while not stop.is_set():
            try:
                plan, report = service.scheduled_run()
                if report is None:
                    log.info("planned %s from %s; waiting for approval (ilm apply %s)", plan.id, lc.schedule_policy, plan.id)
                else:
                    log.info("applied %s automatically: %d done, %d skipped, %d failed", plan.id, report.done,
                             len(report.skipped), len(report.failed))
            except Exception as exc:  # a bad policy file must not stop the archive
                log.error("scheduled policy %s failed: %s", lc.schedule_policy, exc)
            stop.wait(lc.schedule_interval_minutes * 60)

    t = threading.Thread(target=loop, name="ilm-scheduler", daemon=True)
    t.start()
    console.print(f"lifecycle: planning {lc.schedule_policy} every {lc.schedule_interval_minutes} min", highlight=False)
    return t


# How often the restore worker copies due restores and drops expired restored copies.
RESTORE_INTERVAL_SECONDS = 1.0


def _start_restore_worker(service: "ArchiveService", stop: threading.Event,
                          interval: float = RESTORE_INTERVAL_SECONDS) -> threading.Thread | None:
    """Run service.process_restores every ``interval`` seconds while an archive tier is configured."""
    if not any(t.archive for t in service.settings.tiers.values()):
        return None
    log = logging.getLogger("ilm.restore")

    def loop() -> None:
        while not stop.is_set():
            try:
                r = service.process_restores()
                for uid in r.completed:
                    log.info("restored study %s", uid)
                for uid, why in r.failed:
                    log.error("restore of study %s failed: %s", uid, why)
                if r.dropped:
                    log.info("dropped %d expired restored copies", r.dropped)
                for p in r.problems:
                    log.warning("restore: %s", p)
            except Exception as exc:  # a catalog hiccup must not stop the archive
                log.error("restore worker: %s", exc)
            stop.wait(interval)

    t = threading.Thread(target=loop, name="ilm-restore", daemon=True)
    t.start()
    return t
