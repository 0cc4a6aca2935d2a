"""Policy errors: every problem located by file, line and field.

    IlmError (ilm.errors)
    └── PolicyError        a policy file was refused; ``issues`` lists every problem

A policy with any error is refused as a whole: nothing of it is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from ilm.errors import IlmError

__all__ = ["PolicyIssue", "PolicyError", "ISSUE_KINDS"]

ISSUE_KINDS = (
    "yaml",               # not valid YAML, or not a mapping at the top
    "unknown_key",        # a key the language does not have (typo?)
    "unknown_attribute",  # a condition on an attribute the catalog does not keep
    "unknown_tier",       # a tier the configuration does not define
    "bad_duration",       # not a period such as P10Y or 180d
    "bad_size",           # not a size such as 500MB
    "bad_regex",          # a regular expression that does not compile
    "bad_value",          # a value of the wrong type or out of range
    "missing",            # a required key is absent (rule id, action, rules ...)
    "duplicate_id",       # two rules with the same id
    "shadowed",           # a rule no study can reach: an earlier rule matches all it would
)


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """A problem found in a policy file, located by file, line and field path."""

    file: str
    line: int  # 1-based; 0 when the problem is not tied to a line
    field: str  # dotted path such as ``rules[2].when.study_age.older_than``
    kind: str  # one of ISSUE_KINDS
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PolicyError(IlmError):
    """A policy was refused; ``issues`` holds every problem, in file order."""

    def __init__(self, issues: list[PolicyIssue] | tuple[PolicyIssue, ...]) -> None:
        self.issues = tuple(issues)
        lines = "\n".join(str(i) for i in self.issues)
        super().__init__(f"policy refused, {len(self.issues)} error(s):\n{lines}")
