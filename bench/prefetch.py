"""Prefetch of priors (issue 4): a simulated year of arrivals and reads.

A catalog-level simulation, no bytes moved: the synthetic generator
(``ilm.synth.plan``, scale 1, real-world study sizes) gives every study its
acquisition time, its patient and its reads (first-month reads, later
re-reads with the Groningen age distribution, and the comparison reads of
a prior when the patient comes back). The whole history is replayed (so the
tiers are in their steady state when the measured year begins); the figures
are for the last 365 days before the generator's reference date.

Tiers and prices are those of the default configuration (``ilm init``): hot
(filesystem, 0.10 $/GB-month) and warm (filesystem, 0.03 $/GB-month); hot
gets ``cooling_days = 31`` (FabricPool's default for its auto policy), run
once a day at midnight as ``ilm tiering run`` does. A second price list puts
S3 Standard-IA (0.0125 $/GB-month, 0.01 $/GB retrieved: the commented
``[tiers.cloud]`` of the default configuration) in place of warm. Three
retrieval policies on the lower tier:

- ``never``: cooling only; what cooled stays down;
- ``on_read``: a read of a cooled study is served from the lower tier, then
  the study is promoted to hot;
- ``prefetch_priors`` (which includes on_read): when a new study arrives,
  the patient's relevant priors (default prefetch settings: the newest 3 of
  the same modality or body part within 10 years) are promoted at once.

The decisions are the product's pure functions (``ilm.policy.tiering``:
``cooling_decision``, ``promotion_check``, ``relevant_priors``). A
promotion is taken to complete before the first comparison read (the
generator opens priors 5 minutes to 10 hours after the new study); the
per-minute promotion cap is not modelled (arrivals are about 50 a day here).

A "prior read" is a read of a study within 12 hours after a newer study of
the same patient arrived: the radiologist comparing.
"""

from __future__ import annotations

import heapq
import time
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any

from bench.report import fmt, table
from ilm.config import DEFAULT_CONFIG
from ilm.policy import StudyFacts
from ilm.policy.tiering import (
    PrefetchRule,
    TierRole,
    cooling_decision,
    promotion_check,
    relevant_priors,
)
from ilm.synth.plan import StudySpec, SynthConfig, generate

NAME = "prefetch"
TITLE = "Prefetch of priors: a simulated year of arrivals and reads"
FULL = 100_000
QUICK = 20_000
REFERENCE = date(2026, 1, 1)
COOLING_DAYS = 31
PRIOR_WINDOW = timedelta(hours=12)
STRATEGIES = ("never", "on_read", "prefetch_priors")
LABELS = {
    "all-hot": "no tiering (everything on hot)",
    "never": "cooling only (`never`)",
    "on_read": "cooling + `on_read`",
    "prefetch_priors": "cooling + `prefetch_priors` (prefetch and on_read)",
}
S3_IA = (0.0125, 0.01)  # $/GB-month, $/GB retrieved (RESEARCH.md, S3 Standard-IA)
_GB = 1e9
_MONTH_S = 365.2425 / 12 * 86400


def _prices() -> dict[str, tuple[float, float]]:
    tiers = tomllib.loads(DEFAULT_CONFIG)["tiers"]
    return {name: (float(t.get("cost_per_gb_month", 0)), float(t.get("retrieval_cost_per_gb", 0)))
            for name, t in tiers.items()}


def _facts(s: StudySpec) -> StudyFacts:
    return StudyFacts(
        study_uid=s.study_uid, study_date=s.study_date if s.study_date_raw else None,
        modalities=s.modalities, body_parts=tuple(sorted({se.body_part for se in s.series if se.body_part})),
    )


