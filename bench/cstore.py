"""C-STORE ingest: dcmtk storescu sends the CT instances over ONE association.

Receivers, each fresh (new folder, new process) for every measurement:
  ilm            ``ilm serve``, SQLite catalog, hot tier with fsync (the default)
  ilm-nofsync    the same with ``fsync = false`` on the hot tier
  orthanc        Orthanc (Debian package), config of DESIGN.md
  storescp       pynetdicom's bare ``storescp`` app writing files (no catalog,
                 no checksum, no fsync): the floor for a Python receiver

The time is the wall time of ``storescu`` (association, every C-STORE,
release). After each run the receiver is checked to really hold every
instance: rows in ilm's catalog, Orthanc's /statistics, files on disk.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from bench import harness as h
from bench.report import fmt, median, ratio_cell, spread, table, target_cell

NAME = "cstore"
TITLE = "C-STORE ingest (dcmtk storescu, one association)"
RECEIVERS = ("ilm", "ilm-nofsync", "orthanc", "storescp")
LABELS = {
    "ilm": "ilm serve (SQLite, fsync on)",
    "ilm-nofsync": "ilm serve (SQLite, fsync off)",
    "orthanc": "Orthanc",
    "storescp": "pynetdicom storescp (writes files)",
}
TARGETS = (("ilm", "orthanc", 5.0), ("ilm", "storescp", 1.0))


def storescu_cmd(ae: str, port: int, folder: str) -> list[str]:
    return ["storescu", "-aet", "BENCH", "-aec", ae, "+sd", "+r", "--max-pdu", "131072", "-nh",
            "127.0.0.1", str(port), folder]


def _measure(receiver: str, data: Any, timeout: float, profile: str | None = None) -> dict[str, Any]:
    h.settle()
    row: dict[str, Any] = {"receiver": receiver, "load_before": h.loadavg()}
    with h.scratch(f"cstore-{receiver}") as folder:
        srv = None
        try:
            if receiver.startswith("ilm"):
                home = h.make_ilm_home(folder / "home", fsync=(receiver == "ilm"))
                srv = h.start_ilm_serve(home)
                ae = "ILM"
            elif receiver == "orthanc":
                srv = h.start_orthanc(folder)
                ae = "ORTHANC"
            else:
                srv = h.start_storescp(folder)
                ae = "STORESCP"
            spy = _start_profiler(srv.pid, profile) if profile else None
            t = h.run_timed(storescu_cmd(ae, srv.ports["dicom"], str(data.root)), timeout=timeout)
            if spy is not None:
                _stop_profiler(spy)
            row.update(seconds=t.seconds, rc=t.rc)
            if receiver == "orthanc":
                row["stored"] = h.orthanc_count(srv)
            h.stop_server(srv)
            if receiver.startswith("ilm"):
                row["stored"] = h.ilm_instance_count(folder / "home")
            elif receiver == "storescp":
                row["stored"] = h.count_files(srv.folder)  # type: ignore[arg-type]
            row["ok"] = t.rc == 0 and row["stored"] == data.count
            if not row["ok"]:
                row["error"] = f"storescu rc={t.rc}, receiver holds {row['stored']} of {data.count}\n{t.tail()}\n{srv.log_tail()}"
        except h.BenchError as exc:
            row.update(ok=False, error=str(exc))
        finally:
            if srv is not None:
                h.stop_server(srv)
    if row.get("ok"):
        row["instances_per_s"] = data.count / row["seconds"]
        row["mb_per_s"] = data.total_bytes / 1e6 / row["seconds"]
    return row


def _start_profiler(pid: int, out: str) -> Any:
    import subprocess

    spy = h.VENV_BIN / "py-spy"
    if not spy.exists():
        raise h.BenchError("py-spy is not installed in .venv (pip install py-spy)")
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                             "--threads", "--output", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_profiler(proc: Any) -> None:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except Exception:
        h.stop_pid(proc.pid)


def run(ctx: Any) -> dict[str, Any]:
    data = ctx.dataset()
    receivers = list(RECEIVERS)
    notes = []
    if not h.ilm_has_command("serve"):
        receivers = [r for r in receivers if not r.startswith("ilm")]
        notes.append("`ilm serve` is not in this checkout yet: ilm was not measured.")
    timeout = 900.0 if not ctx.quick else 300.0
    rounds = []
    for r in range(ctx.rounds):
        order = receivers[r % len(receivers):] + receivers[: r % len(receivers)]
        results = {}
        for rec in order:
            ctx.log(f"cstore round {r + 1}/{ctx.rounds}: {rec} ...")
            row = _measure(rec, data, timeout)
            results[rec] = row
            ctx.log(f"  {rec}: " + (f"{row['instances_per_s']:.1f} inst/s ({row['seconds']:.1f} s)" if row.get("ok")
                                     else f"FAILED: {row.get('error', '')[:500]}"))
        rounds.append(results)
    profile = None
    missed = any((median(_ratios({"rounds": rounds}, a, b)) or 0) < t for a, b, t in TARGETS
                 if a in receivers and b in receivers)
    have_spy = (h.VENV_BIN / "py-spy").exists()
    if missed and not ctx.profile and "ilm" in receivers:
        notes.append("ilm missed a target; " + ("profiled it below." if have_spy else
                     "install py-spy into .venv (`.venv/bin/pip install py-spy`) to get a profile here."))
    if (ctx.profile or missed) and have_spy and "ilm" in receivers:
        out = str(h.RESULTS / "cstore-ilm-profile.txt")
        ctx.log("cstore: profiling ilm serve with py-spy (extra run, not counted) ...")
        row = _measure("ilm", data, timeout, profile=out)
        profile = {"file": "bench/results/cstore-ilm-profile.txt", "run": row,
                   "top": summarize_profile(out)}
    return {"instances": data.count, "bytes": data.total_bytes, "receivers": receivers, "rounds": rounds,
            "notes": notes, "profile": profile}


_WAIT = __import__("re").compile(r"^(\S*\.)?(select|wait|_wait_for_tstate_lock|sleep|poll|acquire|accept)\b")
_WAIT_LINE = __import__("re").compile(r"\b(sleep|select|wait|poll|acquire|accept)\(")


def _is_waiting(frame: str) -> bool:
    """Whether a py-spy frame "func (pkg/file.py:LINE)" sits in a sleep/select/wait (by its function or source line)."""
    import linecache
    import re

    m = re.search(r"\(([^()]+\.py):(\d+)\)$", frame)
    if _WAIT.search(frame):
        return True
    if not m:
        return False
    rel, line = m.group(1), int(m.group(2))
    for base in sys.path:
        path = os.path.join(base or ".", rel)
        if os.path.isfile(path):
            return bool(_WAIT_LINE.search(linecache.getline(path, line)))
    return False


def summarize_profile(path: str, n: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Top functions from py-spy's collapsed stacks: by own time, and by inclusive time for ilm's own code."""
    import re
    from collections import Counter

    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    ours: set[str] = set()
    lines_own: Counter[str] = Counter()
    total = waiting = 0
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        raw = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if raw and _is_waiting(raw[-1]):
            waiting += c
            total += c
            continue
        frames = []
        for f in stack.split(";"):
            if f.startswith(("process ", "thread ")):
                continue
            # "func (path/to/file.py:123)" -> "func (file.py)": aggregate the lines of a function
            key = re.sub(r"\((?:.*/)?([^/]+?):\d+\)$", r"(\1)", f)
            if "(ilm/" in f and "/cli/" not in f:
                ours.add(key)
            frames.append(key)
        if not frames:
            continue
        total += c
        own[frames[-1]] += c
        lines_own[re.sub(r"\((?:.*?/)?((?:ilm|pynetdicom|pydicom|sqlalchemy)/[^()]+)\)$", r"(\1)", raw[-1])] += c
        for f in set(frames):
            incl[f] += c
    if not total:
        return {}
    ilm_incl = Counter({f: c for f, c in incl.items() if f in ours})
    return {
        "samples": [("total", float(total))],
        "waiting": [("select/wait/sleep", round(100 * waiting / total, 1))],
        "own": [(f, round(100 * c / total, 1)) for f, c in own.most_common(n)],
        "lines": [(f, round(100 * c / total, 1)) for f, c in lines_own.most_common(n)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in ilm_incl.most_common(n)],
    }


