"""Fixity: ``ilm verify`` over a filesystem tier vs ``sha256sum`` (and Python's
hashlib in one thread) over the very same files, in the same round.

The data set is imported once into a fresh archive (SQLite catalog, hot tier
fsync off); each round then times ``ilm verify --tier hot`` (every copy read,
hashed and compared with the catalog, verified_at written; parallel reads,
no rate limit), the same check in this process (``ArchiveService.verify``:
what the scrub of ilm serve runs, without starting a command), ``sha256sum``
over the hot tier's files, and a one-thread hashlib loop over them. All read
from the page cache. The command's fixed cost (start Python, import ilm, open
the catalog) is measured in the same round as ``ilm verify`` of an empty archive.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.report import fmt, median, ratio_cell, spread, table

NAME = "verify"
TITLE = "Fixity: `ilm verify` vs `sha256sum` over the same files"
SYSTEMS = ("ilm", "engine", "sha256sum", "hashlib")
TIMED = SYSTEMS + ("ilm-empty",)  # ilm-empty: the command's fixed cost, measured in the same round
LABELS = {"ilm": "ilm verify --tier hot (the command, 4 threads)",
          "engine": "ArchiveService.verify in process (what the scrub runs, 4 threads)",
          "sha256sum": "sha256sum (1 process)", "hashlib": "Python hashlib loop (1 thread)"}


def _files(tier: Path) -> list[Path]:
    return sorted(p for p in tier.rglob("*") if p.is_file())


def _ilm(home: Path, timeout: float) -> dict[str, Any]:
    t = h.run_timed([h.ilm_bin(), "verify", "--home", str(home), "--tier", "hot", "--json", "--mb-per-s", "0"],
                    timeout=timeout, env=h.ilm_env(home))
    row: dict[str, Any] = {"seconds": t.seconds, "rc": t.rc, "maxrss_mb": round(t.maxrss_kb / 1024, 1),
                           "cpu_s": round(t.cpu_s, 2)}
    try:
        rep = json.loads(t.output[t.output.index("{"):])
        row["report"] = {k: rep[k] for k in ("objects", "bytes", "ok", "bad", "missing", "remaining")}
    except (ValueError, KeyError):
        row["report"] = None
    row["ok"] = t.rc == 0 and bool(row["report"]) and row["report"]["remaining"] == 0
    if not row["ok"]:
        row["error"] = f"rc={t.rc}\n{t.tail()}"
    return row


def _sha256sum(lst: Path, timeout: float) -> dict[str, Any]:
    """sha256sum over the files listed in ``lst``, one process (xargs passes them in large batches)."""
    t = h.run_timed(["bash", "-c", 'tr "\\n" "\\0" < "$0" | xargs -0 sha256sum > /dev/null', str(lst)],
                    timeout=timeout)
    return {"seconds": t.seconds, "rc": t.rc, "ok": t.rc == 0, "cpu_s": round(t.cpu_s, 2),
            **({} if t.rc == 0 else {"error": t.tail()})}


def _engine(home: Path) -> dict[str, Any]:
    """The same check without the command around it: the service's verify in this process."""
    from ilm.config import load_settings
    from ilm.service import ArchiveService

    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        t0 = time.perf_counter()
        r = svc.verify(tier="hot", mb_per_s=0)
        seconds = time.perf_counter() - t0
    finally:
        svc.close()
    return {"seconds": seconds, "ok": r.clean and r.objects > 0, "objects": r.objects}


def _hashlib(files: list[Path]) -> dict[str, Any]:
    t0 = time.perf_counter()
    for p in files:
        hashlib.sha256(p.read_bytes()).hexdigest()
    return {"seconds": time.perf_counter() - t0, "ok": True}


