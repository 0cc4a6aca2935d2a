"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

Routes (GET, answers ``application/dicom+json``):

    /dicomweb/studies                                       studies
    /dicomweb/studies/{study}/series                        series of a study
    /dicomweb/studies/{study}/series/{series}/instances     instances of a series
    /dicomweb/studies/{study}/instances                     instances of a study
    /dicomweb/series                                        series of any study
    /dicomweb/instances                                     instances of any study

Query parameters:

    {attribute}={value}   matching, attribute by keyword (PatientID) or tag (00100020);
                          the value as in C-FIND: single, wildcard (* ?), range
                          (20200101-20201231, -20201231, 20200101-), list (a\\b; UIDs
                          also a,b); a parameter given twice is a list
    includefield=...      keyword or tag, comma-separated or repeated; "all" for every
                          attribute ilm keeps at that level
    limit, offset         paging, run in the database
    fuzzymatching         accepted; ilm matches names case-insensitively but not
                          fuzzily, and says so in a Warning header
    accept                the media type, as the Accept header

Answers: 200 with a JSON array of DICOM JSON objects (each attribute with its
vr); 204 No Content with an empty body when nothing matches (PS3.18 8.3.4.4.1
as published; CP-2473 proposes 200 with an empty array, and clients such as
dicomweb-client read both as no result); 400 for a parameter that is not a
keyword, tag or QIDO parameter, a malformed value, or an attribute of a lower
level than the query's (e.g. Modality on /studies: use ModalitiesInStudy);
406 when the client accepts no JSON; 503 when the catalog fails. A DICOM
attribute ilm does not keep is ignored for matching and named in a
``Warning: 299`` header, as PS3.18 asks.

Every result carries the UIDs of its level and the levels above, its
Retrieve URL (0008,1190) and Specific Character Set ISO_IR 192 (JSON is
UTF-8). A query is not an access: no last access, no access log.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from ilm.atna.messages import QueryAudit
from ilm.errors import CatalogError, InvalidQuery
from ilm.service import ArchiveService
from ilm.web.auth import principal, require

__all__ = ["qido_router", "MAX_RESULTS", "DEFAULT_FIELDS"]

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
MAX_RESULTS = 10_000  # per request, when the client asks for more (or sets no limit)

