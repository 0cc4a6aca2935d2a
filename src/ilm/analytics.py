"""Archive analytics and cost projections: the service functions behind
``ilm stats``, ``ilm cost`` and ``ilm report`` (and, later, the REST API).

The database aggregates (:mod:`ilm.catalog.analytics`); the pure code
shapes and projects (:mod:`ilm.cost`). A projection simulates a sample of
the archive's studies, spread evenly over the catalog (all of them in an
archive smaller than the sample), under each scenario with the pure policy
evaluator, and scales the sample to the catalog's bytes; new data follows
the paths of a sample of the last year's arrivals. docs/cost.md explains
the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from ilm.catalog import Catalog
from ilm.catalog import analytics as q
from ilm.catalog import history as hq
from ilm.catalog.facts import load_policy_inputs
from ilm.config import Settings
from ilm.cost import shaping
from ilm.cost.history import merged_arrivals, monthly
from ilm.cost.model import TierPrice, monthly_storage_cost
from ilm.cost.projection import (
    AGE_BUCKETS, Cohort, Growth, Scenario, Segment, merge, project, read_profile,
)
from ilm.cost.simulate import monotone, path_of, reborn, study_age_months
from ilm.lifecycle.plan import PolicySource
from ilm.policy import PatientFacts, StudyFacts

__all__ = ["prices_of", "stats", "cost_report", "CostOptions", "NEVER_READ_DAYS", "READ_WINDOW_DAYS"]

NEVER_READ_DAYS = (30, 90, 365)
READ_WINDOW_DAYS = 365


def prices_of(settings: Settings) -> dict[str, TierPrice]:
    return {n: TierPrice(t.cost_per_gb_month, t.retrieval_cost_per_gb, t.min_storage_days, t.put_cost_per_1000,
                         t.get_cost_per_1000, t.pack_studies)
            for n, t in settings.tiers.items()}


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(), tzinfo=timezone.utc)


def stats(catalog: Catalog, *, today: date, largest: int = 10,
          never_read_days: Sequence[int] = NEVER_READ_DAYS) -> dict[str, Any]:
    """The archive's composition, growth and use (``ilm stats``)."""
    now = _midnight(today)
    with catalog.read() as conn:
        groups = q.study_groups(conn, today=today, age_bounds_months=AGE_BUCKETS, never_read_days=never_read_days)
        reads = q.reads_by_age(conn, now - timedelta(days=READ_WINDOW_DAYS), AGE_BUCKETS)
        priors = q.patients_by_study_count(conn)
        big = q.largest_studies(conn, largest)
        history = monthly(hq.tier_rows(conn), hq.received_rows(conn))
    m = shaping.marginals(groups)
    total = m.size_bytes
    months = [(k, n, b) for k, n, _i, b in m.rows("month")]
    pats = shaping.priors_report(priors)
    return {
        "as_of": today.isoformat(),
        "totals": {"studies": m.studies, "instances": m.instances, "bytes": total, "patients": pats["patients"]},
        "by_modality": sorted(shaping.composition(m.rows("modalities"), total), key=lambda r: -r["bytes"]),
        "by_year": shaping.composition(m.rows("year"), total, unknown="(no date)"),
        "by_tier": shaping.composition(m.rows("tier"), total, unknown="(on no tier)"),
        "by_size": shaping.composition(m.rows("size"), total, labels=shaping.size_labels(q.SIZE_BUCKETS)),
        "growth": {"by_month": [{"month": k, "studies": n, "bytes": b} for k, n, b in months],
                   **shaping.growth_from_history(months, today)},
        "reads_by_age": {"window_days": READ_WINDOW_DAYS,
                         "buckets": shaping.reads_report(reads, m.rows("age"), READ_WINDOW_DAYS / (365.25 / 12))},
        "never_read_after": shaping.never_read_report(zip(never_read_days, m.older, m.unread)),
        "patients": pats,
        "largest_studies": big,
        "tier_history": history,
    }