@dataclass
class _Result:
    prior_reads: int = 0
    prior_hot: int = 0
    reads: int = 0
    reads_hot: int = 0
    promotions: int = 0
    promoted_bytes: int = 0
    prefetches: int = 0
    prefetch_used: int = 0          # prefetched priors read before they cooled again
    demotions: int = 0
    demoted_bytes: int = 0
    warm_read_bytes: int = 0        # bytes read from the lower tier (reads served there + promotions)
    byte_seconds: dict[str, float] = field(default_factory=lambda: {"hot": 0.0, "warm": 0.0})


def simulate(specs: list[StudySpec], strategy: str, start: datetime, end: datetime) -> _Result:
    """Replay every arrival and read in time order with daily cooling; measure [start, end)."""
    roles = (TierRole("hot", cooling_days=COOLING_DAYS),
             TierRole("warm", retrieval_policy=strategy if strategy != "all-hot" else "never"))
    if strategy == "all-hot":
        roles = (TierRole("hot"), TierRole("warm"))
    rule = roles[1].prefetch if roles[1].retrieval_policy == "prefetch_priors" else PrefetchRule()
    facts = [_facts(s) for s in specs]
    index = {s.study_uid: i for i, s in enumerate(specs)}
    size = [s.size_bytes for s in specs]
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(specs):
        by_patient[s.patient.patient_id].append(i)
    events: list[tuple[datetime, int, int]] = []   # (when, 0 arrival / 1 read, study)
    for i, s in enumerate(specs):
        events.append((s.acquired_at, 0, i))
        events.extend((t, 1, i) for t in s.accesses)
    events.sort()
    arrivals_of = {p: sorted((specs[i].acquired_at, i) for i in idx) for p, idx in by_patient.items()}

    tier: list[str | None] = [None] * len(specs)
    last_read: list[datetime | None] = [None] * len(specs)
    on_tier: list[datetime | None] = [None] * len(specs)
    arrived: list[datetime | None] = [None] * len(specs)
    version = [0] * len(specs)
    prefetched: dict[int, bool] = {}      # study -> read since its prefetch
    due: list[tuple[date, int, int]] = []  # (cooling day, study, version)
    held = {"hot": 0, "warm": 0}
    r = _Result()
    clock = events[0][0] if events else start

    def advance(to: datetime) -> None:
        nonlocal clock
        a, b = max(clock, start), min(to, end)
        if b > a:
            dt = (b - a).total_seconds()
            for t, b_held in held.items():
                r.byte_seconds[t] += b_held * dt
        clock = max(clock, to)

    def schedule(i: int) -> None:
        version[i] += 1
        if roles[0].cooling_days is None:
            return
        since = max(m for m in (last_read[i], arrived[i], on_tier[i]) if m is not None)
        heapq.heappush(due, (since.date() + timedelta(days=COOLING_DAYS), i, version[i]))

    def move(i: int, to: str, when: datetime) -> None:
        held[tier[i]] -= size[i]  # type: ignore[index]
        held[to] += size[i]
        tier[i] = to
        on_tier[i] = when

    def promote(i: int, when: datetime, measured: bool) -> None:
        move(i, "hot", when)
        if measured:
            r.promotions += 1
            r.promoted_bytes += size[i]
            r.warm_read_bytes += size[i]
        schedule(i)

    def cool_until(day: date) -> None:
        while due and due[0][0] <= day:
            d, i, v = heapq.heappop(due)
            if v != version[i] or tier[i] != "hot":
                continue
            midnight = datetime.combine(d, dtime(0), tzinfo=UTC)
            advance(midnight)
            f = StudyFacts(facts[i].study_uid, tiers=("hot",), received_at=arrived[i], last_accessed_at=last_read[i])
            decision = cooling_decision(f, roles, d, on_tier[i])
            if decision is None:   # not due after all (cannot happen when both agree): look again tomorrow
                heapq.heappush(due, (d + timedelta(days=1), i, v))
                continue
            move(i, "warm", midnight)
            if midnight >= start:
                r.demotions += 1
                r.demoted_bytes += size[i]
            prefetched.pop(i, None)

    for when, kind, i in events:
        cool_until(when.date())
        advance(when)
        measured = start <= when < end
        if kind == 0:
            tier[i] = "hot"
            held["hot"] += size[i]
            arrived[i] = on_tier[i] = when
            schedule(i)
            if roles[1].retrieval_policy == "prefetch_priors":
                others = [facts[j] for t, j in arrivals_of[specs[i].patient.patient_id] if t < when and j != i]
                for prior in relevant_priors(facts[i], others, rule, when.date()):
                    j = index[prior.study_uid]
                    if tier[j] is None or not promotion_check((tier[j],), roles, "prefetch").promote:
                        continue
                    promote(j, when, measured)
                    if measured:
                        r.prefetches += 1
                        prefetched[j] = False
            continue
        # A read.
        if tier[i] is None:
            continue
        hot = tier[i] == "hot"
        is_prior = any(when - PRIOR_WINDOW <= t <= when and j != i and t > specs[i].acquired_at
                       for t, j in arrivals_of[specs[i].patient.patient_id])
        if measured:
            r.reads += 1
            r.reads_hot += hot
            if is_prior:
                r.prior_reads += 1
                r.prior_hot += hot
            if not hot:
                r.warm_read_bytes += size[i]
            if i in prefetched and not prefetched[i]:
                prefetched[i] = True
                r.prefetch_used += 1
        last_read[i] = when
        if not hot and promotion_check((tier[i] or "warm",), roles, "read").promote:
            promote(i, when, measured)
        else:
            schedule(i)
    cool_until(end.date())
    advance(end)
    return r


