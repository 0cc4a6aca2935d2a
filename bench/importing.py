"""``ilm import`` of a folder of the CT instances, against ``cp -r`` of that folder.

Each run imports into a fresh ILM_HOME (SQLite catalog, hot tier on the same
file system as the source); ``cp -r`` copies the same folder to the same file
system. Both read the source from the page cache. ilm's time includes
starting the command (Python, opening the catalog), which is also measured on
its own (import of an empty folder) to show how much of it is fixed cost.
"""

from __future__ import annotations

import json
from typing import Any

from bench import harness as h
from bench.report import fmt, median, ratio_cell, spread, table

NAME = "import"
TITLE = "Folder import (`ilm import`) vs `cp -r`"
SYSTEMS = ("ilm", "ilm-nofsync", "cp")
LABELS = {"ilm": "ilm import (fsync on)", "ilm-nofsync": "ilm import (fsync off)", "cp": "cp -r"}


def _measure(system: str, data: Any, timeout: float) -> dict[str, Any]:
    h.settle()
    row: dict[str, Any] = {"system": system, "load_before": h.loadavg()}
    with h.scratch(f"import-{system}") as folder:
        try:
            if system == "cp":
                t = h.run_timed(["cp", "-r", str(data.root), str(folder / "copy")], timeout=timeout)
                row["stored"] = h.count_files(folder / "copy")
            else:
                home = h.make_ilm_home(folder / "home", fsync=(system == "ilm"))
                t = h.run_timed([h.ilm_bin(), "import", "--home", str(home), "--json", str(data.root)],
                                timeout=timeout, env=h.ilm_env(home))
                try:
                    row["report"] = {k: v for k, v in json.loads(t.output[t.output.index("{"):]).items() if k != "problems"}
                except ValueError:
                    row["report"] = None
                row["stored"] = h.ilm_instance_count(home) if t.rc is not None else 0
            row.update(seconds=t.seconds, rc=t.rc, maxrss_mb=round(t.maxrss_kb / 1024, 1))
            row["ok"] = t.rc == 0 and row["stored"] == data.count
            if not row["ok"]:
                row["error"] = f"rc={t.rc}, holds {row['stored']} of {data.count}\n{t.tail()}"
        except h.BenchError as exc:
            row.update(ok=False, error=str(exc))
    if row.get("ok"):
        row["instances_per_s"] = data.count / row["seconds"]
        row["mb_per_s"] = data.total_bytes / 1e6 / row["seconds"]
    return row


def _startup(timeout: float) -> float | None:
    with h.scratch("import-empty") as folder:
        home = h.make_ilm_home(folder / "home")
        (folder / "empty").mkdir()
        t = h.run_timed([h.ilm_bin(), "import", "--home", str(home), "--json", str(folder / "empty")],
                        timeout=timeout, env=h.ilm_env(home))
        return t.seconds if t.rc == 0 else None


def run(ctx: Any) -> dict[str, Any]:
    data = ctx.dataset()
    timeout = 600.0
    rounds = []
    startup = []
    for r in range(ctx.rounds):
        order = SYSTEMS[r % len(SYSTEMS):] + SYSTEMS[: r % len(SYSTEMS)]
        res = {}
        for s in order:
            ctx.log(f"import round {r + 1}/{ctx.rounds}: {s} ...")
            row = _measure(s, data, timeout)
            res[s] = row
            ctx.log(f"  {s}: " + (f"{row['instances_per_s']:.1f} inst/s, {row['mb_per_s']:.0f} MB/s ({row['seconds']:.2f} s)"
                                   if row.get("ok") else f"FAILED: {row.get('error', '')[:500]}"))
        rounds.append(res)
        startup.append(_startup(timeout))
    return {"instances": data.count, "bytes": data.total_bytes, "rounds": rounds, "startup_s": startup}


def _ratios(res: dict[str, Any], a: str, b: str) -> list[float | None]:
    out: list[float | None] = []
    for rd in res["rounds"]:
        x, y = rd.get(a, {}).get("instances_per_s"), rd.get(b, {}).get("instances_per_s")
        out.append(x / y if x and y else None)
    return out


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [("import: ilm import / cp -r", ratio_cell(_ratios(res, "ilm", "cp")), "(none; reported)", "-")]


def render(res: dict[str, Any]) -> str:
    n, mb = res["instances"], res["bytes"] / 1e6
    rows = []
    for s in SYSTEMS:
        rates = [rd.get(s, {}).get("instances_per_s") for rd in res["rounds"]]
        mbs = [rd.get(s, {}).get("mb_per_s") for rd in res["rounds"]]
        secs = [rd.get(s, {}).get("seconds") for rd in res["rounds"] if rd.get(s, {}).get("ok")]
        rss = [rd.get(s, {}).get("maxrss_mb") for rd in res["rounds"]]
        fails = sum(1 for rd in res["rounds"] if s in rd and not rd[s].get("ok"))
        rows.append((LABELS[s], fmt(median(rates)), spread(rates), fmt(median(mbs)), fmt(median(secs), 2),
                     fmt(median(rss), 0), f"{fails} failed" if fails else "all"))
    out = [f"A folder of {n:,} CT instances ({mb:,.0f} MB), imported into a fresh archive or copied, each run "
           "checked afterwards (catalog rows, files)."]
    out.append(table(["", "instances/s", "range", "MB/s", "seconds", "peak RSS MB", f"verified {n}"], rows))
    out.append(table(["same-round ratio (instances/s)", "value"], [
        ("ilm import (fsync on) / cp -r", ratio_cell(_ratios(res, "ilm", "cp"), 3)),
        ("ilm import (fsync off) / cp -r", ratio_cell(_ratios(res, "ilm-nofsync", "cp"), 3)),
        ("ilm import (fsync on) / (fsync off)", ratio_cell(_ratios(res, "ilm", "ilm-nofsync"))),
    ]))
    st = median(res.get("startup_s", []))
    if st is not None:
        out.append(f"Fixed cost of the command (`ilm import` of an empty folder: start Python, open and migrate "
                   f"the catalog): {st:.2f} s, included in the figures above.")
    out.append("`cp -r` neither hashes, parses, indexes nor flushes to disk; the ratio shows what the archive's "
               "guarantees (parse, SHA-256, atomic write, fsync, one catalog transaction per instance) cost "
               "against the raw copy.")
    errors = [f"- {s} round {i + 1}: {rd[s].get('error', '')[:300]}" for i, rd in enumerate(res["rounds"])
              for s in rd if not rd[s].get("ok")]
    if errors:
        out.append("Failures:\n\n" + "\n".join(errors))
    return "\n\n".join(out)
