"""Applies running in the background, with their progress (REST API and dashboard).

``ilm apply`` runs in the foreground with a progress bar; over HTTP an apply
is started here, runs in a thread of the serving process, and its progress is
read by polling (``GET /api/plans/{id}/progress``, the dashboard's plan page).
One apply per plan at a time: a second start while one runs joins it. The
record of a finished apply stays until the process ends (the plan's state and
every action's state are in the catalog in any case).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

log = logging.getLogger("ilm.jobs")

__all__ = ["ApplyProgress", "ApplyJobs"]


@dataclass(frozen=True, slots=True)
class ApplyProgress:
    """Where one background apply stands. ``state``: running | done | failed."""

    plan_id: str
    state: str
    approved_by: str
    total: int
    handled: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_moved: int = 0
    error: str = ""
    stopped: str = ""
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    finished_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def percent(self) -> float:
        return 100.0 if self.total == 0 else min(100.0, 100.0 * self.handled / self.total)


# apply(plan_id, approved_by, progress) -> report with done, skipped, failed, bytes_moved, stopped
ApplyFn = Callable[[str, str, Callable[[Any, str], None]], Any]


class ApplyJobs:
    """Background applies of one service, by plan id."""

    def __init__(self, apply: ApplyFn) -> None:
        self._apply = apply
        self._lock = threading.Lock()
        self._jobs: dict[str, ApplyProgress] = {}
        self._threads: dict[str, threading.Thread] = {}

    def start(self, plan_id: str, approved_by: str, total: int) -> ApplyProgress:
        """Start applying ``plan_id`` in a thread (or return the apply already running)."""
        with self._lock:
            current = self._jobs.get(plan_id)
            if current is not None and current.running:
                return current
            self._jobs[plan_id] = ApplyProgress(plan_id, "running", approved_by, total)
            t = threading.Thread(target=self._run, args=(plan_id, approved_by), name=f"ilm-apply-{plan_id}",
                                 daemon=True)
            self._threads[plan_id] = t
            t.start()
            return self._jobs[plan_id]

    def status(self, plan_id: str) -> ApplyProgress | None:
        with self._lock:
            return self._jobs.get(plan_id)

    def all(self) -> list[ApplyProgress]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started_at, reverse=True)

    def wait(self, plan_id: str, timeout: float | None = None) -> ApplyProgress | None:
        """Wait for the apply of ``plan_id`` to end (tests, shutdown)."""
        t = self._threads.get(plan_id)
        if t is not None:
            t.join(timeout)
        return self.status(plan_id)

    def _update(self, plan_id: str, **changes: Any) -> None:
        with self._lock:
            self._jobs[plan_id] = replace(self._jobs[plan_id], **changes)

    def _run(self, plan_id: str, approved_by: str) -> None:
        counts = {"handled": 0, "done": 0, "skipped": 0, "failed": 0}

        def progress(action: Any, state: str) -> None:
            counts["handled"] += 1
            if state in ("done", "skipped", "failed"):
                counts[state] += 1
            self._update(plan_id, **counts)

        try:
            report = self._apply(plan_id, approved_by, progress)
        except Exception as exc:  # the error is the job's result; the caller polls for it
            log.error("apply of %s failed: %s", plan_id, exc)
            self._update(plan_id, state="failed", error=f"{exc}", finished_at=datetime.now(timezone.utc))
            return
        self._update(plan_id, state="done", done=report.done, skipped=len(report.skipped), failed=len(report.failed),
                     bytes_moved=report.bytes_moved, stopped=report.stopped,
                     finished_at=datetime.now(timezone.utc))
