"""Parse and validate a policy: YAML text in, a :class:`Policy` or a :class:`PolicyError` out.

The parser reads only the text it is handed (the caller reads the file) and
the set of configured tier names. It checks everything before building
anything: unknown keys, attributes and tiers, bad durations, sizes and
regular expressions, missing ids and actions, duplicate ids, and rules that
can never apply because an earlier rule matches every study they would. Any
error refuses the whole policy; every error found is reported, each with the
file, line and field path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from typing import Any

from yaml.nodes import Node, ScalarNode

from ilm.policy.durations import Period
from ilm.policy.errors import PolicyError, PolicyIssue
from ilm.policy.parse_conditions import ConditionReader
from ilm.policy.protections import (
    MammographyRetention, MinimumRetention, PediatricRetention, Protections, RecentlyAccessed,
    Switch, UnknownFacts,
)
from ilm.policy.rules import Action, Policy, Rule
from ilm.policy.yamlnodes import compose, line_of, suggest

__all__ = ["parse_policy", "check_policy"]

_TOP_KEYS = ("name", "version", "description", "auto_apply", "protections", "rules")
_RULE_KEYS = ("id", "description", "when", "retain", "action")
_ACTIONS = ("expire", "keep", "transition")
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PROTECTION_KEYS: dict[str, tuple[str, ...]] = {
    "legal_hold": (),
    "mammography": ("years", "without_later_mammogram_years"),
    "pediatric": ("age_of_majority", "years_after_majority"),
    "minimum_retention": ("period",),
    "recently_accessed": ("within",),
    "unknown_facts": (),
}


def parse_policy(text: str, *, known_tiers: Collection[str], source: str = "<policy>") -> Policy:
    """Parse ``text``; raise PolicyError listing every problem if there is any.

    ``known_tiers`` are the tier names of the configuration; ``source`` is the
    file name used in messages.
    """
    policy, issues = check_policy(text, known_tiers=known_tiers, source=source)
    if policy is None:
        raise PolicyError(issues)
    return policy


def check_policy(
    text: str, *, known_tiers: Collection[str], source: str = "<policy>"
) -> tuple[Policy | None, tuple[PolicyIssue, ...]]:
    """Like :func:`parse_policy` but returns ``(policy or None, errors)`` instead of raising."""
    root, issues = compose(text, source)
    if issues:
        return None, tuple(issues)
    reader = _PolicyReader(source, known_tiers)
    policy = reader.policy(root, hashlib.sha256(text.encode("utf-8")).hexdigest())
    if reader.issues:
        return None, tuple(sorted(reader.issues, key=lambda i: i.line))
    return policy, ()


class _PolicyReader(ConditionReader):
    def policy(self, root: Node | None, digest: str) -> Policy | None:
        if root is None:
            self.error(None, "", "yaml", "the policy is empty")
            return None
        top = self.mapping(root, "", _TOP_KEYS)
        if top is None:
            return None
        name = self.text(top["name"][1], "name") if "name" in top else self.source
        version = self.text(top["version"][1], "version") if "version" in top else ""
        description = self.text(top["description"][1], "description") if "description" in top else ""
        auto_apply = self.boolean(top["auto_apply"][1], "auto_apply") if "auto_apply" in top else False
        protections = self.protections(top["protections"][1]) if "protections" in top else Protections()
        if "rules" not in top:
            self.error(root, "rules", "missing", "a policy needs a 'rules' list (it may be empty: [])")
            return None
        rules = self.rules(top["rules"][1])
        if self.issues or rules is None or protections is None:
            return None
        warnings: list[PolicyIssue] = []
        if auto_apply and any(r.action is Action.EXPIRE for r in rules):
            warnings.append(PolicyIssue(self.source, line_of(top["auto_apply"][1]), "auto_apply", "bad_value",
                                        "ignored: a policy that expires studies always waits for approval"))
        for pname, reason in protections.disabled():
            node = top["protections"][1]
            warnings.append(PolicyIssue(self.source, line_of(node), f"protections.{pname}", "bad_value",
                                        f"protection {pname} is OFF: {reason}"))
        return Policy(
            name=name or self.source, rules=rules, protections=protections, version=version or "",
            description=description or "", auto_apply=bool(auto_apply), source=self.source,
            digest=digest, warnings=tuple(warnings),
        )

    # ---- rules ---------------------------------------------------------------------

    def rules(self, node: Node) -> tuple[Rule, ...] | None:
        items = self.sequence(node, "rules")
        if items is None:
            return None
        parsed: list[tuple[int, Rule, Node]] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            rule = self.rule(item, f"rules[{i}]")
            if rule is None:
                continue
            if rule.id in seen:
                self.error(item, f"rules[{i}].id", "duplicate_id",
                           f"rule id {rule.id!r} is already used on line {seen[rule.id]}")
                continue
            seen[rule.id] = rule.line
            parsed.append((i, rule, item))
        self._shadowing(parsed)
        return tuple(rule for _, rule, _ in parsed)

    def rule(self, node: Node, path: str) -> Rule | None:
        entries = self.mapping(node, path, _RULE_KEYS)
        if entries is None:
            return None
        before = len(self.issues)
        rule_id = None
        if "id" not in entries:
            self.error(node, f"{path}.id", "missing", "every rule needs an id")
        else:
            rule_id = self.text(entries["id"][1], f"{path}.id")
            if rule_id is not None and not _RULE_ID.fullmatch(rule_id):
                self.error(entries["id"][1], f"{path}.id", "bad_value",
                           f"rule id {rule_id!r}: use letters, digits, '-', '_' or '.' (at most 64)")
        description = self.text(entries["description"][1], f"{path}.description") if "description" in entries else ""
        conditions = self.conditions(entries["when"][1], f"{path}.when") if "when" in entries else ()
        action, tier = self.action(entries.get("action"), node, f"{path}.action")
        retain = None
        if "retain" in entries:
            retain = self.retain(entries["retain"][1], f"{path}.retain")
            if action is not None and action is not Action.EXPIRE:
                self.error(entries["retain"][0], f"{path}.retain", "bad_value",
                           "retain only makes sense on an expire rule: it says when expiry may start")
        if len(self.issues) > before or rule_id is None or action is None or conditions is None:
            return None
        return Rule(id=rule_id, action=action, conditions=conditions + ((retain,) if retain else ()),
                    tier=tier, description=description or "", line=line_of(node))

    def action(self, entry: tuple[Node, Node] | None, rule_node: Node, path: str) -> tuple[Action | None, str | None]:
        if entry is None:
            self.error(rule_node, path, "missing",
                       "every rule needs one action: 'action: expire', 'action: keep' or 'action: {transition: TIER}'")
            return None, None
        node = entry[1]
        if isinstance(node, ScalarNode):
            word = self.text(node, path)
            if word in ("expire", "keep"):
                return Action(word), None
            if word == "transition":
                self.error(node, path, "missing", "a transition needs its tier: 'action: {transition: TIER}'")
            elif word is not None:
                self.error(node, path, "bad_value", f"unknown action {word!r}{suggest(word, _ACTIONS)}; "
                                                    "expected expire, keep or {transition: TIER}")
            return None, None
        entries = self.mapping(node, path, ("transition",))
        if entries is None:
            return None, None
        if "transition" not in entries:
            self.error(node, path, "missing", "expected 'action: {transition: TIER}'")
            return None, None
        tier_node = entries["transition"][1]
        tier = self.text(tier_node, f"{path}.transition")
        if tier is None:
            return None, None
        if tier not in self.tiers:
            self.error(tier_node, f"{path}.transition", "unknown_tier",
                       f"unknown tier {tier!r}{suggest(tier, self.tiers)}; configured tiers: "
                       f"{', '.join(sorted(self.tiers)) or '(none)'}")
            return None, None
        return Action.TRANSITION, tier

    def _shadowing(self, parsed: list[tuple[int, Rule, Node]]) -> None:
        """A rule whose conditions include all of an earlier rule's can never decide."""
        keys = [frozenset(c.key() for c in rule.conditions) for _, rule, _ in parsed]
        for j, (index, later, node) in enumerate(parsed):
            for i in range(j):
                if keys[i] <= keys[j]:
                    earlier = parsed[i][1]
                    why = ("has no conditions, so it matches every study" if not keys[i]
                           else "matches every study this one would")
                    self.error(node, f"rules[{index}]", "shadowed",
                               f"rule {later.id!r} can never apply: rule {earlier.id!r} "
                               f"(line {earlier.line}) comes first and {why}")
                    break

    # ---- protections ---------------------------------------------------------------

    def protections(self, node: Node) -> Protections | None:
        entries = self.mapping(node, "protections", tuple(_PROTECTION_KEYS))
        if entries is None:
            return None
        made: dict[str, Any] = {}
        for name, (_, value) in entries.items():
            path = f"protections.{name}"
            if isinstance(value, ScalarNode):
                self.error(value, path, "bad_value",
                           f"write '{name}: {{enabled: false, reason: \"why\"}}' to turn it off, "
                           "or give its settings as a mapping")
                made[name] = None
                continue
            settings = self.mapping(value, path, ("enabled", "reason", *_PROTECTION_KEYS[name]))
            if settings is None:
                made[name] = None
                continue
            made[name] = self._protection(name, settings, value, path)
        if any(v is None for v in made.values()):
            return None
        return Protections(**{k: v for k, v in made.items() if k != "legal_hold"})

    def _protection(self, name: str, s: dict[str, tuple[Node, Node]], node: Node, path: str) -> object | None:
        enabled = self.boolean(s["enabled"][1], f"{path}.enabled") if "enabled" in s else True
        reason = self.text(s["reason"][1], f"{path}.reason") if "reason" in s else ""
        if enabled is None or reason is None:
            return None
        if name == "legal_hold":
            if not enabled:
                self.error(s["enabled"][1], f"{path}.enabled", "bad_value",
                           "legal_hold cannot be turned off: release the holds instead (ilm hold remove)")
                return None
            return True
        if not enabled and not reason.strip():
            self.error(s["enabled"][1], f"{path}.reason", "missing",
                       f"turning {name} off needs a reason: '{name}: {{enabled: false, reason: \"why\"}}'")
            return None
        switch = Switch(enabled, reason.strip() if not enabled else "")

        def num(key: str, default: int, low: int, high: int) -> int | None:
            return self.integer(s[key][1], f"{path}.{key}", low=low, high=high) if key in s else default

        def per(key: str, default: Period) -> Period | None:
            return self.period(s[key][1], f"{path}.{key}") if key in s else default

        if name == "mammography":
            years = num("years", 5, 1, 100)
            longer = num("without_later_mammogram_years", 10, 1, 100)
            if years is None or longer is None:
                return None
            if longer < years:
                self.error(node, path, "bad_value", "without_later_mammogram_years is shorter than years")
                return None
            return MammographyRetention(switch, years, longer)
        if name == "pediatric":
            majority = num("age_of_majority", 18, 1, 30)
            after = num("years_after_majority", 10, 0, 100)
            return PediatricRetention(switch, majority, after) if majority is not None and after is not None else None
        if name == "minimum_retention":
            period = per("period", Period(years=5))
            return MinimumRetention(switch, period) if period is not None else None
        if name == "recently_accessed":
            within = per("within", Period(days=30))
            return RecentlyAccessed(switch, within) if within is not None else None
        return UnknownFacts(switch)

