"""DICOMweb WADO-RS: retrieve studies, series and instances, and their metadata.

    GET /dicomweb/studies/{study}                                   multipart/related; type="application/dicom"
    GET /dicomweb/studies/{study}/series/{series}                   (the same)
    GET /dicomweb/studies/{study}/series/{series}/instances/{sop}   (the same, one part)
    GET .../metadata  (study, series or instance)                   application/dicom+json
    GET /dicomweb/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}
                                                                    multipart/related; type="application/octet-stream"

Instances are sent exactly as stored (the Part 10 file, from its hottest
verified copy, whatever the tier), one part each with
``Content-Type: application/dicom; transfer-syntax=<stored syntax>``, streamed
as they are read (reads run a few instances ahead). ilm never transcodes: an
Accept without a transfer-syntax parameter, or with ``transfer-syntax=*``,
gets the stored encoding; an Accept that lists syntaxes and not the stored
one of every instance asked for gets 406.

Metadata is the DICOM JSON of every attribute; binary values (OB, OW, OD,
OF, OL, OV, UN) longer than 1 KB at the top level are given as a BulkDataURI
to the bulkdata route above, smaller ones inline.

Access: a retrieval of instances or bulk data records one access of the study
(``note_access(study, "wado-rs", client address)``); a metadata request does
not, as S3 does not count a HEAD: a viewer lists a study's headers to decide
what to open, and the pixel data it then fetches is what counts.

Errors: 404 no such study/series/instance (active studies only); 406 an
Accept we cannot satisfy; 503 with Retry-After (seconds) when the study is on
an archive tier (the body says whether a restore is under way and when it
should be done, or that one must be requested); 503 with the reason when the
tier holding it cannot be read. A tier that fails in the middle of a stream
ends the response without its closing boundary (logged): the client sees a
truncated message, never a short one that looks complete.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections import deque
from collections.abc import AsyncIterator
from io import BytesIO
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom import dcmread
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool

from ilm.errors import IlmError, NotReady, StorageError
from ilm.readahead import read_ahead
from ilm.service import ArchiveService
from ilm.web.auth import principal, require

__all__ = ["router", "acceptable_syntaxes", "NotAcceptable", "dataset_json"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["wado-rs"], dependencies=[require("viewer")])

DICOM_JSON = "application/dicom+json"
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024
READ_AHEAD = 4
MAX_AHEAD_BYTES = 64 * 1024 * 1024


class NotAcceptable(Exception):
    """The Accept header names nothing we can send."""


class _Unavailable(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _split_ranges(accept: str) -> list[tuple[str, dict[str, str]]]:
    """Media ranges of an Accept header: (type, {param: value}), commas inside quotes kept."""
    ranges, cur, quoted = [], "", False
    for ch in accept:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            ranges.append(cur)
            cur = ""
        else:
            cur += ch
    ranges.append(cur)
    out = []
    for r in ranges:
        bits = [b.strip() for b in r.split(";")]
        if not bits[0]:
            continue
        params = {}
        for b in bits[1:]:
            k, _, v = b.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        out.append((bits[0].lower(), params))
    return out


def acceptable_syntaxes(accept: str | None) -> set[str] | None:
    """The transfer syntaxes an Accept header allows for multipart application/dicom:
    None for any; NotAcceptable when no range allows that media type at all."""
    if not accept or not accept.strip():
        return None
    syntaxes: set[str] = set()
    ok = False
    for mt, params in _split_ranges(accept):
        if params.get("q") in ("0", "0.0", "0.00", "0.000"):
            continue
        if mt in ("*/*", "multipart/*"):
            return None
        if mt != "multipart/related" or params.get("type", "application/dicom").lower() not in (
                "application/dicom", "application/*", "*/*"):
            continue
        ok = True
        ts = params.get("transfer-syntax")
        if ts is None or ts == "*":
            return None
        syntaxes.add(ts)
    if not ok:
        raise NotAcceptable(f"Accept {accept!r} allows no multipart/related; type=\"application/dicom\"")
    return syntaxes


def _json_accepted(accept: str | None) -> bool:
    if not accept or not accept.strip():
        return True
    return any(mt in (DICOM_JSON, "application/json", "application/*", "*/*") for mt, _ in _split_ranges(accept))


def _caller(request: Request) -> tuple[str, str]:
    """Who reads, for the access log and the audit: the API token's name (``token:NAME``) and the
    client's address when authentication is on, else the address alone."""
    address = request.client.host if request.client else "?"
    who = principal(request)
    return (who.who, address) if who.token_id is not None else (address, "")


def _service(request: Request) -> ArchiveService:
    service: ArchiveService = request.app.state.service
    return service


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _what(study: str, series: str | None, sop: str | None) -> str:
    return f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"


