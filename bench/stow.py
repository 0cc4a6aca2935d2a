"""STOW-RS ingest against Orthanc's REST ingest, with 1 and 4 concurrent clients.

ilm: ``POST /dicomweb/studies`` with ``multipart/related; type="application/dicom"``
bodies of BATCH instances each. Orthanc: ``POST /instances`` with one file per
request (its REST ingest; its DICOMweb plugin is not part of the Debian
package's default set). Same files, same client code, same number of client
threads, fresh server for every measurement.

The client: stdlib ``http.client`` with one keep-alive connection per thread;
every file is read into memory and every multipart body built before the
clock starts, so the figure is the server's ingest rate (the client shares
the same two cores, equally for both servers). After each run the server is
checked to hold every instance, and every response is checked (HTTP 200, no
FailedSOPSequence from ilm, Status "Success" from Orthanc).
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
import uuid
from typing import Any

from bench import harness as h
from bench.profile import render_profile, start_profiler, stop_profiler, summarize_profile
from bench.report import fmt, median, ratio_cell, spread, table, target_cell

NAME = "stow"
TITLE = "STOW-RS ingest vs Orthanc REST ingest"
BATCH = 20
CONCURRENCY = (1, 4)
SYSTEMS = ("ilm", "orthanc")
TARGET = 1.0


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for blob in files:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        parts.append(blob)
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _check_ilm(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"HTTP {status}: {body[:300]!r}"
    try:
        doc = json.loads(body)
    except ValueError:
        return None  # an XML answer is fine; the count is checked afterwards
    if isinstance(doc, dict) and doc.get("00081198", {}).get("Value"):
        return f"FailedSOPSequence: {json.dumps(doc['00081198'])[:300]}"
    return None


def _check_orthanc(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"HTTP {status}: {body[:300]!r}"
    try:
        doc = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if isinstance(doc, dict) and doc.get("Status") not in ("Success", "AlreadyStored"):
        return f"Status {doc.get('Status')}"
    return None


def post_all(port: int, path: str, requests: list[tuple[bytes, str]], threads: int, timeout: float,
             check: Any, headers: dict[str, str] | None = None) -> tuple[float, list[str]]:
    """POST every (body, content type) with ``threads`` clients; seconds from first send to last answer."""
    work: queue.Queue[tuple[bytes, str]] = queue.Queue()
    for r in requests:
        work.put(r)
    errors: list[str] = []
    start = threading.Barrier(threads + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        start.wait()
        try:
            while True:
                try:
                    body, ctype = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    conn.request("POST", path, body=body, headers={
                        "Content-Type": ctype, "Accept": "application/dicom+json, application/json", **(headers or {})})
                    resp = conn.getresponse()
                    answer = resp.read()
                    err = check(resp.status, answer)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    err = f"{exc.__class__.__name__}: {exc}"
                if err:
                    errors.append(err)
        finally:
            conn.close()

    pool = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    deadline = t0 + timeout
    for t in pool:
        t.join(max(0.0, deadline - time.perf_counter()))
    seconds = time.perf_counter() - t0
    if any(t.is_alive() for t in pool):
        errors.append(f"timed out after {timeout:.0f} s")
    return seconds, errors


def _measure(system: str, threads: int, data: Any, blobs: list[bytes], bodies: list[tuple[bytes, str]],
             timeout: float, profile: str | None = None) -> dict[str, Any]:
    h.settle()
    row: dict[str, Any] = {"system": system, "threads": threads, "load_before": h.loadavg()}
    with h.scratch(f"stow-{system}") as folder:
        srv = None
        try:
            if system == "ilm":
                home = h.make_ilm_home(folder / "home")
                srv = h.start_ilm_serve(home)
                spy = start_profiler(srv.pid, profile) if profile else None
                cpu0 = h.process_cpu_s(srv.pid)
                auth = {"Authorization": f"Bearer {h.ilm_token(home, 'operator')}"}  # auth on, as by default
                seconds, errors = post_all(srv.ports["http"], "/dicomweb/studies", bodies, threads, timeout, _check_ilm,
                                           auth)
                row["server_cpu_ms"] = round((h.process_cpu_s(srv.pid) - cpu0) * 1000 / data.count, 2)
                if spy is not None:
                    stop_profiler(spy)
                h.stop_server(srv)
                row["stored"] = h.ilm_instance_count(home)
                row["requests"] = len(bodies)
            else:
                srv = h.start_orthanc(folder)
                reqs = [(b, "application/dicom") for b in blobs]
                cpu0 = h.process_cpu_s(srv.pid)
                seconds, errors = post_all(srv.ports["http"], "/instances", reqs, threads, timeout, _check_orthanc)
                row["server_cpu_ms"] = round((h.process_cpu_s(srv.pid) - cpu0) * 1000 / data.count, 2)
                row["stored"] = h.orthanc_count(srv)
                row["requests"] = len(reqs)
            row["seconds"] = seconds
            row["ok"] = not errors and row["stored"] == data.count
            if not row["ok"]:
                row["error"] = (f"holds {row['stored']} of {data.count}; {len(errors)} bad answers: "
                                + "; ".join(errors[:3]) + "\n" + srv.log_tail(10))
        except h.BenchError as exc:
            row.update(ok=False, error=str(exc))
        finally:
            if srv is not None:
                h.stop_server(srv)
    if row.get("ok"):
        row["instances_per_s"] = data.count / row["seconds"]
        row["mb_per_s"] = data.total_bytes / 1e6 / row["seconds"]
    return row


def run(ctx: Any) -> dict[str, Any]:
    data = ctx.dataset()
    blobs = [f.read_bytes() for f in data.files]
    bodies = [multipart(blobs[i:i + BATCH]) for i in range(0, len(blobs), BATCH)]
    systems = list(SYSTEMS)
    notes = []
    problem = h.ilm_command_problem("serve")
    if problem:
        systems.remove("ilm")
        notes.append(f"ilm was not measured: {problem}")
    timeout = 600.0
    rounds = []
    for r in range(ctx.rounds):
        res: dict[str, dict[str, Any]] = {}
        for c in CONCURRENCY:
            order = systems if (r + c) % 2 == 0 else systems[::-1]
            for s in order:
                ctx.log(f"stow round {r + 1}/{ctx.rounds}: {s} with {c} client(s) ...")
                row = _measure(s, c, data, blobs, bodies, timeout)
                res[f"{s}/{c}"] = row
                ctx.log(f"  {s}/{c}: " + (f"{row['instances_per_s']:.1f} inst/s ({row['seconds']:.1f} s)"
                                          if row.get("ok") else f"FAILED: {row.get('error', '')[:500]}"))
        rounds.append(res)
    out = {"instances": data.count, "bytes": data.total_bytes, "batch": BATCH, "systems": systems,
           "concurrency": list(CONCURRENCY), "rounds": rounds, "notes": notes, "profile": None}
    missed = "ilm" in systems and any((median(_ratios(out, c)) or 0) < TARGET for c in CONCURRENCY)
    if (missed or ctx.profile) and h.have_py_spy():
        c = max(CONCURRENCY)
        path = h.RESULTS / "stow-ilm-profile.txt"
        ctx.log(f"stow: profiling ilm serve with py-spy, {c} clients (extra run, not counted) ...")
        row = _measure("ilm", c, data, blobs, bodies, timeout, profile=str(path))
        out["profile"] = {"file": f"bench/results/{path.name}", "run": row, "clients": c,
                          "top": summarize_profile(str(path))}
    return out


def _ratios(res: dict[str, Any], c: int) -> list[float | None]:
    out: list[float | None] = []
    for rd in res["rounds"]:
        x, y = rd.get(f"ilm/{c}", {}).get("instances_per_s"), rd.get(f"orthanc/{c}", {}).get("instances_per_s")
        out.append(x / y if x and y else None)
    return out


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    for c in res["concurrency"]:
        rs = _ratios(res, c)
        out.append((f"STOW-RS, {c} client{'s' if c > 1 else ''}: ilm / Orthanc", ratio_cell(rs), f">= {TARGET:g}x",
                    target_cell(rs, TARGET).split(": ", 1)[1]))
    return out


def render(res: dict[str, Any]) -> str:
    n, mb = res["instances"], res["bytes"] / 1e6
    labels = {"ilm": f"ilm `POST /dicomweb/studies` ({res['batch']} per request)",
              "orthanc": "Orthanc `POST /instances` (1 per request)"}
    rows = []
    for c in res["concurrency"]:
        for s in res["systems"]:
            k = f"{s}/{c}"
            rates = [rd.get(k, {}).get("instances_per_s") for rd in res["rounds"]]
            mbs = [rd.get(k, {}).get("mb_per_s") for rd in res["rounds"]]
            secs = [rd.get(k, {}).get("seconds") for rd in res["rounds"] if rd.get(k, {}).get("ok")]
            fails = sum(1 for rd in res["rounds"] if k in rd and not rd[k].get("ok"))
            cpu = [rd.get(k, {}).get("server_cpu_ms") for rd in res["rounds"] if rd.get(k, {}).get("ok")]
            rows.append((labels[s], str(c), fmt(median(rates)), spread(rates), fmt(median(mbs)), fmt(median(secs), 2),
                         fmt(median(cpu), 2), f"{fails} failed" if fails else "all"))
    out = [f"{n:,} CT instances ({mb:,.0f} MB) over HTTP/1.1 on loopback; bodies prepared in memory before the "
           "clock starts; every answer and the stored count checked."]
    out.append(table(["server", "clients", "instances/s", "range", "MB/s", "seconds", "server CPU ms per instance",
                      f"verified {n}"], rows))
    if "ilm" in res["systems"]:
        out.append("Same-round ratios of instances/s:\n\n" + table(
            ["ratio", "value", "target (issue 2)"],
            [(f"ilm / Orthanc, {c} client(s)", ratio_cell(_ratios(res, c)), target_cell(_ratios(res, c), TARGET))
             for c in res["concurrency"]]))
    out.append("Both servers flush every instance to disk before answering (ilm: hot tier fsync on, the default; "
               "Orthanc: `SyncStorageArea`, its default). ilm writes the instances of a request on 4 threads "
               "(their flushes overlap) and commits their catalog rows in one transaction; the answer comes "
               "after both.")
    for note in res.get("notes", []):
        out.append(f"Note: {note}")
    errors = [f"- {k} round {i + 1}: {rd[k].get('error', '')[:300]}" for i, rd in enumerate(res["rounds"])
              for k in rd if not rd[k].get("ok")]
    if errors:
        out.append("Failures:\n\n" + "\n".join(errors))
    prof = res.get("profile")
    if prof and prof.get("top"):
        out.append(render_profile(prof, f"during one extra STOW-RS run with {prof['clients']} clients"))
    return "\n\n".join(out)
