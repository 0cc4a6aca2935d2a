"""Access-based tiering in plans: cooling-days moves beside the policy's decisions.

:func:`with_cooling` wraps the stream of policy decisions that
:func:`ilm.lifecycle.plan.make_plan` stores. Policy rules come first: a study
a rule decided (moved, expired, kept, vetoed, or kept for a missing fact) is
passed through untouched. A study no rule matched, held on one tier that has
``cooling_days`` and not read for that long as of the plan date
(:func:`ilm.policy.tiering.cooling_decision`), becomes a transition to the
next tier with rule id ``cooling:<tier>``. So it appears in the preview, is
stored as a plan action, and ``ilm apply`` moves it through the same journaled
safe move as any policy transition; :func:`recheck` is what apply checks
again before acting. Protections veto expiries only, so they never stop a
cooling move.

``ilm tiering run`` plans with :data:`TIERING_POLICY`, a policy without
rules, so that the plan holds cooling moves only (and ``ilm apply``,
``--resume`` and the audit trail work on it unchanged).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from importlib.resources import files as package_files
from pathlib import Path
from typing import Any

from ilm.catalog import Catalog
from ilm.catalog.tiering import cooling_candidates, tier_arrivals
from ilm.config import Settings
from ilm.policy import Action, Decision, StudyFacts
from ilm.policy.tiering import (
    COOLING_PREFIX,
    PrefetchRule,
    TierRole,
    cooling_decision,
    cooling_recheck,
    is_cooling_rule,
)

__all__ = ["TIERING_POLICY", "cooling_enabled", "is_cooling_rule", "recheck", "tier_roles", "with_cooling",
           "tiering_settings"]

# A policy without rules: a plan made with it holds the cooling moves alone.
TIERING_POLICY = Path(str(package_files("ilm").joinpath("data/tiering-policy.yaml")))


def tier_roles(settings: Settings) -> tuple[TierRole, ...]:
    """The tiers, hottest first, with their access-based tiering options."""
    return tuple(
        TierRole(name, t.cooling_days, t.retrieval_policy, t.archive,
                 PrefetchRule(t.prefetch.count, t.prefetch.max_age_years, t.prefetch.match))
        for name, t in settings.tiers.items() if name not in settings.replica_tiers  # replicas: no tiering
    )


def cooling_enabled(settings: Settings) -> bool:
    roles = tier_roles(settings)
    return any(r.cooling_days is not None for r in roles[:-1])


def _cutoff(as_of: date, days: int) -> datetime:
    """Studies idle since before this moment are idle ``days`` whole days on ``as_of`` (UTC)."""
    return datetime.combine(as_of - timedelta(days=days - 1), time(0, 0), tzinfo=UTC)


def with_cooling(
    stream: Iterator[tuple[Decision, StudyFacts]], conn: Any, settings: Settings, as_of: date,
) -> Iterator[tuple[Decision, StudyFacts]]:
    """The policy's decisions, with the cooling moves of the studies no rule decided.

    ``stream`` is every decision the plan makes (the pure path: every study;
    the database path: every study a rule matched, plus those evaluated in
    Python). Decisions with a rule pass at once; "no rule matched" ones that
    could cool wait until the stream ends, then the catalog is asked for every
    cooling candidate (reading the copies' arrival times) and each is decided
    by the pure :func:`cooling_decision`. Without ``cooling_days`` anywhere
    the stream is returned as is.
    """
    if not cooling_enabled(settings):
        yield from stream
        return
    roles = tier_roles(settings)
    cooling = {r.name for r in roles[:-1] if r.cooling_days is not None}
    ruled: set[str] = set()
    waiting: dict[str, tuple[Decision, StudyFacts]] = {}
    for d, study in stream:
        if d.rule_id is not None:
            ruled.add(d.study_uid)
            yield d, study
        elif set(study.tiers) & cooling:
            waiting[d.study_uid] = (d, study)
        else:
            yield d, study
    for role in roles[:-1]:
        if role.cooling_days is None:
            continue
        for facts, arrived in cooling_candidates(conn, role.name, _cutoff(as_of, role.cooling_days) + timedelta(days=1)):  # a day of slack: the pure check decides
            if facts.study_uid in ruled:
                continue
            decision = cooling_decision(facts, roles, as_of, arrived)
            if decision is None:
                continue
            waiting.pop(facts.study_uid, None)
            yield decision, facts
    yield from waiting.values()


def recheck(catalog: Catalog, settings: Settings, study: StudyFacts, policy_decision: Decision,
            rule_id: str, target: str | None, as_of: date) -> str | None:
    """Why a planned cooling move no longer holds, or None (apply's re-check).

    The policy, evaluated again, must still leave the study to cooling (no
    rule matches), and the study must still be idle on its tier.
    """
    if policy_decision.rule_id is not None:
        return f"policy rule {policy_decision.rule_id} now decides: {policy_decision.reason}"
    if policy_decision.action is not Action.KEEP or not target:
        return "the policy now decides otherwise"
    tier = rule_id[len(COOLING_PREFIX):]
    with catalog.read() as conn:
        arrived = tier_arrivals(conn, [study.study_uid], tier).get(study.study_uid)
    return cooling_recheck(study, rule_id, target, tier_roles(settings), as_of, arrived)


def tiering_settings(settings: Settings) -> dict[str, Any]:
    """Each tier's cooling days (and the tier it moves to), retrieval policy and prefetch
    settings, and the promotion cap (ilm tiering show, GET /api/tiering)."""
    rows: list[dict[str, Any]] = []
    names = list(settings.tiers)
    for i, (name, t) in enumerate(settings.tiers.items()):
        nxt = names[i + 1] if i + 1 < len(names) else None
        rows.append({
            "tier": name, "cooling_days": t.cooling_days, "moves_to": nxt if t.cooling_days else None,
            "retrieval_policy": t.retrieval_policy, "archive": t.archive,
            "prefetch": t.prefetch.model_dump() if t.retrieval_policy == "prefetch_priors" else None,
        })
    return {"tiers": rows, "promotions_per_minute": settings.lifecycle.promotions_per_minute}