@dataclass(frozen=True)
class CostOptions:
    years: int = 10
    growth_gb_per_month: float | None = None   # given: replaces the catalog's history
    growth_percent: float | None = None        # given: yearly growth of the monthly arrivals
    sample: int = 1000                         # studies simulated (all of them in a smaller archive)
    templates: int = 250                       # recent arrivals whose paths new data follows


def _growth(months: list[tuple[str, int, int]], today: date, opts: CostOptions,
            recorded: bool = False) -> tuple[Growth, dict[str, Any]]:
    hist = shaping.growth_from_history(months, today)
    if recorded:
        hist["source"] = hist["source"].replace(
            "catalog: bytes received", "catalog and its snapshots (the larger per month): bytes received", 1)
    per_month = hist["bytes_per_month"] if opts.growth_gb_per_month is None else opts.growth_gb_per_month * 1e9
    rate = hist["yearly_rate"] if opts.growth_percent is None else opts.growth_percent / 100
    given = opts.growth_gb_per_month is not None or opts.growth_percent is not None
    source = hist["source"] if not given else "given" + (
        "" if opts.growth_gb_per_month is not None and opts.growth_percent is not None else
        " (the rest from the catalog's history)")
    return Growth(per_month, rate), {"bytes_per_month": int(per_month), "yearly_rate": rate, "source": source}


def _hottest(study: StudyFacts, order: list[str]) -> str | None:
    on = [t for t in order if t in study.tiers]
    return on[0] if on else (study.tiers[0] if study.tiers else None)


def _aggregates(catalog: Catalog, today: date) -> tuple[list[q.CostGroup], dict[str, int], list[tuple[int, int, int]]]:
    """The catalog's side of a projection: one grouped pass over the studies and the reads by age
    (each on its own connection, so that both run while the sample is simulated)."""
    now = _midnight(today)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ilm-cost") as pool:
        def read_ages() -> list[tuple[int, int, int]]:
            with catalog.read() as conn:
                return q.reads_by_age(conn, now - timedelta(days=READ_WINDOW_DAYS), AGE_BUCKETS)

        reads = pool.submit(read_ages)
        with catalog.read() as conn:
            groups, on_tiers = q.cost_groups(conn, today=today, bounds_months=AGE_BUCKETS,
                                             months_since=_midnight(date(today.year - 3, 1, 1)))
        return groups, on_tiers, reads.result()


