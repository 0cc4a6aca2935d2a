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
                             "--threads", "--output", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(proc: "subprocess.Popen[bytes]") -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        h.stop_pid(proc.pid)


_WAIT = re.compile(r"^(\S*\.)?(select|wait|_wait_for_tstate_lock|sleep|poll|acquire|accept)\b")
_WAIT_LINE = re.compile(r"\b(sleep|select|wait|poll|acquire|accept)\(")


def _is_waiting(frame: str) -> bool:
    """Whether a py-spy frame "func (pkg/file.py:LINE)" sits in a sleep/select/wait (by its function or source line)."""
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


def render_profile(prof: dict[str, Any], when: str) -> str:
    top = prof["top"]
    waiting = top.get("waiting", [("", 0)])[0][1]
    return (f"Profile of `ilm serve` {when} (py-spy, all threads, `{prof['file']}`): share of the samples py-spy "
            f"took of running threads (it slows the server down while sampling; {waiting}% of the samples sat in "
            "select/wait/sleep and are left out below):\n\n"
            + table(["function (own time)", "%"], [(f"`{f}`", p) for f, p in top.get("own", [])[:12]])
            + "\n\n" + table(["ilm function (inclusive)", "%"], [(f"`{f}`", p) for f, p in top.get("inclusive", [])[:12]])
            + "\n\n" + table(["hottest lines (own time)", "%"], [(f"`{f}`", p) for f, p in top.get("lines", [])[:8]]))
