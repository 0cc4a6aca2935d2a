"""Access tracking: retrievals are noted in memory and written in batches.

Every retrieval (C-GET, C-MOVE, WADO-RS, export) calls ``AccessRecorder.note``;
a background thread writes the batch to the catalog every ``interval`` seconds
(or as soon as ``batch`` entries wait), so that a read never waits on a
catalog write. ``flush`` writes what is pending (called on shutdown).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

from ilm.catalog import Catalog
from ilm.catalog.access import AccessRow, record_accesses

__all__ = ["AccessRecorder", "INTERFACES"]

INTERFACES = ("c-get", "c-move", "wado-rs", "export")
log = logging.getLogger("ilm.access")


class AccessRecorder:
    def __init__(self, catalog: Catalog, *, interval: float = 2.0, batch: int = 500) -> None:
        self._catalog = catalog
        self._interval = interval
        self._batch = batch
        self._pending: list[AccessRow] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, study_uid: str, interface: str, who: str = "", instances: int = 0) -> None:
        if interface not in INTERFACES:
            raise ValueError(f"unknown interface {interface!r}")
        row = AccessRow(datetime.now(timezone.utc), study_uid, interface, who, instances)
        with self._lock:
            self._pending.append(row)
            full = len(self._pending) >= self._batch
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ilm-access", daemon=True)
                self._thread.start()
        if full:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the catalog may be briefly unavailable; keep the rows for the next try
                log.exception("could not write the access log; will retry")

    def flush(self) -> int:
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows:
            return 0
        try:
            with self._catalog.write() as conn:
                record_accesses(conn, rows)
        except Exception:
            with self._lock:
                self._pending = rows + self._pending
            raise
        return len(rows)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
