"""Pure evaluation: which action a policy takes on a study, and why.

Rules are read top to bottom and the first rule whose conditions all match decides the action; protections then veto any expiry they cover, whatever the rule order; a study no rule matches stays where it is.

Missing facts fail closed. A rule that cannot be decided because a fact it
needs is missing (no StudyDate for ``study_age`` ...) still stops the reading:
it might have been the first match, so no later rule may act instead. Its
expiry is vetoed by the ``unknown_facts`` protection, naming the fact; its
transition is not carried out (the study stays where it is, and the decision
says why). A transition to a tier that already holds the whole study is kept
as is.

``evaluate`` takes plain facts and a date and does no I/O: the same inputs
always give the same decision. With ``explain=True`` the decision also
carries every rule's outcome (rules after the deciding one are checked too,
marked as not reached) and every protection's verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date

from ilm.policy.conditions import Check, Outcome
from ilm.policy.context import StudyContext, Unknown
from ilm.policy.facts import PatientFacts, StudyFacts
from ilm.policy.protections import ProtectionCheck, Veto, vetoes_of
from ilm.policy.rules import Action, Policy, Rule

__all__ = ["CONFLICT_RULE", "RuleTrace", "Decision", "evaluate", "evaluate_all"]

CONFLICT_RULE = (
    "Rules are read top to bottom and the first rule whose conditions all match decides the action; "
    "protections then veto any expiry they cover, whatever the rule order; "
    "a study no rule matches stays where it is."
)


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule's outcome for one study (explain mode)."""

    rule_id: str
    outcome: Outcome
    checks: tuple[Check, ...]
    reached: bool  # False for rules after the deciding one
    deciding: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy does to one study.

    ``action`` is what will happen (KEEP, TRANSITION, EXPIRE) after vetoes;
    ``proposed`` is what the deciding rule asked for. ``rule_id`` is None when
    no rule matched. ``vetoes`` are the protections that stopped an expiry.
    ``unknown`` names the facts the deciding rule lacked. ``reason`` is one
    line for previews.
    """

    study_uid: str
    action: Action
    proposed: Action
    rule_id: str | None
    reason: str
    tier: str | None = None
    vetoes: tuple[Veto, ...] = ()
    unknown: tuple[str, ...] = ()
    trace: tuple[RuleTrace, ...] = ()
    protections: tuple[ProtectionCheck, ...] = ()

    @property
    def vetoed(self) -> bool:
        return bool(self.vetoes)


def _undetermined(checks: tuple[Check, ...]) -> Unknown:
    facts = tuple(dict.fromkeys(f for c in checks if c.outcome is Outcome.UNKNOWN for f in c.facts))
    reasons = "; ".join(f"{c.field}: {c.reason}" for c in checks if c.outcome is Outcome.UNKNOWN)
    return Unknown(facts or ("fact",), reasons)


def evaluate(
    policy: Policy,
    study: StudyFacts,
    patient: PatientFacts | None,
    as_of: date,
    *,
    explain: bool = False,
) -> Decision:
    """Decide for one study on day ``as_of``.

    ``patient`` holds the facts across the patient's studies; without it, any
    condition on the last encounter is unknown (and the study kept).
    """
    ctx = StudyContext(study, patient, as_of)
    traces: list[RuleTrace] = []
    decider: Rule | None = None
    decider_outcome = Outcome.MISS
    decider_checks: tuple[Check, ...] = ()
    for rule in policy.rules:
        if decider is not None and not explain:
            break
        outcome, checks = rule.match(ctx, full=explain)
        deciding = decider is None and outcome is not Outcome.MISS
        if deciding:
            decider, decider_outcome, decider_checks = rule, outcome, checks
        if explain:
            reached = deciding or decider is None or decider is rule
            traces.append(RuleTrace(rule.id, outcome, checks, reached=reached, deciding=deciding))
    return _decide(policy, ctx, decider, decider_outcome, decider_checks, tuple(traces), explain)


def _decide(
    policy: Policy,
    ctx: StudyContext,
    rule: Rule | None,
    outcome: Outcome,
    checks: tuple[Check, ...],
    traces: tuple[RuleTrace, ...],
    explain: bool,
) -> Decision:
    uid = ctx.study.study_uid
    protections: tuple[ProtectionCheck, ...] = ()
    if rule is None:
        if explain:
            protections = policy.protections.check(ctx)
        return Decision(uid, Action.KEEP, Action.KEEP, None, "no rule matched",
                        trace=traces, protections=protections)
    unknown = _undetermined(checks) if outcome is Outcome.UNKNOWN else None
    missing = unknown.facts if unknown else ()
    if rule.action is Action.EXPIRE or explain:
        protections = policy.protections.check(ctx, unknown)
    if rule.action is Action.EXPIRE:
        vetoes = vetoes_of(protections)
        missing = tuple(dict.fromkeys(missing + tuple(f for v in vetoes for f in v.facts)))
        if vetoes:
            # A WORM lock says until when: "expiry vetoed by worm_lock (locked until 2031-05-01)".
            names = ", ".join(f"{v.protection} ({v.reason})" if v.protection == "worm_lock" else v.protection
                              for v in vetoes)
            return Decision(uid, Action.KEEP, Action.EXPIRE, rule.id, f"expiry vetoed by {names}",
                            vetoes=vetoes, unknown=missing, trace=traces,
                            protections=protections if explain else ())
        reason = "expire" if unknown is None else f"expire although {unknown.reason} (unknown_facts is off)"
        return Decision(uid, Action.EXPIRE, Action.EXPIRE, rule.id, reason, unknown=missing,
                        trace=traces, protections=protections if explain else ())
    if rule.action is Action.TRANSITION:
        assert rule.tier is not None
        if unknown is not None:
            reason = f"not moved to {rule.tier}: {unknown.reason}"
            return Decision(uid, Action.KEEP, Action.TRANSITION, rule.id, reason, tier=rule.tier,
                            unknown=missing, trace=traces, protections=protections)
        if ctx.study.tiers and set(ctx.study.tiers) == {rule.tier}:
            return Decision(uid, Action.KEEP, Action.TRANSITION, rule.id, f"already on {rule.tier}",
                            tier=rule.tier, trace=traces, protections=protections)
        return Decision(uid, Action.TRANSITION, Action.TRANSITION, rule.id, f"move to {rule.tier}",
                        tier=rule.tier, trace=traces, protections=protections)
    return Decision(uid, Action.KEEP, rule.action, rule.id, f"kept by rule {rule.id}", trace=traces,
                    protections=protections)


def evaluate_all(
    policy: Policy,
    studies: Iterable[StudyFacts],
    patients: Mapping[str, PatientFacts],
    as_of: date,
    *,
    explain: bool = False,
) -> Iterator[Decision]:
    """Decide for each study, in order; ``patients`` is keyed by ``StudyFacts.patient_key``."""
    for study in studies:
        yield evaluate(policy, study, patients.get(study.patient_key), as_of, explain=explain)