# PS3.18 Table 10.6.3-3, -4 and -5 (less what ilm does not keep: Timezone
# Offset, Performed Procedure Step dates, Rows/Columns ...), plus descriptions.
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "STUDY": ("StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
              "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
              "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
              "StudyDescription"),
    "SERIES": ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
               "NumberOfSeriesRelatedInstances", "BodyPartExamined"),
    "IMAGE": ("SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber"),
}
_UIDS = {"STUDY": ("StudyInstanceUID",), "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
         "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
_RESERVED = {"limit", "offset", "includefield", "fuzzymatching", "accept", "charset"}
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_JSON_TYPES = {"application/dicom+json", "application/json", "application/*", "*/*"}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _keyword(name: str, what: str) -> str:
    """A keyword from a keyword or an 8-digit tag; 400 for anything else."""
    if _TAG.fullmatch(name):
        kw = keyword_for_tag(int(name, 16))
        if not kw:
            raise _BadRequest(400, f"{what} {name!r}: no DICOM attribute has that tag")
        return kw
    if "." in name and all(_TAG.fullmatch(p) or tag_for_keyword(p) is not None for p in name.split(".")):
        return name  # a sequence path: a DICOM attribute, not one ilm can match on
    if tag_for_keyword(name) is None:
        raise _BadRequest(400, f"{what} {name!r} is not a DICOM keyword, an 8-digit tag or a QIDO-RS parameter "
                               f"(limit, offset, includefield, fuzzymatching)")
    return name


def _non_negative(name: str, values: list[str]) -> int | None:
    if not values:
        return None
    if len(values) > 1:
        raise _BadRequest(400, f"{name} is given {len(values)} times")
    text = values[0].strip()
    if not text.isdigit():
        raise _BadRequest(400, f"{name} must be a non-negative integer, not {values[0]!r}")
    return int(text)


def _accepts_json(accept: str) -> bool:
    if not accept.strip():
        return True
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(types & _JSON_TYPES)


def _dicom_json(row: dict[str, Any], fields: list[str], retrieve_url: str) -> dict[str, Any]:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for kw in fields:
        if kw not in row:
            continue
        value = row[kw]
        if value is None or value == "" or value == []:
            value = None
        elif isinstance(value, list) and len(value) == 1:
            value = value[0]
        tag = tag_for_keyword(kw)
        if tag is not None:
            ds.add_new(tag, dictionary_VR(tag), value)
    ds.RetrieveURL = retrieve_url
    return ds.to_json_dict()


class _Search:
    """One QIDO-RS request: parameters read and checked, then one service call."""

    def __init__(self, service: ArchiveService, max_results: int) -> None:
        self.service = service
        self.max_results = max_results
        self.known = service.query_attributes()

    def __call__(self, request: Request, level: str, path: dict[str, str]) -> Response:
        try:
            return self._search(request, level, path)
        except _BadRequest as exc:
            log.info("QIDO-RS %s refused: %d %s", request.url.path, exc.status, exc.message)
            return JSONResponse({"detail": exc.message}, status_code=exc.status)
        except InvalidQuery as exc:
            log.info("QIDO-RS %s refused: %s", request.url.path, exc)
            return JSONResponse({"detail": str(exc)}, status_code=400)
        except CatalogError as exc:
            log.warning("QIDO-RS %s failed: %s", request.url.path, exc)
            return JSONResponse({"detail": str(exc)}, status_code=503)

    def _search(self, request: Request, level: str, path: dict[str, str]) -> Response:
        params: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            params.setdefault(name, []).append(value)
        accept = ",".join(params.pop("accept", [])) or request.headers.get("accept", "")
        if not _accepts_json(accept):
            raise _BadRequest(406, f"only {DICOM_JSON} is offered, not {accept!r}")
        limit = _non_negative("limit", params.pop("limit", []))
        offset = _non_negative("offset", params.pop("offset", [])) or 0
        fuzzy = [v.strip().lower() for v in params.pop("fuzzymatching", [])]
        if any(v not in ("true", "false") for v in fuzzy):
            raise _BadRequest(400, "fuzzymatching must be true or false")
        params.pop("charset", None)
        includes = [f.strip() for v in params.pop("includefield", []) for f in v.split(",") if f.strip()]

        warnings: list[str] = []
        filters: dict[str, str] = dict(path)
        ignored: list[str] = []
        for name, values in params.items():
            kw = _keyword(name, "query parameter")
            if kw not in self.known:
                if any(v.strip() for v in values):
                    ignored.append(name)
                continue
            if kw in path:
                raise _BadRequest(400, f"{kw} is already given in the path")
            filters[kw] = "\\".join(values)
        if ignored:
            warnings.append("The following attributes are not supported as matching keys and were ignored: "
                            + ", ".join(ignored))
        if "true" in fuzzy:
            warnings.append("The fuzzymatching parameter is not supported. Only literal matching has been performed.")

        fields: list[str] | None
        if any(f.lower() == "all" for f in includes):
            fields = None
        else:
            # the defaults of the level, and of the levels above that the path does not fix
            fields = []
            if level != "STUDY" and "StudyInstanceUID" not in path:
                fields += DEFAULT_FIELDS["STUDY"]
            if level == "IMAGE" and "SeriesInstanceUID" not in path:
                fields += DEFAULT_FIELDS["SERIES"]
            fields += DEFAULT_FIELDS[level]
            fields += [kw for kw in filters if kw not in fields]  # matching keys are returned
            for f in includes:
                kw = _keyword(f, "includefield")
                if kw not in fields:
                    fields.append(kw)
            fields += [u for u in _UIDS[level] if u not in fields]

        asked = self.max_results if limit is None else min(limit, self.max_results)
        client = request.client.host if request.client else ""
        caller = principal(request)  # the API token's name when auth is on, else the client's address
        audit = QueryAudit(caller.who if caller.token_id is not None else client or "unknown", client,
                           query=f"{request.url.path}?{request.url.query}".encode())
        rows = self.service.query(level, filters, fields=fields, limit=asked + 1, offset=offset, audit=audit)
        if len(rows) > asked:
            rows = rows[:asked]
            if limit is None or limit > self.max_results:
                warnings.append("The number of results exceeded the maximum supported by the server. "
                                "Additional results can be requested.")
        headers = {"Warning": ", ".join(f'299 ilm "{w}"' for w in warnings)} if warnings else {}
        if not rows:
            return Response(status_code=204, headers=headers)
        base = str(request.base_url).rstrip("/") + "/dicomweb"
        out_fields = fields if fields is not None else sorted(
            {k for r in rows for k in r}, key=lambda k: tag_for_keyword(k) or 0)
        body = [_dicom_json(r, out_fields, _retrieve_url(base, level, r)) for r in rows]
        return JSONResponse(body, media_type=DICOM_JSON, headers=headers)


def _retrieve_url(base: str, level: str, row: dict[str, Any]) -> str:
    url = f"{base}/studies/{row['StudyInstanceUID']}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{row['SeriesInstanceUID']}"
    if level == "IMAGE":
        url += f"/instances/{row['SOPInstanceUID']}"
    return url


def qido_router(service: ArchiveService, *, max_results: int = MAX_RESULTS) -> APIRouter:
    """The QIDO-RS routes over ``service`` (at most ``max_results`` results per request)."""
    router = APIRouter(dependencies=[require("viewer")])
    search = _Search(service, max_results)

    # Plain (not async) functions: FastAPI runs them in its threadpool, off the event loop.
    @router.get("/dicomweb/studies")
    def search_studies(request: Request) -> Response:
        """QIDO-RS: search for studies."""
        return search(request, "STUDY", {})

    @router.get("/dicomweb/series")
    def search_all_series(request: Request) -> Response:
        """QIDO-RS: search for series of any study."""
        return search(request, "SERIES", {})

    @router.get("/dicomweb/instances")
    def search_all_instances(request: Request) -> Response:
        """QIDO-RS: search for instances of any study."""
        return search(request, "IMAGE", {})

    @router.get("/dicomweb/studies/{study}/series")
    def search_study_series(study: str, request: Request) -> Response:
        """QIDO-RS: search for the series of one study."""
        return search(request, "SERIES", {"StudyInstanceUID": study})

    @router.get("/dicomweb/studies/{study}/instances")
    def search_study_instances(study: str, request: Request) -> Response:
        """QIDO-RS: search for the instances of one study."""
        return search(request, "IMAGE", {"StudyInstanceUID": study})

    @router.get("/dicomweb/studies/{study}/series/{series}/instances")
    def search_series_instances(study: str, series: str, request: Request) -> Response:
        """QIDO-RS: search for the instances of one series."""
        return search(request, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    return router