def _not_ready(service: ArchiveService, refs: list[Any], exc: NotReady) -> Response:
    if exc.retry_after is not None:
        seconds = max(1, math.ceil(exc.retry_after))
        detail = f"{exc} (being restored: retry in about {seconds} s)"
    else:
        # No restore under way: the earliest a retry can succeed is one restore
        # latency after someone requests it (ilm recall, POST /api/restores).
        tiers = {r.tier for r in refs}
        latency = max((service.settings.tiers[t].retrieval_latency_seconds for t in tiers
                       if t in service.settings.tiers), default=0.0)
        seconds = max(1, math.ceil(latency))
        detail = str(exc)
    return _error(503, detail, {"Retry-After": str(seconds)})


def _resolve(service: ArchiveService, study: str, series: str | None, sop: str | None,
             *, readable: bool = True) -> list[Any]:
    """The instances asked for, readable now; raises _Unavailable with the response to send."""
    try:
        refs = service.instances_to_read(study, series, sop)
    except IlmError as exc:
        raise _Unavailable(_error(503, f"catalog unavailable: {exc}")) from None
    if not refs:
        raise _Unavailable(_error(404, f"no {_what(study, series, sop)} in the archive"))
    archive = {n for n, t in service.settings.tiers.items() if t.archive}
    if not readable or not any(r.tier in archive for r in refs):
        return refs  # prepare_read is about archive tiers: a study on none is readable as it is
    try:
        service.prepare_read(study, wait_seconds=0.0)
    except NotReady as exc:
        raise _Unavailable(_not_ready(service, refs, exc)) from None
    except (StorageError, IlmError) as exc:
        raise _Unavailable(_error(503, f"study {study} cannot be read now: {exc}")) from None
    return service.instances_to_read(study, series, sop)  # restored: read the restored copies


def _read(service: ArchiveService, refs: list[Any], ref: Any) -> bytes:
    try:
        return service.read(ref)
    except NotReady as exc:
        raise _Unavailable(_not_ready(service, refs, exc)) from None
    except (StorageError, IlmError) as exc:
        raise _Unavailable(_error(503, f"tier {ref.tier!r} cannot be read now: {exc}")) from None


def _prepare_retrieve(service: ArchiveService, study: str, series: str | None, sop: str | None,
                      syntaxes: set[str] | None, who: tuple[str, str]) -> tuple[list[Any], bytes]:
    refs = _resolve(service, study, series, sop)
    if syntaxes is not None:
        refused = sorted({r.transfer_syntax_uid for r in refs} - syntaxes)
        if refused:
            raise _Unavailable(_error(406, f"stored in transfer syntax {', '.join(refused)}, not in the Accept "
                                           "header; ilm sends instances as stored (ask for transfer-syntax=*)"))
    first = _read(service, refs, refs[0])
    service.note_access(study, "wado-rs", who[0], len(refs), address=who[1])
    return refs, first


def _part_head(boundary: str, ref: Any, size: int) -> bytes:
    return (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={ref.transfer_syntax_uid}\r\n"
            f"Content-Length: {size}\r\n\r\n").encode("ascii")


async def _read_ahead(service: ArchiveService, refs: list[Any]) -> AsyncIterator[tuple[Any, bytes]]:
    """``(ref, bytes)`` in order, with up to READ_AHEAD reads (and MAX_AHEAD_BYTES) in flight
    on the event loop's executor: the loop awaits each read, it never blocks on one."""
    loop = asyncio.get_running_loop()
    pending: deque[tuple[Any, asyncio.Future[bytes]]] = deque()
    in_flight = nxt = 0
    try:
        while nxt < len(refs) or pending:
            while nxt < len(refs) and len(pending) < READ_AHEAD and (
                    not pending or in_flight + int(refs[nxt].size) <= MAX_AHEAD_BYTES):
                pending.append((refs[nxt], loop.run_in_executor(None, service.read, refs[nxt])))
                in_flight += int(refs[nxt].size)
                nxt += 1
            ref, fut = pending.popleft()
            blob = await fut
            in_flight -= int(ref.size)
            yield ref, blob
    finally:
        for _, fut in pending:
            fut.cancel()


async def _multipart(service: ArchiveService, refs: list[Any], first: bytes, boundary: str) -> AsyncIterator[bytes]:
    # Head and body are separate chunks: joining them would copy every instance once more.
    yield _part_head(boundary, refs[0], len(first))
    yield first
    done = 1
    try:
        async for ref, blob in _read_ahead(service, refs[1:]):
            yield b"\r\n" + _part_head(boundary, ref, len(blob))
            yield blob
            done += 1
    except Exception as exc:
        log.warning("WADO-RS of study %s stopped after %d of %d instances: %s", refs[0].study_uid, done, len(refs), exc)
        raise
    yield f"\r\n--{boundary}--\r\n".encode("ascii")


