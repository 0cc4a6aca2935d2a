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
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from ilm.catalog import Catalog
from ilm.catalog import analytics as q
from ilm.catalog.facts import load_policy_inputs
from ilm.catalog.plans import tier_bytes
from ilm.config import Settings
from ilm.cost import shaping
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
    }


@dataclass(frozen=True)
class CostOptions:
    years: int = 10
    growth_gb_per_month: float | None = None   # given: replaces the catalog's history
    growth_percent: float | None = None        # given: yearly growth of the monthly arrivals
    sample: int = 1000                         # studies simulated (all of them in a smaller archive)
    templates: int = 250                       # recent arrivals whose paths new data follows


def _growth(months: list[tuple[str, int, int]], today: date, opts: CostOptions) -> tuple[Growth, dict[str, Any]]:
    hist = shaping.growth_from_history(months, today)
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


def cost_report(catalog: Catalog, settings: Settings, policies: Sequence[PolicySource], *, today: date,
                opts: CostOptions = CostOptions()) -> dict[str, Any]:
    """Current monthly cost and a projection over ``opts.years`` years: keep everything on the
    first tier (the baseline), the archive as it is, and each policy; savings against the baseline."""
    prices = prices_of(settings)
    order = list(settings.tiers)
    first, ingest = order[0], settings.ingest_tier
    now = _midnight(today)
    with catalog.read() as conn:
        months = q.received_by_month(conn, _midnight(date(today.year - 3, 1, 1)))
        held = q.held_by_age(conn, today, AGE_BUCKETS)
        on_tiers = tier_bytes(conn)
        studies_total = sum(n for _k, n, _i, _b in held)
        reads = q.reads_by_age(conn, now - timedelta(days=READ_WINDOW_DAYS), AGE_BUCKETS)
        uids = q.sample_study_uids(conn, opts.sample)
        fresh = q.sample_study_uids(conn, opts.templates, received_since=now - timedelta(days=365),
                                    candidates=opts.templates * 40)
        inputs = load_policy_inputs(conn, list(dict.fromkeys(uids + fresh)))
    growth, growth_info = _growth(months, today, opts)
    window = READ_WINDOW_DAYS / (365.25 / 12)
    by_bucket = {k: i for k, _n, i in reads}
    held_inst = {int(k): i for k, _n, i, _b in held}
    profile = read_profile([by_bucket.get(k, 0) for k in range(len(AGE_BUCKETS) + 1)],
                           [held_inst.get(k, 0) for k in range(len(AGE_BUCKETS) + 1)], window)
    facts = {s.study_uid: s for s in inputs.studies}
    sample = [facts[u] for u in uids if u in facts]
    recent = [facts[u] for u in fresh if u in facts]
    on_tier_bytes = sum(on_tiers.values())
    sample_bytes = sum(s.size_bytes for s in sample)
    scale = on_tier_bytes / sample_bytes if sample_bytes else 0.0
    months_n = opts.years * 12

    def scenario(name: str, path: Any, arrive_path: Any) -> Scenario:
        existing = []
        for s in sample:
            tier = _hottest(s, order)
            if tier is None:
                continue
            held_days = (today - s.received_at.date()).days if s.received_at else 0
            existing.append(Cohort(s.size_bytes * scale, s.instance_count * scale, scale, study_age_months(s, today),
                                   float(max(0, held_days)), path(s, tier, inputs.patients.get(s.patient_key))))
        templates = []
        for s in recent:
            s2, p2 = reborn(s, inputs.patients.get(s.patient_key), today)
            templates.append(Cohort(float(s.size_bytes), float(s.instance_count), 1.0, 0, 0.0,
                                    arrive_path(s2, p2)))
        return Scenario(name, merge(existing), merge(templates), first_tier=first)

    runs: list[tuple[str, str, Scenario]] = [
        ("baseline", "", scenario(f"keep everything on {first}", lambda s, tier, p: (Segment(0, first),),
                                  lambda s, p: (Segment(0, first),))),
        ("as-is", "", scenario("as it is, no policy", lambda s, tier, p: (Segment(0, tier),),
                               lambda s, p: (Segment(0, ingest),))),
    ]
    for src in policies:
        pol = src.policy
        grows = monotone(pol)

        def on(s: StudyFacts, tier: str, p: PatientFacts | None, pol: Any = pol, grows: bool = grows) -> tuple[Segment, ...]:
            return path_of(pol, s, p, tier, today, months_n, grows=grows)

        def arriving(s: StudyFacts, p: PatientFacts | None, pol: Any = pol, grows: bool = grows) -> tuple[Segment, ...]:
            return path_of(pol, s, p, ingest, today, months_n, grows=grows)

        runs.append(("policy", src.path, scenario(pol.name, on, arriving)))
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
