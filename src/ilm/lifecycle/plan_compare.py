"""A plan as a portable document, and where two plans decide differently.

``ilm plan export`` / ``GET /api/plans/{id}/export`` write a plan with its
decisions; on a peer archive (or after a policy change) ``ilm plan --compare``
and ``POST /api/plans/{id}/compare`` list the studies decided differently.
An export lists only the studies a plan acts on or vetoed; a study absent
from it was kept. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ilm.catalog.plans import ActionRow, PlanRow

__all__ = ["export_plan", "peer_decisions", "compare_decisions", "Decided"]

# (action, tier, rule) of one study
Decided = tuple[str, "str | None", "str | None"]


def export_plan(plan: PlanRow, actions: Iterable[ActionRow]) -> dict[str, Any]:
    """The JSON document of ``ilm plan export``."""
    return {
        "plan_id": plan.id, "policy_name": plan.policy_name, "policy_sha256": plan.policy_sha256,
        "as_of": plan.as_of.isoformat(), "plan_sha256": plan.plan_sha256, "summary": plan.summary,
        "decisions": [{"study_uid": a.study_uid, "action": a.decision if a.state != "kept" else "keep",
                       "tier": a.target_tier, "rule": a.rule_id, "vetoes": a.vetoes} for a in actions],
    }


def peer_decisions(document: Any) -> dict[str, Decided]:
    """Study UID -> decision of an exported plan; ValueError naming what is wrong with it."""
    try:
        rows = document["decisions"]
        out: dict[str, Decided] = {}
        for i, a in enumerate(rows):
            if not isinstance(a, Mapping) or not isinstance(a.get("study_uid"), str) or not isinstance(a.get("action"), str):
                raise ValueError(f"decisions[{i}] needs a study_uid and an action (strings)")
            out[a["study_uid"]] = (a["action"], a.get("tier"), a.get("rule"))
        return out
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a plan exported by 'ilm plan export': {exc!r} missing or malformed") from None


def compare_decisions(mine: Mapping[str, Decided], theirs: Mapping[str, Decided]) -> list[dict[str, Any]]:
    """The studies decided differently, by study UID (absent from a side: kept there)."""
    diffs = []
    for uid in sorted(set(mine) | set(theirs)):
        here = mine.get(uid, ("keep", None, None))
        there = theirs.get(uid, ("keep", None, None))
        if here[:2] != there[:2]:
            diffs.append({"study_uid": uid, "here": here[0], "here_tier": here[1], "here_rule": here[2],
                          "peer": there[0], "peer_tier": there[1], "peer_rule": there[2]})
    return diffs
