"""REST API: export of a study as a ZIP file (``ilm export``; docs/security.md 'Export'). Role: operator.

    GET /api/studies/{study_uid}/export[?dicomdir=true]   application/zip of the study's files

The same service call as ``ilm export``: the files are the stored bytes, laid out
as STUDY/SERIES/SOP.dcm, or with ``dicomdir=true`` as a DICOM file-set with its
DICOMDIR. The export counts as an access (interface "export"), is written to
the audit trail (``study.export``) and sent as a DICOM Export audit message.

Operator, not viewer: a viewer reads images inside the archive's own interfaces
(WADO-RS, C-GET); an export takes a complete copy outside of it.

    404  no such study (or expired)        503  on an archive tier and not restored (ilm recall),
                                                 or a tier cannot be read now
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from ilm.web.api_common import ERRORS, ApiRoute, UidPath, actor, service_of
from ilm.web.auth import principal, require

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["studies"], route_class=ApiRoute, responses=ERRORS,
                   dependencies=[require("operator")])


@router.get("/studies/{study_uid}/export", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}}, "description": "The study's files as a ZIP."}})
def export_study(request: Request, study_uid: str = UidPath,
                 dicomdir: bool = Query(False, description="Lay the files out as a DICOM file-set with a DICOMDIR.")
                 ) -> Any:
    """The study's instances as stored, in a ZIP file; counted as an access and audited."""
    service = service_of(request)
    folder = service.settings.home / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="export-", dir=folder))
    client = request.client.host if request.client else "?"
    caller = principal(request)  # named by its API token, with its address (as WADO-RS readers are)
    who, address = (caller.who, client) if caller.token_id is not None else (client, "")
    try:
        out = work / f"{study_uid}.zip"
        service.export([study_uid], out, dicomdir=dicomdir, as_zip=True, by=actor(request), who=who,
                       address=address, interface="rest", described_as=f"ZIP over HTTP to {client}")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return FileResponse(out, media_type="application/zip", filename=out.name,
                        background=BackgroundTask(shutil.rmtree, work, ignore_errors=True))
