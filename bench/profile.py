"""Profiles of ilm with py-spy (when it is installed in .venv): start, stop, summarize, render."""

from __future__ import annotations

import linecache
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

from bench import harness as h
from bench.report import table

__all__ = ["start_profiler", "stop_profiler", "summarize_profile", "render_profile"]


def start_profiler(pid: int, out: str) -> "subprocess.Popen[bytes]":
    """py-spy recording every thread of ``pid`` as collapsed stacks into ``out`` until stop_profiler()."""
    spy = h.VENV_BIN / "py-spy"
    if not spy.exists():
        raise h.BenchError("py-spy is not installed in .venv (pip install py-spy)")
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                             "--threads", "--idle", "--output", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(proc: "subprocess.Popen[bytes]") -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        h.stop_pid(proc.pid)


_WAIT = re.compile(r"^(\S*\.)?(select|wait|_wait_for_tstate_lock|sleep|poll|acquire|accept|recv|recv_into)\b")
_WAIT_LINE = re.compile(r"\b(sleep|select|wait|poll|acquire|accept|recv|recv_into)\(")


def source_line(frame: str) -> str:
    """The source text of a py-spy frame "func (pkg/file.py:LINE)", found on sys.path; "" if unknown."""
    m = re.search(r"\(([^()]+\.py):(\d+)\)$", frame)
    if not m:
        return ""
    rel, line = m.group(1), int(m.group(2))
    for base in sys.path:
        path = os.path.join(base or ".", rel)
        if os.path.isfile(path):
            return linecache.getline(path, line).strip()
    return ""


def _is_waiting(frame: str) -> bool:
    """Whether a py-spy frame sits in a sleep/select/wait/recv (by its function or its source line)."""
    return bool(_WAIT.search(frame) or _WAIT_LINE.search(source_line(frame)))


def _key(frame: str) -> str:
    """"func (path/to/file.py:123)" -> "func (file.py)": the lines of a function together."""
    return re.sub(r"\((?:.*/)?([^/]+?):\d+\)$", r"(\1)", frame)


def summarize_profile(path: str, n: int = 15) -> dict[str, Any]:
    """What py-spy's collapsed stacks (``--threads --idle``) say about ilm.

    - ``own``/``lines``: where the threads that were running (not sitting in
      select/wait/sleep/recv) spent their time, by function and by line, as a
      share of those running samples;
    - ``thread``: the thread that ran most of ilm's ingest code (for C-STORE
      the association's thread, which handles one instance after the other),
      its wall time split into ilm's functions (inclusive) and the rest
      (pynetdicom or the web server receiving and answering, idle between
      requests); py-spy with --idle samples a thread whatever it does, so the
      shares are shares of that thread's wall time.
    """
    own: Counter[str] = Counter()
    lines_own: Counter[str] = Counter()
    running = waiting = 0
    per_thread: Counter[str] = Counter()
    thread_ilm: dict[str, Counter[str]] = {}
    ilm_busy: Counter[str] = Counter()  # samples a thread was RUNNING ilm code (a background loop mostly sleeps in it)
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        parts = stack.split(";")
        thread = next((re.sub(r"@\d+$", "", p.split(": ", 1)[-1]) + " " + p.split(":", 1)[0].split(" ", 1)[-1]
                       for p in parts if p.startswith("thread ")), "?")
        raw = [f for f in parts if not f.startswith(("process ", "thread "))]
        if not raw:
            continue
        per_thread[thread] += c
        is_waiting = _is_waiting(raw[-1])
        ilm_frames = {_key(f) for f in raw if "(ilm/" in f and "/cli/" not in f}
        if ilm_frames:
            bucket = thread_ilm.setdefault(thread, Counter())
            for f in ilm_frames:
                bucket[f] += c
            if not is_waiting:
                ilm_busy[thread] += c
        if is_waiting:
            waiting += c
            continue
        running += c
        own[_key(raw[-1])] += c
        lines_own[re.sub(r"\((?:.*?/)?((?:ilm|pynetdicom|pydicom|sqlalchemy|uvicorn|h11|python_multipart|starlette)/[^()]+)\)$",
                         r"(\1)", raw[-1])] += c
    if not running:
        return {}
    out: dict[str, Any] = {
        "running_samples": running,
        "waiting_share": round(100 * waiting / (running + waiting), 1),
        "own": [(f, round(100 * c / running, 1)) for f, c in own.most_common(n)],
        "lines": [(f, round(100 * c / running, 1), source_line(f)) for f, c in lines_own.most_common(n)],
    }
    if thread_ilm:
        name = max(thread_ilm, key=lambda t: ilm_busy[t])
        wall = per_thread[name]
        out["thread"] = {
            "name": name, "samples": wall, "threads_in_ilm": len(thread_ilm),
            "inclusive": [(f, round(100 * c / wall, 1)) for f, c in thread_ilm[name].most_common(n)],
        }
    return out


def render_profile(prof: dict[str, Any], when: str, instances: int | None = None) -> str:
    """Markdown for a profile; with ``instances``, the thread's shares also as milliseconds per instance
    (of the profiled run, which py-spy slows down)."""
    top = prof["top"]
    parts = [f"Profile of `ilm serve` {when} (py-spy `--threads --idle`, raw stacks in `{prof['file']}`; "
             "py-spy slows the server down while it samples)."]
    th = top.get("thread")
    seconds = (prof.get("run") or {}).get("seconds")
    if th:
        ms = (lambda p: f"{p / 100 * seconds / instances * 1000:.2f}") if instances and seconds else None
        rows = [(f"`{f}`", p) + ((ms(p),) if ms else ()) for f, p in th["inclusive"][:10]]
        head = ["ilm function (inclusive)", "% of the thread's wall time"] + (["ms per instance"] if ms else [])
        parts.append(f"Wall time of the thread that ran most of ilm's ingest (`{th['name']}`; "
                     f"{th['threads_in_ilm']} thread(s) ran ilm code); the rest of its time is the "
                     "network front-end receiving, answering and waiting for the next request:\n\n" + table(head, rows))
    parts.append(f"Where the running threads spent their time ({top.get('waiting_share')}% of all samples sat in "
                 "select/wait/sleep/recv and are left out):\n\n"
                 + table(["function (own time)", "% of running samples"], [(f"`{f}`", p) for f, p in top.get("own", [])[:10]])
                 + "\n\n" + table(["hottest lines (own time)", "code", "% of running samples"],
                                   [(f"`{x[0]}`", f"`{x[2]}`" if len(x) > 2 and x[2] else "", x[1])
                                    for x in top.get("lines", [])[:8]]))
    return "\n\n".join(parts)
