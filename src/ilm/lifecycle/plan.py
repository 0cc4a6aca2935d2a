"""Planning: evaluate a policy over the whole catalog and store the result.

A plan records what the policy decided for every study it acts on (and every
study a protection vetoed), the hash of the policy text, and a hash of the
catalog facts it saw. ``apply`` later executes exactly these actions.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.facts import load_policy_inputs
from ilm.catalog.plans import PlanRow, insert_plan, study_tier_bytes, tier_bytes
from ilm.config import Settings
from ilm.cost import TierPrice, monthly_storage_cost
from ilm.errors import IlmError
from ilm.lifecycle.tiering import with_cooling
from ilm.policy import Action, Decision, Policy, StudyFacts, evaluate_all, parse_policy

__all__ = ["PolicySource", "read_policy", "fingerprint", "make_plan", "PlanResult", "tier_prices"]


@dataclass(frozen=True, slots=True)
class PolicySource:
    path: str
    text: str
    sha256: str
    policy: Policy


def read_policy(path: Path, known_tiers: list[str]) -> PolicySource:
    """Read and parse a policy file; PolicyError lists every problem with file:line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IlmError(f"{path}: cannot read policy file: {exc}") from None
    policy = parse_policy(text, known_tiers=known_tiers, source=str(path))
    return PolicySource(str(path), text, hashlib.sha256(text.encode("utf-8")).hexdigest(), policy)


def fingerprint(s: StudyFacts) -> str:
    """What apply re-checks: the facts that, changed, make a decision stale.

    Tiers are left out: an interrupted move changes them, and the resumed
    apply must finish it; the policy, evaluated again, judges tiers.
    """
    last = s.last_accessed_at.isoformat() if s.last_accessed_at else ""
    body = json.dumps([s.instance_count, s.size_bytes, last, len(s.holds)])
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def tier_prices(settings: Settings) -> dict[str, TierPrice]:
    return {n: TierPrice(t.cost_per_gb_month, t.retrieval_cost_per_gb, t.min_storage_days)
            for n, t in settings.tiers.items()}


@dataclass
class PlanResult:
    plan: PlanRow
    decisions: list[Decision] = field(default_factory=list)


def _new_id(now: datetime) -> str:
    return f"p{now:%Y%m%d}-{secrets.token_hex(3)}"


def make_plan(
    catalog: Catalog,
    settings: Settings,
    source: PolicySource,
    *,
    as_of: date,
    created_by: str,
    progress: Callable[[int], None] | None = None,
    store: bool = True,
) -> PlanResult:
    """Decide for every active study and store the plan (unless ``store`` is False)."""
    now = datetime.now(timezone.utc)
    with catalog.read() as conn:
        inputs = load_policy_inputs(conn)
        before = tier_bytes(conn)
        # Access-based tiering: cooling-days moves for the studies no rule decided (ilm.lifecycle.tiering).
        stream = list(with_cooling(zip(evaluate_all(source.policy, inputs.studies, inputs.patients, as_of),
                                       inputs.studies), conn, settings, as_of))
    decisions: list[Decision] = []
    catalog_hash = hashlib.sha256()
    actions: list[dict[str, Any]] = []
    by_uid: dict[str, StudyFacts] = {}
    for d, study in stream:
        fp = fingerprint(study)
        catalog_hash.update(f"{study.study_uid}:{fp}\n".encode())
        decisions.append(d)
        if d.action is not Action.KEEP or d.vetoes or d.unknown:
            by_uid[study.study_uid] = study
            actions.append(dict(
                study_uid=study.study_uid, decision=d.action.value, target_tier=d.tier if d.action is Action.TRANSITION else None,
                rule_id=d.rule_id,
                vetoes=json.dumps([{"protection": v.protection, "reason": v.reason} for v in d.vetoes]),
                fingerprint=fp, instance_count=study.instance_count, size_bytes=study.size_bytes,
                state="pending" if d.action is not Action.KEEP else "kept", reason=d.reason,
            ))
        if progress:
            progress(1)
    # Cost before and after: moves shift a study's bytes to the target tier,
    # expiries remove them.
    with catalog.read() as conn:
        per_study = study_tier_bytes(conn, [a["study_uid"] for a in actions if a["decision"] != "keep"])
    after = defaultdict(int, before)
    for a in actions:
        held = per_study.get(a["study_uid"], {})
        if a["decision"] == "transition":
            for t, b in held.items():
                if t != a["target_tier"]:
                    after[t] -= b
                    after[a["target_tier"]] += b
        elif a["decision"] == "expire":
            for t, b in held.items():
                after[t] -= b
    prices = tier_prices(settings)
    summary = summarise(decisions, by_uid, before, dict(after), prices, len(inputs.studies))
    plan_hash = hashlib.sha256(
        json.dumps([source.sha256, catalog_hash.hexdigest(), as_of.isoformat(),
                    [(a["study_uid"], a["decision"], a["target_tier"], a["rule_id"]) for a in actions]]).encode()
    ).hexdigest()
    plan = PlanRow(
        id=_new_id(now), created_at=now, created_by=created_by, as_of=as_of, policy_name=source.policy.name,
        policy_path=source.path, policy_sha256=source.sha256, catalog_sha256=catalog_hash.hexdigest(),
        plan_sha256=plan_hash, state="planned", approved_by=None, summary=summary,
    )
    if store:
        with catalog.write() as conn:
            insert_plan(conn, plan, actions)
            append_audit(conn, at=now, actor=created_by, action="plan.create", plan_id=plan.id,
                         detail={"policy": source.path, "policy_sha256": source.sha256, "as_of": as_of.isoformat(),
                                 "plan_sha256": plan_hash, "actions": summary["actions"]})
    return PlanResult(plan, decisions)


def summarise(
    decisions: list[Decision],
    facts: Mapping[str, StudyFacts],
    before: Mapping[str, int],
    after: Mapping[str, int],
    prices: Mapping[str, TierPrice],
    total: int,
) -> dict[str, Any]:
    """Per action and rule: studies, instances, bytes; per protection: studies vetoed; cost."""
    per_rule: dict[tuple[str, str, str], dict[str, int]] = {}
    vetoed: dict[str, int] = defaultdict(int)
    unknown: dict[str, int] = defaultdict(int)
    for d in decisions:
        if d.action is not Action.KEEP:
            f = facts[d.study_uid]
            key = (d.action.value, d.rule_id or "", d.tier or "")
            row = per_rule.setdefault(key, {"studies": 0, "instances": 0, "bytes": 0})
            row["studies"] += 1
            row["instances"] += f.instance_count
            row["bytes"] += f.size_bytes
        for v in d.vetoes:
            vetoed[v.protection] += 1
        for u in d.unknown:
            unknown[u] += 1
    return {
        "studies": total,
        "actions": [{"action": a, "rule": r, "tier": t or None, **v} for (a, r, t), v in sorted(per_rule.items())],
        "vetoes": dict(sorted(vetoed.items())),
        "unknown_facts": dict(sorted(unknown.items())),
        "bytes_before": {k: int(v) for k, v in sorted(before.items())},
        "bytes_after": {k: int(v) for k, v in sorted(after.items()) if v},
        "monthly_cost_before": monthly_storage_cost(before, prices),
        "monthly_cost_after": monthly_storage_cost(after, prices),
    }
