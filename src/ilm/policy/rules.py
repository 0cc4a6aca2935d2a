"""Rules and policies: what the parser builds and evaluation reads.

A rule has an id, a description, conditions (all must match; a ``retain``
clause is one more condition) and one action: transition to a named tier or
expire. A policy is an ordered list of rules plus its protections.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ilm.policy.conditions import Check, Condition, Outcome, all_of
from ilm.policy.context import StudyContext
from ilm.policy.errors import PolicyIssue
from ilm.policy.protections import Protections

__all__ = ["Action", "Rule", "Policy"]


class Action(str, enum.Enum):
    KEEP = "keep"
    TRANSITION = "transition"
    EXPIRE = "expire"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule. ``tier`` is set for a transition and ``None`` for expire."""

    id: str
    action: Action
    conditions: tuple[Condition, ...] = ()
    tier: str | None = None
    description: str = ""
    line: int = 0

    def match(self, ctx: StudyContext, *, full: bool = False) -> tuple[Outcome, tuple[Check, ...]]:
        """MATCH, MISS or UNKNOWN for one study, with each condition's check.

        A rule without conditions always matches. With ``full`` every
        condition is checked (for explain); otherwise checking stops at the first miss.
        """
        if not self.conditions:
            return Outcome.MATCH, ()
        return all_of(self.conditions, ctx, full=full)

    def describe_action(self) -> str:
        return f"transition to {self.tier}" if self.action is Action.TRANSITION else self.action.value


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated policy. ``digest`` is the SHA-256 of the text it was parsed from."""

    name: str
    rules: tuple[Rule, ...]
    protections: Protections = field(default_factory=Protections)
    version: str = ""
    description: str = ""
    auto_apply: bool = False
    source: str = ""
    digest: str = ""
    warnings: tuple[PolicyIssue, ...] = ()

    @property
    def expires(self) -> bool:
        """True if any rule expires studies."""
        return any(r.action is Action.EXPIRE for r in self.rules)

    @property
    def may_auto_apply(self) -> bool:
        """A scheduler may apply this policy's plans unattended: ``auto_apply`` and no expiry rule."""
        return self.auto_apply and not self.expires

    def tiers(self) -> frozenset[str]:
        """The tiers the rules move studies to."""
        return frozenset(r.tier for r in self.rules if r.tier)

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)
