"""Catalog at scale: insert 1M synthetic studies (catalog rows only).

ilm: ``ilm synth --catalog-only --studies N`` as a subprocess, into a fresh
SQLite catalog and into a fresh PostgreSQL database (a server started by the
bench with PostgreSQL's default durability settings). Its peak memory is the
ru_maxrss of that very process (wait4). The floor, in the same run: a raw
``executemany`` of N minimal study rows (UID, patient, date, modality, size;
one table, a unique index on the UID) into SQLite with the pragmas ilm uses
(WAL, synchronous=NORMAL), in transactions of 50,000 rows; the same rows into
PostgreSQL with psycopg's ``COPY`` (what ilm's bulk loader uses there).
Figures are wall times of the whole process (start-up included, a second or
less). Peak memory: the largest single process (GNU time), and the largest
sum over the command's processes at once (sampled every 0.1 s; ilm synth
loads with one worker process per CPU by default), PostgreSQL's own server
processes not included.

After each run the rows are counted in every table of the catalog, so the
"rows/s" of ilm counts every row it wrote (patients, studies, series, ...),
and "studies/s" is the unit comparable with the floor.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.report import fmt, median, ratio_cell, table

NAME = "catalog"
TITLE = "Catalog: 1M synthetic studies (catalog rows only)"
FULL, QUICK = 1_000_000, 100_000

RAW = r'''
import json, sys, time
kind, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
CH = 50_000
def rows(a, b):
    for i in range(a, b):
        yield (f"1.2.826.0.1.3680043.10.1087.9.{i}", f"P{i % 400_000:07d}",
               f"{2005 + i % 20}-{1 + i % 12:02d}-{1 + i % 28:02d}", ("CT", "MR", "CR", "US", "MG")[i % 5],
               (i % 1000) * 1_000_000)
ddl = ("CREATE TABLE studies (id {pk}, study_uid VARCHAR(64) NOT NULL UNIQUE, patient_id VARCHAR(64) NOT NULL, "
       "study_date DATE, modality VARCHAR(16), size_bytes BIGINT)")
t0 = time.perf_counter()
if kind == "sqlite":
    import sqlite3
    con = sqlite3.connect(target, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL"); con.execute("PRAGMA synchronous=NORMAL")
    con.execute(ddl.format(pk="INTEGER PRIMARY KEY"))
    sql = "INSERT INTO studies (study_uid, patient_id, study_date, modality, size_bytes) VALUES (?,?,?,?,?)"
    for a in range(0, n, CH):
        con.execute("BEGIN")
        con.executemany(sql, rows(a, min(n, a + CH)))
        con.execute("COMMIT")
    count = con.execute("SELECT count(*) FROM studies").fetchone()[0]
else:
    import psycopg
    con = psycopg.connect(target, autocommit=False)
    con.execute(ddl.format(pk="BIGSERIAL PRIMARY KEY")); con.commit()
    sql = "COPY studies (study_uid, patient_id, study_date, modality, size_bytes) FROM STDIN"
    with con.cursor() as cur:
        for a in range(0, n, CH):
            with cur.copy(sql) as cp:
                for r in rows(a, min(n, a + CH)):
                    cp.write_row(r)
            con.commit()
    count = con.execute("SELECT count(*) FROM studies").fetchone()[0]
print(json.dumps({"rows": count, "inner_seconds": time.perf_counter() - t0}))
'''


def _pg_dsn(pg: Any, db: str) -> str:
    return f"host=127.0.0.1 port={pg.port} user=ilm dbname={db}"


def _create_db(pg: Any, db: str) -> None:
    import psycopg

    with psycopg.connect(_pg_dsn(pg, "postgres"), autocommit=True) as con:
        con.execute(f"DROP DATABASE IF EXISTS {db}")
        con.execute(f"CREATE DATABASE {db}")


def _count_rows(url: str) -> dict[str, int]:
    import sqlalchemy as sa

    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            names = sa.inspect(conn).get_table_names()
            return {t: int(conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one())
                    for t in names if t != "alembic_version"}
    finally:
        eng.dispose()


def _raw(kind: str, target: str, n: int, timeout: float) -> dict[str, Any]:
    t = h.run_timed([sys.executable, "-c", RAW, kind, target, str(n)], timeout=timeout, sample_tree=True)
    row: dict[str, Any] = {"system": f"raw-{kind}", "seconds": t.seconds, "rc": t.rc,
                           "maxrss_mb": round(t.maxrss_kb / 1024, 1), "tree_rss_mb": round(t.tree_rss_kb / 1024, 1)}
    try:
        info = json.loads(t.output.strip().splitlines()[-1])
        row.update(rows=info["rows"], studies=info["rows"], inner_seconds=info["inner_seconds"])
    except (ValueError, IndexError, KeyError):
        row.update(rows=0, studies=0)
    row["ok"] = t.rc == 0 and row["studies"] == n
    if not row["ok"]:
        row["error"] = f"rc={t.rc}, {row['studies']} of {n} rows\n{t.tail()}"
    return row


def _synth(kind: str, home: Path, url: str, n: int, timeout: float) -> dict[str, Any]:
    row: dict[str, Any] = {"system": f"ilm-{kind}"}
    try:
        h.make_ilm_home(home, catalog_url=url if kind == "postgresql" else "")
        url = url if kind == "postgresql" else f"sqlite:///{home / 'catalog.sqlite'}"
        t = h.run_timed([h.ilm_bin(), "synth", "--home", str(home), "--catalog-only", "--studies", str(n),
                         "--seed", "1", "--json"], timeout=timeout, env=h.ilm_env(home), sample_tree=True)
        row.update(seconds=t.seconds, rc=t.rc, maxrss_mb=round(t.maxrss_kb / 1024, 1),
                   tree_rss_mb=round(t.tree_rss_kb / 1024, 1))
        try:
            row["report"] = json.loads(t.output[t.output.index("{"):t.output.rindex("}") + 1])
        except ValueError:
            row["report"] = None
        counts = _count_rows(url) if t.rc is not None else {}
        row["tables"] = counts
        row["studies"] = counts.get("studies", 0)
        row["rows"] = sum(counts.values())
        if kind == "sqlite":
            row["db_mb"] = round(sum(p.stat().st_size for p in home.glob("catalog.sqlite*")) / 1e6, 1)
        row["ok"] = t.rc == 0 and row["studies"] == n
        if not row["ok"]:
            row["error"] = f"rc={t.rc}, {row['studies']} of {n} studies\n{t.tail()}"
    except h.BenchError as exc:
        row.update(ok=False, error=str(exc))
    return row


def run(ctx: Any) -> dict[str, Any]:
    n = QUICK if ctx.quick else FULL
    timeout = 900.0
    problem = h.ilm_command_problem("synth")
    have_synth = problem is None
    notes = [] if have_synth else [f"ilm was not measured: {problem}"]
    res: dict[str, Any] = {}
    with h.scratch("catalog") as folder:
        ctx.log(f"catalog: raw executemany of {n:,} rows into SQLite ...")
        res["raw-sqlite"] = _raw("sqlite", str(folder / "raw.sqlite"), n, timeout)
        ctx.log(f"  {res['raw-sqlite']}")
        if have_synth:
            ctx.log(f"catalog: ilm synth --catalog-only --studies {n:,} on SQLite ...")
            res["ilm-sqlite"] = _synth("sqlite", folder / "home-sqlite", "", n, timeout)
            ctx.log(f"  { {k: v for k, v in res['ilm-sqlite'].items() if k != 'tables'} }")
        pg = h.start_postgres(durable=True)
        try:
            _create_db(pg, "raw")
            ctx.log(f"catalog: raw COPY of {n:,} rows into PostgreSQL ...")
            res["raw-postgresql"] = _raw("postgresql", _pg_dsn(pg, "raw"), n, timeout)
            ctx.log(f"  {res['raw-postgresql']}")
            if have_synth:
                _create_db(pg, "ilm")
                ctx.log(f"catalog: ilm synth --catalog-only --studies {n:,} on PostgreSQL ...")
                res["ilm-postgresql"] = _synth("postgresql", folder / "home-pg", pg.url("ilm"), n, timeout)
                ctx.log(f"  { {k: v for k, v in res['ilm-postgresql'].items() if k != 'tables'} }")
        finally:
            h.stop_postgres(pg)
    for row in res.values():
        if row.get("ok"):
            row["studies_per_s"] = row["studies"] / row["seconds"]
            row["rows_per_s"] = row["rows"] / row["seconds"]
    return {"studies": n, "results": res, "notes": notes, "n_rounds": 1}


def _ratio(res: dict[str, Any], kind: str) -> float | None:
    a = res["results"].get(f"ilm-{kind}", {}).get("studies_per_s")
    b = res["results"].get(f"raw-{kind}", {}).get("studies_per_s")
    return a / b if a and b else None


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(f"catalog, {k}: ilm synth / raw {'executemany' if k == 'sqlite' else 'COPY'} (studies/s)",
             ratio_cell([_ratio(res, k)], 3), "(none; reported)", "-") for k in ("sqlite", "postgresql")]


def render(res: dict[str, Any]) -> str:
    n = res["studies"]
    labels = {"ilm-sqlite": "ilm synth --catalog-only, SQLite", "raw-sqlite": "raw executemany, SQLite (floor)",
              "ilm-postgresql": "ilm synth --catalog-only, PostgreSQL", "raw-postgresql": "raw COPY, PostgreSQL (floor)"}
    rows = []
    for k in ("ilm-sqlite", "raw-sqlite", "ilm-postgresql", "raw-postgresql"):
        r = res["results"].get(k)
        if r is None:
            continue
        workers = (r.get("report") or {}).get("workers")
        rows.append((labels[k], fmt(r.get("studies_per_s"), 0), fmt(r.get("rows_per_s"), 0), f"{r.get('rows', 0):,}",
                     fmt(r.get("seconds") if r.get("ok") else None, 1), fmt(r.get("maxrss_mb"), 0),
                     fmt(r.get("tree_rss_mb"), 0) + (f" ({workers} workers)" if workers else ""),
                     "yes" if r.get("ok") else "**no**"))
    out = [f"{n:,} studies, one run each (a single run is minutes long)."]
    out.append(table(["", "studies/s", "rows/s (all tables)", "rows written", "seconds", "peak RSS MB (largest process)",
                      "peak RSS MB (all processes)", f"{n:,} studies verified"], rows))
    out.append(table(["same-run ratio (studies/s)", "value"],
                     [("ilm / raw executemany, SQLite", ratio_cell([_ratio(res, "sqlite")], 3)),
                      ("ilm / raw COPY, PostgreSQL", ratio_cell([_ratio(res, "postgresql")], 3))]))
    ilm_tables = {k: res["results"][k].get("tables") for k in ("ilm-sqlite", "ilm-postgresql") if res["results"].get(k, {}).get("tables")}
    if ilm_tables:
        k, t = next(iter(ilm_tables.items()))
        out.append("Rows ilm wrote per table (" + labels[k] + "): "
                   + ", ".join(f"{name} {c:,}" for name, c in sorted(t.items()) if c) + ".")
    db = res["results"].get("ilm-sqlite", {}).get("db_mb")
    if db:
        out.append(f"SQLite catalog on disk after the run: {db:,.0f} MB.")
    out.append("PostgreSQL runs with its default durability (fsync and synchronous_commit on), "
               "shared_buffers 256MB, max_wal_size 4GB, in a fresh cluster started by the bench.")
    for note in res.get("notes", []):
        out.append(f"Note: {note}")
    errors = [f"- {k}: {r.get('error', '')[:400]}" for k, r in res["results"].items() if not r.get("ok")]
    if errors:
        out.append("Failures:\n\n" + "\n".join(errors))
    return "\n\n".join(out)