def _rates(res: dict[str, Any], rec: str) -> list[float | None]:
    return [rd.get(rec, {}).get("instances_per_s") for rd in res["rounds"]]


def _ratios(res: dict[str, Any], a: str, b: str) -> list[float | None]:
    out: list[float | None] = []
    for rd in res["rounds"]:
        x, y = rd.get(a, {}).get("instances_per_s"), rd.get(b, {}).get("instances_per_s")
        out.append(x / y if x and y else None)
    return out


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    for a, b, t in TARGETS:
        rs = _ratios(res, a, b)
        out.append((f"C-STORE: ilm / {LABELS[b].split(' (')[0]}", ratio_cell(rs), f">= {t:g}x",
                    target_cell(rs, t).split(": ", 1)[1]))
    return out


def render(res: dict[str, Any]) -> str:
    n, mb = res["instances"], res["bytes"] / 1e6
    rows = []
    for rec in res["receivers"]:
        rates = _rates(res, rec)
        secs = [rd.get(rec, {}).get("seconds") for rd in res["rounds"] if rd.get(rec, {}).get("ok")]
        mbs = [rd.get(rec, {}).get("mb_per_s") for rd in res["rounds"]]
        fails = sum(1 for rd in res["rounds"] if rec in rd and not rd[rec].get("ok"))
        rows.append((LABELS[rec], fmt(median(rates)), spread(rates), fmt(median(mbs)), fmt(median(secs), 2),
                     f"{fails} failed" if fails else "all"))
    out = [f"{n:,} CT instances ({mb:,.0f} MB) sent by `storescu +sd +r --max-pdu 131072` over one association; "
           "each receiver fresh for every run and checked afterwards to hold every instance."]
    out.append(table(["receiver", "instances/s", "range", "MB/s", "seconds", f"verified {n} stored"], rows))
    rat = []
    for a, b in (("ilm", "orthanc"), ("ilm", "storescp"), ("ilm-nofsync", "orthanc"), ("ilm-nofsync", "storescp"),
                 ("ilm-nofsync", "ilm"), ("orthanc", "storescp")):
        if a in res["receivers"] and b in res["receivers"]:
            t = next((t for x, y, t in TARGETS if (x, y) == (a, b)), None)
            rs = _ratios(res, a, b)
            rat.append((f"{LABELS[a]} / {LABELS[b]}", ratio_cell(rs), target_cell(rs, t) if t else ""))
    if rat:
        out.append("Same-round ratios of instances/s:\n\n" + table(["ratio", "value", "target (issue 2)"], rat))
    for note in res.get("notes", []):
        out.append(f"Note: {note}")
    errors = [f"- {rec} round {i + 1}: {rd[rec].get('error', '')[:300]}" for i, rd in enumerate(res["rounds"])
              for rec in rd if not rd[rec].get("ok")]
    if errors:
        out.append("Failures:\n\n" + "\n".join(errors).replace("\n\n", "\n"))
    prof = res.get("profile")
    if prof and prof.get("top"):
        out.append(f"Profile of `ilm serve` during one extra run (py-spy, all threads, `{prof['file']}`); "
                   "share of the samples py-spy took of running threads (it slows the server down while "
                   f"sampling; {prof['top'].get('waiting', [('', 0)])[0][1]}% of them sat in select/wait/sleep "
                   "and are left out of the first table):\n\n"
                   + table(["function (own time)", "%"], [(f"`{f}`", p) for f, p in prof["top"].get("own", [])[:12]])
                   + "\n\n" + table(["ilm function (inclusive)", "%"],
                                     [(f"`{f}`", p) for f, p in prof["top"].get("inclusive", [])[:12]])
                   + "\n\n" + table(["hottest lines (own time)", "%"],
                                     [(f"`{f}`", p) for f, p in prof["top"].get("lines", [])[:8]]))
    return "\n\n".join(out)
