"""Analytics and cost over 1M catalog-only studies (issue 6): ``ilm stats``,
``ilm cost`` with three policies over 10 years, and ``ilm report --html``,
each against one ``SELECT count(*), sum(size_bytes)`` over the same studies
(the floor: one pass over the table), on SQLite and PostgreSQL.

The catalog is ``ilm synth --catalog-only --studies N --seed 1`` (the helpers
of bench/plan.py), and an access log of one read per study at its last
access (``INSERT INTO access_log SELECT ... FROM studies``: the real access
history of a million synthetic studies would take longer to generate than
everything measured here).

- ``ilm stats --json``, ``ilm cost --json --years 10 --policy x3`` and
  ``ilm report --html F --policy x3``: the commands as users run them
  (start-up included); wall seconds and peak RSS of the process.
- in-process: ``service.stats()`` and ``service.cost()`` in a driver process,
  timed inside (without Python's start-up and imports).
- floor: ``SELECT count(*), sum(size_bytes) FROM studies WHERE state = 'active'``
  in a process that opens the catalog and nothing more.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.plan import FULL, QUICK, REFERENCE, _catalog, _last_json
from bench.report import fmt, table

NAME = "analytics"
TITLE = "Analytics and cost over 1M catalog-only studies: ilm stats, ilm cost (3 policies, 10 years), ilm report"
POLICIES = ("us-mqsa-texas.yaml", "example-tiering.yaml", "uk-nhs-rcr.yaml")
TARGET_COST_SECONDS = 2.0

DRIVER = r'''
import json, resource, sys, time
from datetime import date
from pathlib import Path
mode, home, as_of = sys.argv[1], Path(sys.argv[2]), date.fromisoformat(sys.argv[3])
policies = [Path(p) for p in sys.argv[4:]]
from ilm.config import load_settings
if mode == "floor":
    import sqlalchemy as sa
    from ilm.catalog import Catalog
    catalog = Catalog.open(load_settings(home=home, env={}).catalog_url, upgrade=False)
    t0 = time.perf_counter()
    with catalog.read() as conn:
        n, b = conn.execute(sa.text("SELECT count(*), sum(size_bytes) FROM studies WHERE state = 'active'")).one()
    print(json.dumps({"inner_seconds": time.perf_counter() - t0, "studies": int(n), "bytes": int(b)}))
else:
    from ilm.service import ArchiveService
    service = ArchiveService.open(load_settings(home=home, env={}))
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if mode == "stats":
        r = service.stats(today=as_of)
        out = {"studies": r["totals"]["studies"]}
    elif mode == "snapshot":
        snap = service.snapshot_tiers()
        out = {"backfilled_months": snap.backfilled_months, "backfilled_days": snap.backfilled_days,
               "first_seconds": time.perf_counter() - t0}
        t1 = time.perf_counter()
        service.snapshot_tiers()
        out["next_snapshot_seconds"] = time.perf_counter() - t1
    else:
        r = service.cost(policies, today=as_of)
        out = {"totals": [s["total"] for s in r["scenarios"]], "names": [s["name"] for s in r["scenarios"]]}
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    inner = out.pop("first_seconds", time.perf_counter() - t0)  # a snapshot: the first one's time
    print(json.dumps({"inner_seconds": inner, "cpu_seconds": cpu, **out}))
'''

ACCESS_LOG = ("INSERT INTO access_log (at, study_uid, interface, who, instances) "
              "SELECT last_accessed_at, study_uid, 'history', 'bench', instance_count FROM studies "
              "WHERE last_accessed_at IS NOT NULL")


def _access_log(url: str) -> int:
    import sqlalchemy as sa

    eng = sa.create_engine(url)
    try:
        with eng.begin() as c:
            c.execute(sa.text("DELETE FROM access_log"))
            n = c.execute(sa.text(ACCESS_LOG)).rowcount
    finally:
        eng.dispose()
    return int(n or 0)


def _measure(cmd: list[str], home: Path, timeout: float) -> dict[str, Any]:
    t = h.run_timed(cmd, timeout=timeout, env=h.ilm_env(home))
    row: dict[str, Any] = {"seconds": round(t.seconds, 2), "maxrss_mb": round(t.maxrss_kb / 1024, 1), "rc": t.rc}
    row.update(_last_json(t.output) or {})
    row["ok"] = t.rc == 0
    if not row["ok"]:
        row["error"] = f"rc={t.rc}\n{t.tail()}"
    return row


def _runs(ctx: Any, kind: str, home: Path, timeout: float) -> dict[str, Any]:
    pols = [str(h.REPO / "policies" / p) for p in POLICIES]
    with_pols = [a for p in pols for a in ("--policy", p)]
    ilm = h.ilm_bin()
    steps = {
        "floor": [sys.executable, "-c", DRIVER, "floor", str(home), REFERENCE],
        "stats_inner": [sys.executable, "-c", DRIVER, "stats", str(home), REFERENCE],
        "stats": [ilm, "stats", "--json", "--home", str(home), "--as-of", REFERENCE],
        "cost_inner": [sys.executable, "-c", DRIVER, "cost", str(home), REFERENCE, *pols],
        "cost": [ilm, "cost", "--json", "--years", "10", "--home", str(home), "--as-of", REFERENCE, *with_pols],
        # the first snapshot of storage by tier (it reconstructs the past), then the report draws that history
        "snapshot": [sys.executable, "-c", DRIVER, "snapshot", str(home), REFERENCE],
        "report": [ilm, "report", "--html", str(home / "report.html"), "--years", "10", "--home", str(home),
                   "--as-of", REFERENCE, *with_pols],
    }
    out: dict[str, Any] = {}
    for name, cmd in steps.items():
        ctx.log(f"analytics {kind}: {name} ...")
        out[name] = _measure(cmd, home, timeout)
        ctx.log(f"  {out[name].get('seconds')} s (inner {out[name].get('inner_seconds')}), "
                f"{out[name].get('maxrss_mb')} MB")
    report = home / "report.html"
    if report.exists():
        out["report"]["html_mb"] = round(report.stat().st_size / 1e6, 2)
    return out


def run(ctx: Any) -> dict[str, Any]:
    n = QUICK if ctx.quick else FULL
    timeout = 1800.0
    res: dict[str, Any] = {"studies": n, "as_of": REFERENCE, "policies": list(POLICIES), "results": {},
                           "n_rounds": 1}
    with h.scratch("analytics") as folder:
        ctx.log(f"analytics: ilm synth --catalog-only --studies {n:,} on SQLite ...")
        home, url = _catalog("sqlite", folder, n, None, timeout)
        res["access_log_rows"] = _access_log(url)
        res["results"]["sqlite"] = _runs(ctx, "sqlite", home, timeout)
        pg = h.start_postgres(durable=True)
        try:
            ctx.log(f"analytics: ilm synth --catalog-only --studies {n:,} on PostgreSQL ...")
            home, url = _catalog("postgresql", folder, n, pg, timeout)
            _access_log(url)
            res["results"]["postgresql"] = _runs(ctx, "postgresql", home, timeout)
        finally:
            h.stop_postgres(pg)
    return res


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if a and b else None


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    r = res["results"].get("sqlite", {})
    inner = r.get("cost_inner", {}).get("inner_seconds")
    floor = r.get("floor", {}).get("inner_seconds")
    ok = inner is not None and inner <= TARGET_COST_SECONDS
    return [(f"cost projection, {res['studies']:,} studies, 3 policies, 10 years, SQLite: in-process (x one SQL "
             "aggregate)", f"{fmt(inner, 2)} s ({fmt(_ratio(inner, floor), 1)}x)", f"<= {TARGET_COST_SECONDS:g} s",
             "met" if ok else "**not met**")]


def render(res: dict[str, Any]) -> str:
    n = res["studies"]
    parts = [f"{n:,} studies from `ilm synth --catalog-only --seed 1 --as-of {res['as_of']}`, "
             f"{res.get('access_log_rows', 0):,} access log rows (one read per study at its last access); "
             f"policies {', '.join(res['policies'])}. One run of each. Wall seconds of the whole process; "
             "inner: inside the process, without start-up and imports; CPU seconds: what the driver process used "
             "inside (all its threads; the database's own for PostgreSQL is not in it), which depends much less "
             "on the machine's load than wall time does; ratio: inner time over the floor's."]
    labels = {"floor": "one `SELECT count(*), sum(size_bytes)` (floor)",
              "stats_inner": "`service.stats()` in a driver process", "stats": "`ilm stats --json`",
              "cost_inner": "`service.cost()`, 3 policies, 10 years, in a driver process",
              "cost": "`ilm cost --json --years 10`, 3 policies",
              "snapshot": "first snapshot of storage by tier (reconstructs the past), in a driver process",
              "report": "`ilm report --html`, 3 policies"}
    for kind in ("sqlite", "postgresql"):
        r = res["results"].get(kind)
        if not r:
            continue
        floor = r.get("floor", {}).get("inner_seconds")
        rows = []
        for k, label in labels.items():
            x = r.get(k, {})
            extra = f"{x['html_mb']} MB of HTML" if "html_mb" in x else ""
            if "next_snapshot_seconds" in x:
                extra = (f"{x.get('backfilled_months', 0)} months reconstructed; the next snapshot "
                         f"{fmt(x['next_snapshot_seconds'], 2)} s")
            rows.append((label, fmt(x.get("seconds") if x.get("ok") else None, 2), fmt(x.get("inner_seconds"), 2),
                         fmt(x.get("cpu_seconds"), 2), fmt(x.get("maxrss_mb"), 0),
                         f"{fmt(_ratio(x.get('inner_seconds'), floor), 1)}x" if x.get("inner_seconds") else "",
                         extra))
        parts.append(f"**{'SQLite' if kind == 'sqlite' else 'PostgreSQL'}**\n\n" + table(
            ["", "seconds", "inner seconds", "CPU seconds (inner)", "peak RSS MB", "inner / floor", ""], rows))
    parts.append(
        "`ilm stats` is one grouped pass over `studies` (study year, month received, size and age buckets, "
        "tiers, modalities in study, never read after N days; the marginals summed in Python), one join of the "
        "last year's access log with `studies` (reads by study age), one count of studies per patient (priors) "
        "and the largest studies. `ilm cost` reads the studies in one grouped pass (tier, age bucket, month "
        "received: bytes per tier, instances per age bucket, arrivals per month) and the last year's reads by "
        "study age (the studies scanned, the access log found by its study index), both on connections of their "
        "own while it reads the facts of its sample (1,000 studies at evenly spaced row ids and 250 of the last "
        "year's arrivals, by primary key) and simulates the sample under each policy with the pure evaluator "
        "(docs/cost.md): the simulation hardly depends on the catalog's size, the queries do; on 2 cores shared "
        "with other work, the figure follows the machine's load. `ilm report` adds `ilm stats`, a preview plan "
        "of each policy (the database path of `ilm plan`, not stored; its decisions are read back, which sets "
        "the peak memory), the storage by tier recorded by the snapshot before it, and the charts.")
    errors = [f"- {kind} {k}: {x.get('error', '')[:400]}" for kind, r in res["results"].items()
              for k, x in r.items() if isinstance(x, dict) and not x.get("ok")]
    if errors:
        parts.append("Failures:\n\n" + "\n".join(errors))
    return "\n\n".join(parts)