async def _retrieve(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    service = _service(request)
    try:
        syntaxes = acceptable_syntaxes(request.headers.get("accept"))
    except NotAcceptable as exc:
        return _error(406, str(exc))
    try:
        refs, first = await run_in_threadpool(_prepare_retrieve, service, study, series, sop, syntaxes, _caller(request))
    except _Unavailable as exc:
        return exc.response
    boundary = uuid.uuid4().hex
    return StreamingResponse(_multipart(service, refs, first, boundary),
                             media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


# -- metadata -------------------------------------------------------------------


def _vr(elem: Any, ds: Dataset) -> str:
    vr = str(elem.VR)
    if " or " in vr:  # an ambiguous VR of an implicit VR file
        choices = vr.split(" or ")
        return "OW" if "OW" in choices and int(ds.get("BitsAllocated", 16) or 16) > 8 else choices[0]
    return vr


def dataset_json(ds: Dataset, instance_url: str) -> dict[str, Any]:
    """DICOM JSON of a dataset; large top-level binary values as BulkDataURI."""
    out: dict[str, Any] = {}
    for tag in ds.keys():
        try:
            elem = ds[tag]
            vr = _vr(elem, ds)
            key = f"{int(tag):08X}"
            if vr in BULK_VRS and elem.value is not None and len(elem.value) > BULK_THRESHOLD:
                out[key] = {"vr": vr, "BulkDataURI": f"{instance_url}/bulkdata/{key}"}
            else:
                out[key] = elem.to_json_dict(None, 2**62)
        except Exception as exc:  # one malformed attribute must not hide the others
            log.info("metadata: attribute %s left out: %s", tag, exc)
    return out


def _metadata(service: ArchiveService, study: str, series: str | None, sop: str | None, base: str) -> list[dict[str, Any]]:
    refs = _resolve(service, study, series, sop)
    out = []
    try:
        for ref, blob in read_ahead(service.read, refs, window=READ_AHEAD, size=lambda r: int(r.size)):
            url = f"{base}/studies/{ref.study_uid}/series/{ref.series_uid}/instances/{ref.sop_uid}"
            out.append(dataset_json(dcmread(BytesIO(blob)), url))
    except NotReady as exc:
        raise _Unavailable(_not_ready(service, refs, exc)) from None
    except (StorageError, IlmError) as exc:
        raise _Unavailable(_error(503, f"a tier cannot be read now: {exc}")) from None
    return out


class DicomJSONResponse(JSONResponse):
    media_type = DICOM_JSON


async def _metadata_response(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    if not _json_accepted(request.headers.get("accept")):
        return _error(406, f"metadata is sent as {DICOM_JSON}")
    base = str(request.base_url).rstrip("/") + "/dicomweb"
    service = _service(request)
    try:
        body = await run_in_threadpool(_metadata, service, study, series, sop, base)
    except _Unavailable as exc:
        return exc.response
    # Patient data was read: audited (Instances Accessed), though not an access that steers tiering.
    who, address = _caller(request)
    service.atna.retrieved(study, "wado-rs-metadata", who, len(body), address=address)
    return DicomJSONResponse(body)


# -- bulk data --------------------------------------------------------------------


def _bulkdata(service: ArchiveService, study: str, series: str, sop: str, tag: str, who: tuple[str, str]) -> bytes:
    refs = _resolve(service, study, series, sop)
    try:
        t = int(tag, 16)
    except ValueError:
        raise _Unavailable(_error(404, f"{tag!r} is not a tag (8 hex digits)")) from None
    ds = dcmread(BytesIO(_read(service, refs, refs[0])))
    if t not in ds:
        raise _Unavailable(_error(404, f"instance {sop} has no attribute {tag}"))
    value = ds[t].value
    if not isinstance(value, (bytes, bytearray)):
        raise _Unavailable(_error(404, f"attribute {tag} of instance {sop} is not bulk data"))
    service.note_access(study, "wado-rs", who[0], 1, address=who[1])
    return bytes(value)


# -- routes -------------------------------------------------------------------------


@router.get("/studies/{study}")
async def retrieve_study(study: str, request: Request) -> Response:
    """WADO-RS: every instance of a study, as stored."""
    return await _retrieve(request, study)


@router.get("/studies/{study}/metadata")
async def study_metadata(study: str, request: Request) -> Response:
    """WADO-RS: the DICOM JSON of every instance of a study (not counted as an access)."""
    return await _metadata_response(request, study)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(study: str, series: str, request: Request) -> Response:
    """WADO-RS: every instance of a series, as stored."""
    return await _retrieve(request, study, series)


@router.get("/studies/{study}/series/{series}/metadata")
async def series_metadata(study: str, series: str, request: Request) -> Response:
    return await _metadata_response(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}")
async def retrieve_instance(study: str, series: str, sop: str, request: Request) -> Response:
    """WADO-RS: one instance, as stored (a multipart body of one part)."""
    return await _retrieve(request, study, series, sop)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
async def instance_metadata(study: str, series: str, sop: str, request: Request) -> Response:
    return await _metadata_response(request, study, series, sop)


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}")
async def retrieve_bulkdata(study: str, series: str, sop: str, tag: str, request: Request) -> Response:
    """WADO-RS: the value of one top-level binary attribute (a BulkDataURI of the metadata)."""
    try:
        value = await run_in_threadpool(_bulkdata, _service(request), study, series, sop, tag, _caller(request))
    except _Unavailable as exc:
        return exc.response
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(value)}\r\n\r\n"
            ).encode("ascii") + value + f"\r\n--{boundary}--\r\n".encode("ascii")
    return Response(body, media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')