def run(ctx: Any) -> dict[str, Any]:
    data = ctx.dataset()
    timeout = 900.0
    rounds = []
    startup = []
    with h.scratch("verify") as folder:
        home = h.make_ilm_home(folder / "home", fsync=False)
        ctx.log(f"verify: importing {data.count} instances ...")
        t = h.run_timed([h.ilm_bin(), "import", "--home", str(home), "--json", str(data.root)], timeout=timeout,
                        env=h.ilm_env(home))
        if t.rc != 0:
            raise h.BenchError(f"ilm import failed: {t.tail()}")
        files = _files(home / "tiers" / "hot")
        total = sum(p.stat().st_size for p in files)
        lst = folder / "files.lst"
        lst.write_text("\n".join(str(p) for p in files) + "\n")
        empty = h.make_ilm_home(folder / "empty", fsync=False)
        for r in range(ctx.rounds + 1):  # round 0 warms the page cache and is not counted
            order = TIMED[r % len(TIMED):] + TIMED[: r % len(TIMED)]
            res: dict[str, Any] = {}
            for s in order:
                h.settle()
                row = _ilm(home, timeout) if s == "ilm" else _ilm(empty, timeout) if s == "ilm-empty" \
                    else _engine(home) if s == "engine" else _sha256sum(lst, timeout) if s == "sha256sum" \
                    else _hashlib(files)
                row["load_before"] = h.loadavg()
                if row.get("ok") and s != "ilm-empty":
                    row["mb_per_s"] = total / 1e6 / row["seconds"]
                res[s] = row
                if r:
                    ctx.log(f"verify round {r}/{ctx.rounds}: {s}: " + (
                        f"{row.get('mb_per_s', 0):.0f} MB/s ({row['seconds']:.2f} s)" if row.get("ok")
                        else f"FAILED: {row.get('error', '')[:400]}"))
            if r:
                fixed = res.get("ilm-empty", {})
                startup.append(fixed.get("seconds") if fixed.get("ok") else None)
                rounds.append(res)
    return {"instances": len(files), "bytes": total, "rounds": rounds, "startup_s": startup}


def _ratios(res: dict[str, Any], a: str, b: str) -> list[float | None]:
    out: list[float | None] = []
    for rd in res["rounds"]:
        x, y = rd.get(a, {}).get("mb_per_s"), rd.get(b, {}).get("mb_per_s")
        out.append(x / y if x and y else None)
    return out


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [("verify: ilm verify / sha256sum (MB/s)", ratio_cell(_ratios(res, "ilm", "sha256sum")),
             "(none; reported)", "-"),
            ("verify: in process / hashlib (MB/s)", ratio_cell(_ratios(res, "engine", "hashlib")),
             "(none; reported)", "-")]


def render(res: dict[str, Any]) -> str:
    n, mb = res["instances"], res["bytes"] / 1e6
    rows = []
    for s in SYSTEMS:
        mbs = [rd.get(s, {}).get("mb_per_s") for rd in res["rounds"]]
        secs = [rd.get(s, {}).get("seconds") for rd in res["rounds"] if rd.get(s, {}).get("ok")]
        fails = sum(1 for rd in res["rounds"] if s in rd and not rd[s].get("ok"))
        rows.append((LABELS[s], fmt(median(mbs), 0), spread(mbs, 0), fmt(median(secs), 2),
                     f"{fails} failed" if fails else "all"))
    out = [f"{n:,} instances ({mb:,.0f} MB) on a filesystem tier, every file read and hashed by each system in "
           "every round (page cache warm)."]
    out.append(table(["", "MB/s", "range", "seconds", "ok"], rows))
    out.append(table(["same-round ratio (MB/s)", "value"], [
        ("ilm verify (command) / sha256sum", ratio_cell(_ratios(res, "ilm", "sha256sum"))),
        ("verify in process / sha256sum", ratio_cell(_ratios(res, "engine", "sha256sum"))),
        ("verify in process / hashlib (1 thread)", ratio_cell(_ratios(res, "engine", "hashlib"))),
    ]))
    st = median(res.get("startup_s", []))
    if st is not None:
        out.append(f"Fixed cost of the command (`ilm verify` of an empty archive: start Python, import ilm, open the catalog): "
                   f"{st:.2f} s, included in the command's figures: on this loaded machine it is most of the command's "
                   "time, so the in-process row is the measure of the check itself. Both compare each digest with "
                   "the catalog, write verified_at for every copy and look for missing replicas; the baselines only "
                   "hash. sha256sum here is coreutils' own SHA-256, slower than OpenSSL's that hashlib uses.")
    errors = [f"- {s} round {i + 1}: {rd[s].get('error', '')[:300]}" for i, rd in enumerate(res["rounds"])
              for s in rd if not rd[s].get("ok")]
    if errors:
        out.append("Failures:\n\n" + "\n".join(errors))
    return "\n\n".join(out)
