"""Plan over 1M catalog-only studies (issue 3): ``ilm plan`` against a naive
per-study Python loop over the same rules and against one SQL COUNT with the
same predicates, on SQLite and PostgreSQL, in the same run.

The catalog is ``ilm synth --catalog-only --studies N --seed 1`` (studies on
the ingest tier ``hot``, 15 years of history, missing facts, children,
screening mammograms), planned as of the synth's own reference day, with
the bundled templates ``us-mqsa-texas.yaml`` (retention: expiries, vetoes,
CT/MR to warm) and ``example-tiering.yaml`` (tiering only).

- ``ilm plan --policy P --as-of D --json``: the command as users run it
  (start-up included). The database decides what it can and writes those
  actions itself; Python evaluates the rest (ilm.catalog.policy_sql).
- pure loop: ``make_plan(..., pure=True)`` in a process that imports what
  ``ilm plan`` imports: every study read into Python and given to the pure
  ``evaluate()``, the plan then written from Python (the path before the SQL
  compilation; kept as the reference and the fallback).
- floor: one ``SELECT count(*)`` with the compiled predicates (the studies
  a rule decides or the pure code must see), in a process that opens the
  catalog and nothing more.

Wall times are of whole processes; "inner" is the time inside the process
(without Python's start-up and imports). Peak RSS is that of the process
(GNU time). The fast and the pure plan must have the same plan hash: the
table says so. Plans are deleted between runs so every run sees the same
catalog.

The measured processes run with Python's bytecode cache, as an installed ilm
does (pip writes the ``.pyc`` files at install): this machine's environment
sets PYTHONDONTWRITEBYTECODE, under which every process compiled ilm's
sources again (0.6 s of each run). The cache is a folder of the bench's
(``bench/work/pycache``, PYTHONPYCACHEPREFIX), filled by one ``ilm plan
--help`` before the first measured run; the tree's sources stay untouched.
The new catalog is flushed to disk (sync) before the first timed run: the
first plan's checkpoint otherwise waited for the writeback of the gigabyte
the synth had just written (5.2 s instead of 4.0 s for the same plan).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.report import fmt, table

NAME = "plan"
TITLE = "Plan over 1M catalog-only studies: SQL path vs pure Python loop vs one SQL COUNT"
FULL, QUICK = 1_000_000, 100_000
REFERENCE = "2026-06-30"
POLICIES = ("us-mqsa-texas.yaml", "example-tiering.yaml")
TARGET_SECONDS, TARGET_MB = 3.0, 500.0
# ILM_BENCH_PLAN_PURE=0 leaves out the pure per-study loop (minutes per run), to iterate on the SQL path.
PURE = os.environ.get("ILM_BENCH_PLAN_PURE", "1") != "0"

DRIVER = r'''
import json, sys, time
from datetime import date
from pathlib import Path
mode, home, policy, as_of = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), date.fromisoformat(sys.argv[4])
from ilm.config import load_settings
if mode == "count":
    from ilm.catalog import Catalog
    from ilm.catalog.policy_sql import count_in_sql
    from ilm.lifecycle.plan import read_policy
    settings = load_settings(home=home, env={})
    catalog = Catalog.open(settings.catalog_url, upgrade=False)
    source = read_policy(policy, list(settings.tiers))
    t0 = time.perf_counter()
    with catalog.read() as conn:
        n = count_in_sql(conn, source.policy, as_of)
    print(json.dumps({"inner_seconds": time.perf_counter() - t0, "count": n}))
else:
    from ilm.service import ArchiveService  # what ilm plan imports
    from ilm.lifecycle.plan import make_plan
    service = ArchiveService.open(load_settings(home=home, env={}))
    source = service.read_policy(policy)
    t0 = time.perf_counter()
    r = make_plan(service.catalog, service.settings, source, as_of=as_of, created_by="bench", pure=(mode == "pure"))
    print(json.dumps({"inner_seconds": time.perf_counter() - t0, "plan_sha256": r.plan.plan_sha256,
                      "catalog_sha256": r.plan.catalog_sha256, "actions": r.plan.summary["actions"],
                      "vetoes": r.plan.summary["vetoes"]}))
'''


PYCACHE = h.WORK / "pycache"


def _env(home: Path) -> dict[str, str]:
    """The environment of a measured process: ilm's, with Python's bytecode cache (see above)."""
    env = h.ilm_env(home)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def _warm_bytecode(home: Path) -> None:
    """Compile what ``ilm plan`` and the drivers import into the cache, once (not measured)."""
    for cmd in ([h.ilm_bin(), "plan", "--help"],
                [sys.executable, "-c", "import ilm.service, ilm.lifecycle.plan, ilm.catalog.policy_sql"]):
        h.run_timed(cmd, timeout=300, env=_env(home))


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _clear_plans(url: str) -> None:
    import sqlalchemy as sa

    eng = sa.create_engine(url)
    try:
        with eng.begin() as c:
            for t in ("plan_actions", "plan_rule_actions", "plans"):
                c.execute(sa.text(f"DELETE FROM {t}"))
    finally:
        eng.dispose()


def _measure(cmd: list[str], home: Path, url: str, timeout: float, parse_cli: bool = False) -> dict[str, Any]:
    _clear_plans(url)
    t = h.run_timed(cmd, timeout=timeout, env=_env(home))
    row: dict[str, Any] = {"seconds": round(t.seconds, 2), "maxrss_mb": round(t.maxrss_kb / 1024, 1), "rc": t.rc}
    if parse_cli:
        try:
            out = json.loads(t.output[t.output.index("{"):t.output.rindex("}") + 1])
            row.update(plan_sha256=out.get("plan_sha256"), actions=out.get("actions"), vetoes=out.get("vetoes"))
        except ValueError:
            pass
    else:
        row.update(_last_json(t.output) or {})
    row["ok"] = t.rc == 0
    if not row["ok"]:
        row["error"] = f"rc={t.rc}\n{t.tail()}"
    return row


def _catalog(kind: str, folder: Path, n: int, pg: Any, timeout: float) -> tuple[Path, str]:
    home = folder / f"home-{kind}"
    url = ""
    if kind == "postgresql":
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=ilm dbname=postgres", autocommit=True) as con:
            con.execute("DROP DATABASE IF EXISTS plan")
            con.execute("CREATE DATABASE plan")
        url = pg.url("plan")
    h.make_ilm_home(home, catalog_url=url)
    url = url or f"sqlite:///{home / 'catalog.sqlite'}"
    t = h.run_timed([h.ilm_bin(), "synth", "--home", str(home), "--catalog-only", "--studies", str(n), "--seed", "1",
                     "--as-of", REFERENCE, "--json"], timeout=timeout, env=h.ilm_env(home))
    if t.rc != 0:
        raise h.BenchError(f"ilm synth on {kind} failed: {t.tail()}")
    os.sync()  # the catalog on disk before the timed runs (see above)
    return home, url


def _runs(ctx: Any, kind: str, home: Path, url: str, pure: bool, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _warm_bytecode(home)
    for name in POLICIES:
        policy = str(h.REPO / "policies" / name)
        ctx.log(f"plan {kind} {name}: ilm plan (SQL path) ...")
        fast = _measure([h.ilm_bin(), "plan", "--home", str(home), "--policy", policy, "--as-of", REFERENCE, "--json"],
                        home, url, timeout, parse_cli=True)
        ctx.log(f"  {fast.get('seconds')} s, {fast.get('maxrss_mb')} MB")
        ctx.log(f"plan {kind} {name}: SQL path in-process (make_plan) ...")
        inner = _measure([sys.executable, "-c", DRIVER, "fast", str(home), policy, REFERENCE], home, url, timeout)
        ctx.log(f"  {inner.get('seconds')} s (inner {inner.get('inner_seconds')})")
        ctx.log(f"plan {kind} {name}: one SQL COUNT (floor) ...")
        floor = _measure([sys.executable, "-c", DRIVER, "count", str(home), policy, REFERENCE], home, url, timeout)
        ctx.log(f"  {floor.get('seconds')} s (inner {floor.get('inner_seconds')}), count {floor.get('count')}")
        row = {"fast": fast, "inner": inner, "floor": floor}
        if pure:
            ctx.log(f"plan {kind} {name}: pure per-study Python loop ...")
            row["pure"] = _measure([sys.executable, "-c", DRIVER, "pure", str(home), policy, REFERENCE], home, url,
                                   timeout)
            ctx.log(f"  {row['pure'].get('seconds')} s, {row['pure'].get('maxrss_mb')} MB")
            row["same_plan"] = bool(fast.get("plan_sha256")) and fast.get("plan_sha256") == row["pure"].get("plan_sha256")
        out[name] = row
    return out


def run(ctx: Any) -> dict[str, Any]:
    n = QUICK if ctx.quick else FULL
    timeout = 1800.0
    res: dict[str, Any] = {"studies": n, "as_of": REFERENCE, "results": {}, "n_rounds": 1, "bytecode_cache": True}
    with h.scratch("plan") as folder:
        ctx.log(f"plan: ilm synth --catalog-only --studies {n:,} on SQLite ...")
        home, url = _catalog("sqlite", folder, n, None, timeout)
        res["results"]["sqlite"] = _runs(ctx, "sqlite", home, url, PURE, timeout)
        pg = h.start_postgres(durable=True)
        try:
            ctx.log(f"plan: ilm synth --catalog-only --studies {n:,} on PostgreSQL ...")
            home, url = _catalog("postgresql", folder, n, pg, timeout)
            res["results"]["postgresql"] = _runs(ctx, "postgresql", home, url, PURE, timeout)
        finally:
            h.stop_postgres(pg)
    return res


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if a and b else None


def _n_actions(row: dict[str, Any]) -> int:
    return sum(a.get("studies", 0) for a in row.get("actions") or [])


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    for name, row in res["results"].get("sqlite", {}).items():
        fast = row.get("fast", {})
        ok = fast.get("ok") and fast["seconds"] <= TARGET_SECONDS and fast["maxrss_mb"] <= TARGET_MB
        speed = _ratio(row.get("pure", {}).get("seconds"), fast.get("seconds"))  # same start-up on both sides
        out.append((f"plan {res['studies']:,} studies, SQLite, {name}: wall, peak RSS (pure loop / SQL path)",
                    f"{fmt(fast.get('seconds'), 1)} s, {fmt(fast.get('maxrss_mb'), 0)} MB ({fmt(speed, 1)}x)",
                    f"<= {TARGET_SECONDS:g} s, <= {TARGET_MB:g} MB", "met" if ok else "**not met**"))
    return out


def render(res: dict[str, Any]) -> str:
    n = res["studies"]
    parts = [f"{n:,} studies from `ilm synth --catalog-only --seed 1 --as-of {res['as_of']}`, planned as of "
             f"{res['as_of']}; one run of each (a run of the pure loop is minutes long). Wall seconds of the whole "
             "process; inner: inside the process, without start-up and imports."]
    labels = {"fast": "`ilm plan` (SQL path)", "inner": "SQL path, `make_plan` in a driver process",
              "pure": "pure per-study Python loop, same driver", "floor": "one SQL COUNT (floor)"}
    for kind in ("sqlite", "postgresql"):
        rows = []
        for name, row in res["results"].get(kind, {}).items():
            fast = row.get("fast", {})
            for k in ("fast", "inner", "pure", "floor"):
                r = row.get(k)
                if r is None:
                    continue
                ratio = _ratio(r.get("seconds"), fast.get("seconds")) if k != "fast" else 1.0
                inner = _ratio(r.get("inner_seconds"), row.get("inner", {}).get("inner_seconds"))
                what = (f"{_n_actions(r):,} actions" if k != "floor" else f"{r.get('count', 0):,} counted")
                rows.append((name if k == "fast" else "", labels[k],
                             fmt(r.get("seconds") if r.get("ok") else None, 2), fmt(r.get("inner_seconds"), 2),
                             fmt(r.get("maxrss_mb"), 0), f"{fmt(ratio, 2)}x",
                             f"{fmt(inner, 2)}x" if inner else "", what,
                             ("same plan hash" if row.get("same_plan") else "**plans differ**")
                             if k == "pure" else ""))
        if rows:
            parts.append(f"**{'SQLite' if kind == 'sqlite' else 'PostgreSQL'}**\n\n" + table(
                ["policy", "", "seconds", "inner seconds", "peak RSS MB", "seconds / `ilm plan`",
                 "inner / SQL path inner", "result", "check"], rows))
    parts.append(
        "The SQL path compiles the policy to one SQL expression per study (three-valued logic, calendar "
        "thresholds computed with the pure `Period.add_to`, patient facts by subqueries behind date guards), "
        "writes the expiries and moves it decides from the same statement into `plan_rule_actions` (one short row "
        "per study: id, rule code, the facts apply re-checks), and gives the pure "
        "`evaluate()` only the studies it cannot decide with certainty (a protection that vetoes, a missing "
        "fact, a hold): about 2 % of the studies with the Texas template (patients with an undated study), none "
        "with the tiering one. Beside the main statement a second thread reads the catalog totals (on a second "
        "connection, same snapshot); on SQLite the studies are decided in four ranges of ids, and the second "
        "thread reads and evaluates a range's studies left to Python while the database decides the next. `ilm plan` imports only what a plan uses (no DICOM, web, S3 or Alembic stack)"
        + ("; the processes run with Python's bytecode cache, as an installed ilm does (this machine's "
           "PYTHONDONTWRITEBYTECODE made each run compile ilm's sources again, about 0.6 s). "
           if res.get("bytecode_cache") else ". ") +
        "PostgreSQL runs with its default durability, in a fresh cluster started by the bench."
    )
    errors = [f"- {kind} {name} {k}: {r.get('error', '')[:400]}" for kind, rows in res["results"].items()
              for name, row in rows.items() for k, r in row.items() if isinstance(r, dict) and not r.get("ok")]
    if errors:
        parts.append("Failures:\n\n" + "\n".join(errors))
    return "\n\n".join(parts)
