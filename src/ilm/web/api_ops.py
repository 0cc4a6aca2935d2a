"""Operations: Prometheus metrics and readiness for load balancers (docs/api.md).

    GET /metrics        Prometheus text format (ilm.metrics lists every metric)      viewer
    GET /health/ready   200 {"status": "ready"} when the catalog and every tier answer;
                        503 {"status": "not ready", "problems": {part: why}}          public

``/health`` (liveness: the process answers) is in ``ilm.web.app``. Readiness
is public like liveness, since load balancers probe without credentials; it
says which part fails but nothing about the archive's content. Metrics need
the viewer role: a Prometheus scrape job sends a viewer token
(``authorization: {credentials_file: ...}``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ilm.metrics import CONTENT_TYPE
from ilm.web.api_common import service_of
from ilm.web.auth import require

__all__ = ["router"]

router = APIRouter(tags=["operations"])


class Readiness(BaseModel):
    status: str
    checked: list[str]
    problems: dict[str, str] = {}


@router.get("/metrics", dependencies=[require("viewer")], response_class=Response,
            responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {}}, "description": "Prometheus text format."}})
async def metrics(request: Request) -> Response:
    """Studies and bytes per tier, moves, bytes moved, restores pending, ingest, policy run durations."""
    body = await run_in_threadpool(service_of(request).metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/health/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(request: Request) -> JSONResponse:
    """Ready for traffic: the catalog answers a query and every tier can be reached (503 names what fails)."""
    r = await run_in_threadpool(service_of(request).ready)
    body = Readiness(status="ready" if r.ready else "not ready", checked=list(r.checked), problems=r.problems)
    return JSONResponse(body.model_dump(), status_code=200 if r.ready else 503)
