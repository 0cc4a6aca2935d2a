"""Parsing the ``when:`` conditions and the ``retain:`` clause of a rule."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ilm.policy.conditions import (
    AGE_FIELDS, ATTRIBUTE_ALIASES, ATTRIBUTES, AgeCondition, AnyCondition, AttributeCondition,
    Condition, DateCondition, FlagCondition, NotCondition, RangeCondition,
)
from ilm.policy.durations import Period
from ilm.policy.matchers import Empty, Equals, Matcher, Negated, OneOf, Regex
from ilm.policy.retention import (
    BirthPlus, LastEncounterPlus, Latest, Mqsa, RetainCondition, StudyDatePlus, Term,
)
from ilm.policy.yamlnodes import NodeReader, suggest

__all__ = ["ConditionReader", "CONDITION_NAMES", "TERM_NAMES"]

_RANGE_FIELDS = ("study_size", "instance_count")
_FLAG_FIELDS = ("mammography", "identity_removed")
CONDITION_NAMES: tuple[str, ...] = (
    *ATTRIBUTES, *AGE_FIELDS, "study_date", *_RANGE_FIELDS, *_FLAG_FIELDS, "not", "any",
)
_MATCHER_KEYS = ("equals", "one_of", "regex", "not", "empty")
_PERIOD_TERMS: dict[str, Callable[[Period], Term]] = {"study_date_plus": StudyDatePlus, "last_encounter_plus": LastEncounterPlus,
                 "birth_plus": BirthPlus}
TERM_NAMES: tuple[str, ...] = (*_PERIOD_TERMS, "mqsa", "max")


class ConditionReader(NodeReader):
    """Adds condition and retention parsing; ``tiers`` are the configured tier names."""

    def __init__(self, source: str, tiers: Collection[str]) -> None:
        super().__init__(source)
        self.tiers = frozenset(tiers)

    def conditions(self, node: Node, path: str) -> tuple[Condition, ...] | None:
        """A mapping of conditions, all of which must match."""
        if isinstance(node, MappingNode) and not node.value:
            self.error(node, path, "bad_value", "no conditions: leave 'when' out to match every study")
            return None
        entries = self.mapping(node, path, None)
        if entries is None:
            return None
        out: list[Condition] = []
        ok = True
        for key, (key_node, value) in entries.items():
            name = ATTRIBUTE_ALIASES.get(key, key)
            sub = f"{path}.{key}"
            cond = self._condition(name, key_node, value, sub)
            if cond is None:
                ok = False
            else:
                out.append(cond)
        return tuple(out) if ok else None

    def _condition(self, name: str, key_node: Node, value: Node, path: str) -> Condition | None:
        if name in ATTRIBUTES:
            matcher = self.matcher(value, path, tier=name == "current_tier")
            return AttributeCondition(name, matcher) if matcher else None
        if name in AGE_FIELDS:
            got = self._bounds(value, path, ("older_than", "younger_than"), self.period)
            return AgeCondition(name, got[0], got[1]) if got else None  # type: ignore[arg-type]
        if name == "study_date":
            got = self._bounds(value, path, ("before", "after"), self.day)
            return DateCondition(name, got[0], got[1]) if got else None  # type: ignore[arg-type]
        if name in _RANGE_FIELDS:
            read = self.size if name == "study_size" else self._count
            got = self._bounds(value, path, ("at_least", "at_most"), read)
            return RangeCondition(name, got[0], got[1]) if got else None  # type: ignore[arg-type]
        if name in _FLAG_FIELDS:
            flag = self.boolean(value, path)
            return FlagCondition(name, flag) if flag is not None else None
        if name == "not":
            inner = self.conditions(value, path)
            return NotCondition(inner) if inner else None
        if name == "any":
            return self._any(value, path)
        if name == "retain":
            hint = ": 'retain' goes beside 'when', in the rule"
        else:
            hint = suggest(name, CONDITION_NAMES) or f"; conditions are: {', '.join(CONDITION_NAMES)}"
        self.error(key_node, path, "unknown_attribute", f"unknown attribute {name!r}{hint}")
        return None

    def _count(self, node: Node, path: str) -> int | None:
        return self.integer(node, path, high=10**9)

    def _bounds(self, node: Node, path: str, keys: tuple[str, str], read: object) -> tuple[object, object] | None:
        entries = self.mapping(node, path, keys)
        if entries is None:
            return None
        if not entries:
            self.error(node, path, "missing", f"give {keys[0]} or {keys[1]} (or both)")
            return None
        values: list[object] = []
        for key in keys:
            if key not in entries:
                values.append(None)
                continue
            v = read(entries[key][1], f"{path}.{key}")  # type: ignore[operator]
            if v is None:
                return None
            values.append(v)
        return values[0], values[1]

    def _any(self, node: Node, path: str) -> Condition | None:
        items = self.sequence(node, path)
        if items is None:
            return None
        if len(items) < 2:
            self.error(node, path, "bad_value", "'any' needs a list of at least two condition groups")
            return None
        groups = [self.conditions(item, f"{path}[{i}]") for i, item in enumerate(items)]
        if any(g is None for g in groups):
            return None
        return AnyCondition(tuple(g for g in groups if g is not None))

    def matcher(self, node: Node, path: str, *, tier: bool = False) -> Matcher | None:
        """``X`` (equals), ``[X, Y]`` (one of), or a mapping with one of equals/one_of/regex/not/empty."""
        if isinstance(node, ScalarNode):
            value = self.text(node, path)
            return Equals(value) if value is not None and self._tiers_ok(node, path, [value], tier) else None
        if isinstance(node, SequenceNode):
            return self._one_of(node, path, tier)
        entries = self.mapping(node, path, _MATCHER_KEYS)
        if entries is None:
            return None
        if len(entries) != 1:
            self.error(node, path, "bad_value", f"give exactly one of: {', '.join(_MATCHER_KEYS)}")
            return None
        (key, (_, inner)), = entries.items()
        sub = f"{path}.{key}"
        if key == "equals":
            if isinstance(inner, ScalarNode):
                return self.matcher(inner, sub, tier=tier)
            self.error(inner, sub, "bad_value", "expected a single text value")
            return None
        if key == "one_of":
            return self._one_of(inner, sub, tier)
        if key == "not":
            negated = self.matcher(inner, sub, tier=tier)
            return Negated(negated) if negated else None
        if key == "empty":
            flag = self.boolean(inner, sub)
            return Empty(flag) if flag is not None else None
        pattern = self.text(inner, sub)
        if pattern is None:
            return None
        try:
            return Regex(pattern, re.compile(pattern))
        except re.error as exc:
            self.error(inner, sub, "bad_regex", f"bad regular expression {pattern!r}: {exc}")
            return None

    def _one_of(self, node: Node, path: str, tier: bool) -> Matcher | None:
        items = self.sequence(node, path)
        if items is None:
            return None
        if not items:
            self.error(node, path, "bad_value", "an empty list matches nothing")
            return None
        values = [self.text(item, f"{path}[{i}]") for i, item in enumerate(items)]
        if any(v is None for v in values):
            return None
        texts = [v for v in values if v is not None]
        return OneOf(tuple(texts)) if self._tiers_ok(node, path, texts, tier) else None

    def _tiers_ok(self, node: Node, path: str, names: list[str], tier: bool) -> bool:
        if not tier:
            return True
        bad = [n for n in names if n not in self.tiers]
        for n in bad:
            self.error(node, path, "unknown_tier",
                       f"unknown tier {n!r}{suggest(n, self.tiers)}; configured tiers: {', '.join(sorted(self.tiers))}")
        return not bad

    # ---- retention -----------------------------------------------------------------

    def retain(self, node: Node, path: str) -> RetainCondition | None:
        """``retain: TERM`` or ``retain: {until: TERM}``."""
        if isinstance(node, MappingNode) and len(node.value) == 1 and node.value[0][0].value == "until":
            node, path = node.value[0][1], f"{path}.until"
        term = self.term(node, path)
        return RetainCondition(term) if term else None

    def term(self, node: Node, path: str) -> Term | None:
        if isinstance(node, MappingNode):
            for key_node, _ in node.value:
                if key_node.value == "death_plus":
                    self.error(key_node, f"{path}.death_plus", "unknown_key",
                               "death + N cannot be expressed: the catalog holds no date of death "
                               "(see 'Limitations' in docs/policies.md)")
                    return None
        before = len(self.issues)
        entries = self.mapping(node, path, TERM_NAMES, what="retention term")
        if entries is None:
            return None
        if len(entries) != 1:
            if entries or len(self.issues) == before:  # else an unknown term was already reported
                self.error(node, path, "bad_value",
                           f"give exactly one retention term ({', '.join(TERM_NAMES)}); use max: [...] to combine")
            return None
        (key, (_, value)), = entries.items()
        sub = f"{path}.{key}"
        if key in _PERIOD_TERMS:
            period = self.period(value, sub)
            return _PERIOD_TERMS[key](period) if period is not None else None
        if key == "mqsa":
            return self._mqsa(value, sub)
        items = self.sequence(value, sub)
        if items is None:
            return None
        if not items:
            self.error(value, sub, "bad_value", "max needs at least one term")
            return None
        terms = [self.term(item, f"{sub}[{i}]") for i, item in enumerate(items)]
        if any(t is None for t in terms):
            return None
        return Latest(tuple(t for t in terms if t is not None))

    def _mqsa(self, node: Node, path: str) -> Term | None:
        if isinstance(node, MappingNode) and not node.value or (
            isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"
        ):
            return Mqsa()
        entries = self.mapping(node, path, ("years", "without_later_mammogram_years"))
        if entries is None:
            return None
        years = self.integer(entries["years"][1], f"{path}.years", low=1, high=100) if "years" in entries else 5
        key = "without_later_mammogram_years"
        longer = self.integer(entries[key][1], f"{path}.{key}", low=1, high=100) if key in entries else 10
        if years is None or longer is None:
            return None
        if longer < years:
            self.error(node, path, "bad_value", f"{key} ({longer}) is shorter than years ({years})")
            return None
        return Mqsa(years, longer)
