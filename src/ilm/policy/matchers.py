"""Matchers for text attributes: equals, one_of, regex, empty, not.

``equals`` and ``one_of`` ignore case and surrounding spaces; ``regex`` must
match a whole value (Python syntax; ``(?i)`` ignores case). A multi-valued
attribute matches if any of its values does, and ``not`` negates the whole
answer: ``modality: {not: MG}`` means "no MG series in the study".
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["Matcher", "Equals", "OneOf", "Regex", "Empty", "Negated"]


def _norm(v: str) -> str:
    return v.strip().casefold()


class Matcher(ABC):
    @abstractmethod
    def matches(self, values: tuple[str, ...]) -> bool: ...

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def key(self) -> Hashable: ...


@dataclass(frozen=True, slots=True)
class Equals(Matcher):
    value: str

    def matches(self, values: tuple[str, ...]) -> bool:
        want = _norm(self.value)
        return any(_norm(v) == want for v in values)

    def describe(self) -> str:
        return f"equals {self.value!r}"

    def key(self) -> Hashable:
        return ("one_of", frozenset({_norm(self.value)}))


@dataclass(frozen=True, slots=True)
class OneOf(Matcher):
    options: tuple[str, ...]

    def matches(self, values: tuple[str, ...]) -> bool:
        want = {_norm(o) for o in self.options}
        return any(_norm(v) in want for v in values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def key(self) -> Hashable:
        return ("one_of", frozenset(_norm(o) for o in self.options))


@dataclass(frozen=True, slots=True)
class Regex(Matcher):
    pattern: str
    compiled: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, values: tuple[str, ...]) -> bool:
        return any(self.compiled.fullmatch(v.strip()) for v in values)

    def describe(self) -> str:
        return f"matches /{self.pattern}/"

    def key(self) -> Hashable:
        return ("regex", self.pattern)


@dataclass(frozen=True, slots=True)
class Empty(Matcher):
    expected: bool

    def matches(self, values: tuple[str, ...]) -> bool:
        return (not any(v.strip() for v in values)) is self.expected

    def describe(self) -> str:
        return "is empty" if self.expected else "is not empty"

    def key(self) -> Hashable:
        return ("empty", self.expected)


@dataclass(frozen=True, slots=True)
class Negated(Matcher):
    inner: Matcher

    def matches(self, values: tuple[str, ...]) -> bool:
        return not self.inner.matches(values)

    def describe(self) -> str:
        return f"not ({self.inner.describe()})"

    def key(self) -> Hashable:
        return ("not", self.inner.key())
