"""The HTTP front-end: a FastAPI app over ArchiveService.

Routes:

    GET  /health                          {"status": "ok"}
    POST /dicomweb/studies                STOW-RS: store instances
    POST /dicomweb/studies/{study}        STOW-RS: store instances of that study only
    POST /api/restores, GET /api/restores restores from archive tiers (ilm.web.restore)
    GET  /dicomweb/studies/{study}[/series/{series}[/instances/{sop}]][/metadata]  WADO-RS (ilm.web.wado)
    GET  /dicomweb/studies, /series, /instances (and under a study or series)  QIDO-RS (ilm.web.qido)
    /api/...                              the REST API: one router per area in ilm.web.api_* (docs/api.md)
    GET  /metrics, /health/ready          Prometheus metrics, readiness (ilm.web.api_ops)

Access control (ilm.web.auth, docs/security.md): EVERY route declares the
role it needs, with a dependency on the route or on its router:

    router = APIRouter(prefix="/api/things", dependencies=[require("viewer")])
    @router.post("/{id}/approve", dependencies=[require("approver")])

Roles, each including the ones before it: viewer (query, read), operator
(store, plans, holds), approver (apply, purge, restore), admin (config, keys,
tokens). Only the paths in ``ilm.web.auth.PUBLIC`` (/health and the API
description) go without; tests/test_auth.py fails for any other route that
declares no role. Auth is on unless ``[http] auth = false`` (loopback only)
or ``create_app(service, auth=False)``; tests of a route's behaviour use the
latter, tests of who may call it give tokens.

Roles here: STOW-RS operator; QIDO-RS, WADO-RS and GET /api/restores viewer;
POST /api/restores approver.

Thin: a handler reads the request, calls the service and writes the answer;
the protocol details live in ``ilm.web.stow``. The body is read and split
as it streams in (bounded by ``http.max_request_bytes``); the blocking
ingest runs in the threadpool, never on the event loop.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ilm.models import IngestResult, IngestStatus
from ilm.service import INGEST_GROUP_BYTES, INGEST_GROUP_FILES, ArchiveService
from ilm.web.auth import require
from ilm.web.body_limit import ApiBodyLimit
from ilm.web import api_admin, api_analytics, api_audit, api_fixity, api_ops, api_plans, api_retention, api_studies, api_tiers
from ilm.web import api_export
from ilm.web.dashboard import install as install_dashboard
from ilm.web.restore import router as restore_router
from ilm.web.wado import router as wado_router
from ilm.web.qido import qido_router
from ilm.web.stow import (
    DICOM_JSON,
    MultipartCollector,
    StowError,
    StowPart,
    http_status,
    multipart_boundary,
    part_media_type_ok,
    store_response,
)

__all__ = ["create_app"]

log = logging.getLogger(__name__)


class DicomJSONResponse(JSONResponse):
    media_type = DICOM_JSON


def _ingest_parts(service: ArchiveService, parts: list[StowPart], study_uid: str | None, source: str) -> list[IngestResult]:
    results: list[IngestResult] = []
    client = source.removeprefix("stow-rs:")
    with service.import_batch(client, client) or nullcontext() as batch:  # audit: one Import message per study
        group: list[StowPart] = []

        def flush() -> None:
            results.extend(service.ingest_many([(p.read(), f"{source} part {p.index + 1}") for p in group],
                                               study_uid=study_uid, batch=batch))
            for p in group:
                p.close()  # free its memory before the next group is read
            group.clear()

        for part in parts:
            if not part_media_type_ok(part.content_type):
                flush()  # results stay in the order of the parts
                results.append(IngestResult(
                    IngestStatus.REJECTED, f"{source} part {part.index + 1}", size=part.size,
                    reason=f"part Content-Type {part.content_type!r} is not application/dicom",
                ))
                continue
            # stored in groups (one catalog transaction each, their files written in parallel)
            if group and (len(group) >= INGEST_GROUP_FILES
                          or sum(p.size for p in group) + part.size > INGEST_GROUP_BYTES):
                flush()
            group.append(part)
        flush()
    return results


def create_app(service: ArchiveService, *, max_request_bytes: int | None = None, auth: bool | None = None) -> FastAPI:
    """The ilm HTTP app bound to ``service`` (body limit and ``auth`` from its settings unless given)."""
    limit = max_request_bytes or service.settings.http.max_request_bytes
    app = FastAPI(title="ilm", summary="Image lifecycle management: DICOMweb front-end", docs_url="/docs")
    app.state.service = service
    app.state.auth = service.settings.http.auth if auth is None else auth

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    async def stow(request: Request, study_uid: str | None) -> Response:
        client = request.client.host if request.client else "?"
        source = f"stow-rs:{client}"
        collector: MultipartCollector | None = None
        try:
            boundary = multipart_boundary(request.headers.get("content-type"))
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise StowError(413, f"request body of {declared} bytes over the limit of {limit} bytes")
            collector = MultipartCollector(boundary, limit)
            async for chunk in request.stream():
                collector.write(chunk)
            parts = collector.finish()
            results = await run_in_threadpool(_ingest_parts, service, parts, study_uid, source)
        except StowError as exc:
            log.info("STOW-RS from %s refused: %d %s", client, exc.status_code, exc.message)
            return JSONResponse({"detail": exc.message}, status_code=exc.status_code)
        except ClientDisconnect:
            log.info("STOW-RS from %s: client went away before the body was complete; nothing stored", client)
            return Response(status_code=400)
        finally:
            if collector is not None:
                collector.close()
        for r in results:
            if r.status not in (IngestStatus.STORED, IngestStatus.DUPLICATE):
                log.warning("STOW-RS %s: %s %s: %s", r.source, r.status.value, r.sop_instance_uid or "?", r.reason)
        base = str(request.base_url).rstrip("/") + "/dicomweb"
        body: Any = store_response(results, base, study_uid)
        return DicomJSONResponse(body, status_code=http_status(results, study_uid))

    @app.post("/dicomweb/studies", dependencies=[require("operator")])
    async def stow_studies(request: Request) -> Response:
        """STOW-RS: store the instances of a multipart/related; type="application/dicom" body."""
        return await stow(request, None)

    @app.post("/dicomweb/studies/{study}", dependencies=[require("operator")])
    async def stow_study(study: str, request: Request) -> Response:
        """STOW-RS to one study: instances of any other study are refused."""
        return await stow(request, study)

    app.include_router(restore_router)
    app.include_router(wado_router)
    app.include_router(qido_router(service))
    app.include_router(api_studies.router)
    app.include_router(api_plans.router)
    app.include_router(api_retention.router)
    app.include_router(api_audit.router)
    app.include_router(api_tiers.router)
    app.include_router(api_admin.router)
    app.include_router(api_ops.router)
    app.include_router(api_analytics.router)
    app.include_router(api_fixity.router)
    app.include_router(api_export.router)  # GET /api/studies/{uid}/export (operator)
    app.add_middleware(ApiBodyLimit)  # bodies under /api/ are bounded before auth reads them (ilm.web.body_limit)
    install_dashboard(app)  # the web dashboard at / (ilm.web.dashboard)
    return app
