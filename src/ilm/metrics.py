"""Prometheus metrics of one archive (``GET /metrics``, docs/api.md).

Each ArchiveService owns one ``ArchiveMetrics`` with its own registry, so
two services in one process (tests, a bench) never mix their counts. The
service layer increments the counters where the work happens (ingest, plan,
apply, watermark runs); what lives in the catalog (studies and bytes per tier,
restores pending) is read at scrape time through ``snapshot``, cached for
``cache_seconds`` so that a scrape every few seconds costs one catalog query
at most. A catalog that cannot be read is reported as ``ilm_catalog_up 0``,
never as a failed scrape.

    ilm_tier_studies{tier}                   gauge    studies with a copy on the tier
    ilm_tier_bytes{tier}                     gauge    bytes of the copies on the tier
    ilm_restores_pending                     gauge    restores from archive tiers requested or under way
    ilm_catalog_up                           gauge    1 when the last snapshot could read the catalog
    ilm_ingest_instances_total{interface}    counter  instances stored (dicom, stow-rs, import)
    ilm_ingest_bytes_total{interface}        counter  bytes of the instances stored
    ilm_moves_total{result}                  counter  study moves by plan applies (done, failed)
    ilm_moved_bytes_total                    counter  bytes moved by plan applies
    ilm_policy_run_seconds{kind}             histogram  plan and apply durations (plan, apply)
    ilm_promotions_total{result}             counter  promotions on read / prefetch (promoted, failed)
    ilm_promoted_bytes_total                 counter  bytes moved up by promotions
    ilm_watermark_runs_total                 counter  watermark runs (ilm watermark, ilm serve's checks)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ArchiveMetrics", "CatalogSnapshot", "PromotionCounts", "interface_of", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# No ``*_created`` series: a scrape is read by rate()/increase(), which need none (process-wide switch).
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

# Plans of a few studies take milliseconds, of a million studies minutes.
_RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """What the catalog says at one moment: per tier (studies, bytes), restores pending."""

    tiers: dict[str, tuple[int, int]] = field(default_factory=dict)
    restores_pending: int = 0


@dataclass(frozen=True, slots=True)
class PromotionCounts:
    promoted: int = 0
    failed: int = 0
    bytes_moved: int = 0


def interface_of(source: str) -> str:
    """The interface an instance arrived by, from its ingest source (``dicom:AE@host``, ``stow-rs:host``, a path)."""
    if source.startswith("dicom:"):
        return "dicom"
    if source.startswith("stow-rs:"):
        return "stow-rs"
    return "import"


class _CatalogCollector(Collector):
    def __init__(self, snapshot: Callable[[], CatalogSnapshot], promotions: Callable[[], PromotionCounts],
                 cache_seconds: float) -> None:
        self._snapshot = snapshot
        self._promotions = promotions
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, CatalogSnapshot | None] = (-1e18, None)

    def _current(self) -> CatalogSnapshot | None:
        with self._lock:  # concurrent scrapes share one catalog query
            taken, snap = self._cached
            if time.monotonic() - taken >= self._cache_seconds:
                try:
                    snap = self._snapshot()
                except Exception:  # the catalog is down: say so in ilm_catalog_up, do not fail the scrape
                    snap = None
                self._cached = (time.monotonic(), snap)
            return snap

    def collect(self) -> Iterator[Metric]:
        snap = self._current()
        up = GaugeMetricFamily("ilm_catalog_up", "1 when the catalog could be read for this scrape.")
        up.add_metric([], 1.0 if snap is not None else 0.0)
        yield up
        if snap is not None:
            studies = GaugeMetricFamily("ilm_tier_studies", "Studies with a copy on the tier.", labels=["tier"])
            size = GaugeMetricFamily("ilm_tier_bytes", "Bytes of the copies on the tier.", labels=["tier"])
            for tier, (n, b) in sorted(snap.tiers.items()):
                studies.add_metric([tier], n)
                size.add_metric([tier], b)
            yield studies
            yield size
            pending = GaugeMetricFamily("ilm_restores_pending", "Restores from archive tiers requested or under way.")
            pending.add_metric([], snap.restores_pending)
            yield pending
        p = self._promotions()
        promotions = CounterMetricFamily("ilm_promotions", "Promotions on read and prefetches of priors.",
                                         labels=["result"])
        promotions.add_metric(["promoted"], p.promoted)
        promotions.add_metric(["failed"], p.failed)
        yield promotions
        promoted = CounterMetricFamily("ilm_promoted_bytes", "Bytes moved up a tier by promotions.")
        promoted.add_metric([], p.bytes_moved)
        yield promoted


class ArchiveMetrics:
    """The counters of one archive and a registry that renders them with the catalog's figures."""

    def __init__(self, snapshot: Callable[[], CatalogSnapshot],
                 promotions: Callable[[], PromotionCounts] = PromotionCounts, *, cache_seconds: float = 5.0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.ingest_instances = Counter("ilm_ingest_instances", "Instances stored, by interface.", ["interface"],
                                        registry=r)
        self.ingest_bytes = Counter("ilm_ingest_bytes", "Bytes of the instances stored, by interface.",
                                    ["interface"], registry=r)
        self.moves = Counter("ilm_moves", "Study moves by plan applies, by result.", ["result"], registry=r)
        self.moved_bytes = Counter("ilm_moved_bytes", "Bytes moved between tiers by plan applies.", registry=r)
        self.policy_runs = Histogram("ilm_policy_run_seconds", "Duration of policy runs: plan and apply.", ["kind"],
                                     buckets=_RUN_BUCKETS, registry=r)
        self.watermark_runs = Counter("ilm_watermark_runs", "Watermark runs.", registry=r)
        for interface in ("dicom", "stow-rs", "import"):  # present from the start: rate() needs a zero
            self.ingest_instances.labels(interface)
            self.ingest_bytes.labels(interface)
        for result in ("done", "failed"):
            self.moves.labels(result)
        for kind in ("plan", "apply"):
            self.policy_runs.labels(kind)
        r.register(_CatalogCollector(snapshot, promotions, cache_seconds))

    def stored(self, source: str, size: int) -> None:
        interface = interface_of(source)
        self.ingest_instances.labels(interface).inc()
        self.ingest_bytes.labels(interface).inc(size)

    def moved(self, *, done: int, failed: int, nbytes: int) -> None:
        self.moves.labels("done").inc(done)
        self.moves.labels("failed").inc(failed)
        self.moved_bytes.inc(nbytes)

    @contextmanager
    def policy_run(self, kind: str) -> Iterator[None]:
        """Time a plan or an apply (also one that fails)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.policy_runs.labels(kind).observe(time.perf_counter() - start)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        out: Any = generate_latest(self.registry)
        return bytes(out)