def run(ctx: Any) -> dict[str, Any]:
    n = QUICK if ctx.quick else FULL
    cfg = SynthConfig(reference=REFERENCE, studies=n, scale=1.0, seed=1)
    t0 = time.monotonic()
    specs = list(generate(cfg))
    ctx.log(f"prefetch: {len(specs):,} synthetic studies over {cfg.years} years in {time.monotonic() - t0:.1f} s")
    end = cfg.now
    start = end - timedelta(days=365)
    prices = _prices()
    out: dict[str, Any] = {
        "studies": len(specs), "patients": cfg.patient_count, "years": cfg.years, "reference": REFERENCE.isoformat(),
        "cooling_days": COOLING_DAYS, "prices": prices, "s3_ia": S3_IA,
        "prefetch": {"count": PrefetchRule().count, "max_age_years": PrefetchRule().max_age_years,
                     "match": PrefetchRule().match},
        "arrivals": sum(1 for s in specs if start <= s.acquired_at < end),
        "archive_tb_at_end": sum(s.size_bytes for s in specs if s.acquired_at < end) / 1e12,
        "strategies": {}, "n_rounds": 1,
    }
    for strategy in ("all-hot", *STRATEGIES):
        t1 = time.monotonic()
        r = simulate(specs, strategy, start, end)
        seconds = (end - start).total_seconds()
        gb = {t: r.byte_seconds[t] / seconds / _GB for t in r.byte_seconds}
        hot_price, warm_price = prices["hot"][0], prices["warm"][0]
        monthly = gb["hot"] * hot_price + gb["warm"] * warm_price + r.warm_read_bytes / _GB * prices["warm"][1] / 12
        monthly_ia = gb["hot"] * hot_price + gb["warm"] * S3_IA[0] + r.warm_read_bytes / _GB * S3_IA[1] / 12
        row = {
            "prior_reads": r.prior_reads, "prior_hot_share": r.prior_hot / r.prior_reads if r.prior_reads else None,
            "reads": r.reads, "reads_hot_share": r.reads_hot / r.reads if r.reads else None,
            "avg_gb_hot": gb["hot"], "avg_gb_warm": gb["warm"],
            "monthly_cost": monthly, "monthly_cost_s3_ia": monthly_ia,
            "promotions": r.promotions, "promoted_gb": r.promoted_bytes / _GB,
            "prefetches": r.prefetches, "prefetch_used": r.prefetch_used,
            "demotions": r.demotions, "demoted_gb": r.demoted_bytes / _GB,
            "lower_tier_read_gb": r.warm_read_bytes / _GB,
            "sim_seconds": round(time.monotonic() - t1, 2),
        }
        out["strategies"][strategy] = row
        ctx.log(f"  {strategy}: prior reads on hot {fmt(100 * (row['prior_hot_share'] or 0), 1)} %, "
                f"${monthly:,.0f}/month, {r.promotions} promotions ({row['sim_seconds']} s)")
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def render(res: dict[str, Any]) -> str:
    s = res["strategies"]
    pf = res["prefetch"]
    out = [(
        f"{res['studies']:,} synthetic studies of {res['patients']:,} patients over {res['years']} years "
        f"(scale 1: real-world sizes; {res['archive_tb_at_end']:.1f} TB at the end), replayed from the first "
        f"arrival; measured over the last 365 days before {res['reference']} ({res['arrivals']:,} arrivals). "
        f"hot: `cooling_days = {res['cooling_days']}`; prefetch: the newest {pf['count']} priors of the same "
        f"modality or body part ({pf['match']}) within {pf['max_age_years']} years. Storage cost: the year's "
        f"average GB on each tier at the default configuration's prices (hot {res['prices']['hot'][0]}, warm "
        f"{res['prices']['warm'][0]} $/GB-month), and with S3 Standard-IA as the lower tier "
        f"({res['s3_ia'][0]} $/GB-month + {res['s3_ia'][1]} $/GB read from it, reads and promotions)."
    )]
    rows = []
    for k in ("all-hot", *STRATEGIES):
        r = s.get(k)
        if r is None:
            continue
        rows.append((LABELS[k], f"**{_pct(r['prior_hot_share'])}**", f"{r['prior_reads']:,}", _pct(r["reads_hot_share"]),
                     f"**${r['monthly_cost']:,.0f}**", f"${r['monthly_cost_s3_ia']:,.0f}",
                     f"{r['avg_gb_hot'] / 1000:,.2f} / {r['avg_gb_warm'] / 1000:,.2f}",
                     f"{r['promotions']:,} ({r['promoted_gb'] / 1000:,.2f} TB)",
                     f"{r['prefetch_used']:,} of {r['prefetches']:,}" if r["prefetches"] else "-",
                     f"{r['demotions']:,} ({r['demoted_gb'] / 1000:,.2f} TB)"))
    out.append(table(["strategy", "prior reads served from hot", "prior reads", "all reads from hot",
                      "storage $/month (hot + warm)", "$/month with S3-IA below", "avg TB hot / lower",
                      "promotions in the year", "prefetched priors read before cooling again", "cooling moves"], rows))
    base, ro, pp = s.get("never"), s.get("on_read"), s.get("prefetch_priors")
    if base and ro and pp and s.get("all-hot"):
        allhot = s["all-hot"]["monthly_cost"]
        out.append(
            f"Cooling alone costs {base['monthly_cost'] / allhot:.0%} of keeping everything hot, but serves only "
            f"{_pct(base['prior_hot_share'])} of prior reads from hot. `on_read` brings that to "
            f"{_pct(ro['prior_hot_share'])} (a prior is read from the lower tier once, then it is hot), at "
            f"{ro['monthly_cost'] / allhot:.0%} of all-hot; `prefetch_priors` serves {_pct(pp['prior_hot_share'])} "
            f"of prior reads from hot at {pp['monthly_cost'] / allhot:.0%} of all-hot "
            f"({pp['monthly_cost'] - ro['monthly_cost']:+,.0f} $/month against on_read alone).")
    out.append("Simulated in-process with the product's decision functions; no bytes are moved "
               "(the transition benchmark measures moves).")
    return "\n\n".join(out)