def cost_report(catalog: Catalog, settings: Settings, policies: Sequence[PolicySource], *, today: date,
                opts: CostOptions = CostOptions()) -> dict[str, Any]:
    """Current monthly cost and a projection over ``opts.years`` years: keep everything on the
    first tier (the baseline), the archive as it is, and each policy; savings against the baseline.

    The catalog is read in two passes (:func:`_aggregates`: the studies grouped by tier, age and
    month received; the reads by study age) on other threads while the sample's paths are simulated
    with the pure evaluator (the database leaves Python's lock while it counts)."""
    prices = prices_of(settings)
    order = list(settings.tiers)
    first, ingest = order[0], settings.ingest_tier
    now = _midnight(today)
    months_n = opts.years * 12
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ilm-cost") as pool:
        counted = pool.submit(_aggregates, catalog, today)
        with catalog.read() as conn:
            uids = q.sample_study_uids(conn, opts.sample)
            fresh = q.sample_study_uids(conn, opts.templates, received_since=now - timedelta(days=365),
                                        candidates=opts.templates * 40)
            inputs = load_policy_inputs(conn, list(dict.fromkeys(uids + fresh)))
            arrived = hq.received_rows(conn, date(today.year - 3, 1, 1))
        facts = {s.study_uid: s for s in inputs.studies}
        sample = [(s, tier) for s in (facts[u] for u in uids if u in facts) if (tier := _hottest(s, order))]
        recent = [reborn(s, inputs.patients.get(s.patient_key), today) for s in (facts[u] for u in fresh if u in facts)]
        # each scenario's path of every sampled study (existing) and of every recent arrival (new data)
        paths: list[tuple[str, str, str, list[tuple[Segment, ...]], list[tuple[Segment, ...]]]] = [
            ("baseline", "", f"keep everything on {first}", [(Segment(0, first),)] * len(sample),
             [(Segment(0, first),)] * len(recent)),
            ("as-is", "", "as it is, no policy", [(Segment(0, tier),) for _s, tier in sample],
             [(Segment(0, ingest),)] * len(recent)),
        ]
        for src in policies:
            pol, grows = src.policy, monotone(src.policy)
            paths.append(("policy", src.path, pol.name,
                          [path_of(pol, s, inputs.patients.get(s.patient_key), tier, today, months_n, grows=grows)
                           for s, tier in sample],
                          [path_of(pol, s2, p2, ingest, today, months_n, grows=grows) for s2, p2 in recent]))
        groups, on_tiers, reads = counted.result()
    held = [(k, sum(g.studies for g in groups if g.age_bucket == k), sum(g.instances for g in groups if g.age_bucket == k),
             sum(g.size_bytes for g in groups if g.age_bucket == k)) for k in range(len(AGE_BUCKETS) + 1)]
    by_month: dict[str, list[int]] = {}
    for g in groups:
        if g.month:
            acc = by_month.setdefault(g.month, [0, 0])
            acc[0] += g.studies
            acc[1] += g.size_bytes
    recorded: dict[str, tuple[int, int]] = {}
    for d in arrived:  # what the snapshots counted as it arrived (studies deleted since included)
        n, b = recorded.get(d.day.isoformat()[:7], (0, 0))
        recorded[d.day.isoformat()[:7]] = (n + d.studies, b + d.size_bytes)
    months = merged_arrivals([(m, n, b) for m, (n, b) in sorted(by_month.items())], recorded)
    studies_total = sum(g.studies for g in groups)
    growth, growth_info = _growth(months, today, opts, recorded=bool(recorded))
    window = READ_WINDOW_DAYS / (365.25 / 12)
    by_bucket = {k: i for k, _n, i in reads}
    profile = read_profile([by_bucket.get(k, 0) for k in range(len(AGE_BUCKETS) + 1)],
                           [i for _k, _n, i, _b in held], window)
    on_tier_bytes = sum(on_tiers.values())
    sample_bytes = sum(s.size_bytes for s, _t in sample)
    scale = on_tier_bytes / sample_bytes if sample_bytes else 0.0
    runs: list[tuple[str, str, Scenario]] = []
    for kind, source, name, existing_paths, arriving_paths in paths:
        existing = [Cohort(s.size_bytes * scale, s.instance_count * scale, scale, study_age_months(s, today),
                           float(max(0, (today - s.received_at.date()).days if s.received_at else 0)), path)
                    for (s, _t), path in zip(sample, existing_paths)]
        templates = [Cohort(float(s.size_bytes), float(s.instance_count), 1.0, 0, 0.0, path)
                     for (s, _p), path in zip(recent, arriving_paths)]
        runs.append((kind, source, Scenario(name, merge(existing), merge(templates), first_tier=first)))
    projections = [(kind, source, project(sc, prices, years=opts.years, growth=growth, reads=profile))
                   for kind, source, sc in runs]
    as_is = projections[1][2]
    storage_now = monthly_storage_cost(on_tiers, prices)
    return {
        "as_of": today.isoformat(),
        "years": opts.years,
        "current": {"bytes_by_tier": dict(sorted(on_tiers.items())), "monthly_storage": shaping.money(storage_now),
                    "monthly_retrieval": shaping.money(max(0.0, as_is.monthly_now - storage_now)),
                    "monthly_total": shaping.money(max(as_is.monthly_now, storage_now))},
        "prices": {n: {"per_gb_month": p.per_gb_month, "retrieval_per_gb": p.retrieval_per_gb,
                       "min_storage_days": p.min_storage_days, "put_per_1000": p.put_per_1000,
                       "get_per_1000": p.get_per_1000, "packed": p.packed} for n, p in prices.items()},
        "growth": growth_info,
        "reads": {"window_days": READ_WINDOW_DAYS, "ages": shaping.age_labels(),
                  "monthly_read_rate": [round(r, 6) for r in profile.rates]},
        "sample": {"studies": len(sample), "of": studies_total, "templates": len(recent), "scale": round(scale, 4)},
        "scenarios": shaping.comparison(projections),
    }
