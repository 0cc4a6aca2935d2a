"""The dashboard's overview page over 1M catalog-only studies (issue 6): server time per request.

The catalog is ``ilm synth --catalog-only --studies N --seed 1`` on SQLite (the
helpers of bench/plan.py). A driver process opens the archive, builds the
HTTP app (``create_app``, authentication off) and requests ``GET /``
in-process through Starlette's TestClient (no socket: the server's time):

- cold: the first request after start-up, which counts the catalog (by tier,
  by modality, by study year, bytes received per month) and draws the charts;
- warm: 20 requests after it, served from the figures the service keeps fresh
  in the background (recomputed once older than a minute); the median;
- floor: one ``SELECT count(*), sum(size_bytes)`` over the same studies.
Target (issue 6): at most 300 ms per request on SQLite.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench import harness as h
from bench.plan import FULL, QUICK, _catalog, _last_json
from bench.report import fmt, table

NAME = "dashboard"
TITLE = "Dashboard overview page over 1M catalog-only studies"
TARGET_MS = 300.0

DRIVER = r'''
import json, statistics, sys, time
from pathlib import Path
home = Path(sys.argv[1])
from ilm.config import load_settings
from ilm.service import ArchiveService
from ilm.web import create_app
from fastapi.testclient import TestClient
import sqlalchemy as sa
service = ArchiveService.open(load_settings(home=home, env={}))
with service.catalog.read() as conn:
    t0 = time.perf_counter()
    n, b = conn.execute(sa.text("SELECT count(*), sum(size_bytes) FROM studies WHERE state = 'active'")).one()
    floor = time.perf_counter() - t0
client = TestClient(create_app(service, auth=False))
t0 = time.perf_counter()
r = client.get("/", headers={"Accept": "text/html"})
cold = time.perf_counter() - t0
assert r.status_code == 200 and f"{int(n):,}" in r.text, (r.status_code, r.text[:300])
warm = []
for _ in range(20):
    t0 = time.perf_counter()
    r = client.get("/", headers={"Accept": "text/html"})
    warm.append(time.perf_counter() - t0)
    assert r.status_code == 200
print(json.dumps({"studies": int(n), "floor_ms": floor * 1000, "cold_ms": cold * 1000,
                  "warm_ms": statistics.median(warm) * 1000, "warm_max_ms": max(warm) * 1000,
                  "figures_s": service.overview().seconds, "page_kb": len(r.content) / 1024}))
'''


def run(ctx: Any) -> dict[str, Any]:
    n = QUICK if ctx.quick else FULL
    res: dict[str, Any] = {"studies": n, "n_rounds": 1}
    with h.scratch("dashboard") as folder:
        ctx.log(f"dashboard: ilm synth --catalog-only --studies {n:,} on SQLite ...")
        home, _url = _catalog("sqlite", folder, n, None, 1800.0)
        ctx.log("dashboard: GET / in a driver process ...")
        t = h.run_timed([sys.executable, "-c", DRIVER, str(home)], timeout=1800, env=h.ilm_env(home))
        row = _last_json(t.output) or {}
        row["ok"] = t.rc == 0 and "warm_ms" in row
        if not row["ok"]:
            row["error"] = f"rc={t.rc}\n{t.tail()}"
        ctx.log(f"  {json.dumps(row)[:300]}")
        res["sqlite"] = row
    return res


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    r = res.get("sqlite", {})
    warm = r.get("warm_ms")
    ok = warm is not None and warm <= TARGET_MS
    return [(f"dashboard overview, {res['studies']:,} studies, SQLite: server time per request (warm median; "
             "cold first request)", f"{fmt(warm, 0)} ms ({fmt(r.get('cold_ms'), 0)} ms cold)",
             f"<= {TARGET_MS:g} ms", "met" if ok else "**not met**")]


def render(res: dict[str, Any]) -> str:
    r = res.get("sqlite", {})
    if not r.get("ok"):
        return f"The run failed: {r.get('error', '?')}"
    rows = [("one `SELECT count(*), sum(size_bytes)` (floor)", fmt(r.get("floor_ms"), 0), ""),
            ("`GET /`, first request (counts the catalog, draws the charts)", fmt(r.get("cold_ms"), 0),
             f"{fmt(r['cold_ms'] / r['floor_ms'], 1)}x" if r.get("floor_ms") else ""),
            ("`GET /`, next 20 requests, median (figures kept fresh in the background)", fmt(r.get("warm_ms"), 0),
             f"{fmt(r['warm_ms'] / r['floor_ms'], 2)}x" if r.get("floor_ms") else ""),
            ("`GET /`, next 20 requests, slowest", fmt(r.get("warm_max_ms"), 0), "")]
    return "\n\n".join([
        f"{r.get('studies', res['studies']):,} studies from `ilm synth --catalog-only --seed 1`, SQLite; the app "
        "in a driver process, requests through Starlette's TestClient (server time, no socket).",
        table(["request", "ms", "x floor"], rows),
        f"Counting the figures took {fmt(r.get('figures_s'), 2)} s; the page is {fmt(r.get('page_kb'), 0)} KB. "
        "The overview's figures (by tier, by modality, by study year, bytes received per month) are counted once, "
        "served while younger than a minute, and then recounted in a background thread while the last figures are "
        "served (stale-while-revalidate); the page says when they were counted. The charts are drawn once per set "
        "of figures.",
    ])
