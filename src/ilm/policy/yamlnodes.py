"""Reading YAML nodes with their line numbers, collecting located issues.

PyYAML's composer gives a node tree in which every node keeps its position
(``start_mark``), before any Python object is built. :class:`NodeReader`
walks that tree and records each problem as a :class:`PolicyIssue` with the
file, the 1-based line and the field path, so that one pass reports every
error in the file instead of stopping at the first.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from datetime import date

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ilm.policy.durations import DurationError, Period, parse_period
from ilm.policy.errors import PolicyIssue
from ilm.policy.sizes import SizeError, parse_size

__all__ = ["NodeReader", "compose", "suggest"]

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_NULL = "tag:yaml.org,2002:null"
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def compose(text: str, source: str) -> tuple[Node | None, list[PolicyIssue]]:
    """The YAML node tree of ``text``, or the located syntax error."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), []
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        if exc.context_mark is not None and exc.problem_mark is not None and exc.context_mark.line + 1 != line:
            problem += f" (the construct started on line {exc.context_mark.line + 1})"
        return None, [PolicyIssue(source, line, "", "yaml", f"not valid YAML: {problem}")]
    except yaml.YAMLError as exc:
        return None, [PolicyIssue(source, 0, "", "yaml", f"not valid YAML: {exc}")]


def suggest(word: str, choices: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` when a close choice exists, else an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def line_of(node: Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 0


class NodeReader:
    """Typed access to YAML nodes; every failure is recorded, then ``None`` is returned."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[PolicyIssue] = []

    def error(self, node: Node | None, path: str, kind: str, message: str) -> None:
        self.issues.append(PolicyIssue(self.source, line_of(node), path, kind, message))

    def mapping(
        self, node: Node, path: str, allowed: Collection[str] | None, *, what: str = "key"
    ) -> dict[str, tuple[Node, Node]] | None:
        """The entries of a mapping node by key, reporting unknown and duplicate keys."""
        if not isinstance(node, MappingNode):
            self.error(node, path, "bad_value", f"expected a mapping (key: value), got {_kind(node)}")
            return None
        out: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, path, "bad_value", "a key must be plain text")
                continue
            key = key_node.value
            sub = f"{path}.{key}" if path else key
            if key in out:
                self.error(key_node, sub, "bad_value", f"duplicate key {key!r} (first on line {line_of(out[key][0])})")
                continue
            if allowed is not None and key not in allowed:
                kind = "unknown_attribute" if what == "attribute" else "unknown_key"
                self.error(key_node, sub, kind, f"unknown {what} {key!r}{suggest(key, allowed)}; "
                                                f"expected one of: {', '.join(sorted(allowed))}")
                continue
            out[key] = (key_node, value_node)
        return out

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.error(node, path, "bad_value", f"expected a list, got {_kind(node)}")
            return None
        return list(node.value)

    def text(self, node: Node, path: str) -> str | None:
        """A scalar as written (``NO`` stays ``NO``, not a YAML boolean)."""
        if not isinstance(node, ScalarNode) or node.tag == _NULL:
            self.error(node, path, "bad_value", f"expected a text value, got {_kind(node)}")
            return None
        return str(node.value)

    def boolean(self, node: Node, path: str) -> bool | None:
        if not isinstance(node, ScalarNode) or node.tag != _BOOL:
            self.error(node, path, "bad_value", f"expected true or false, got {_shown(node)}")
            return None
        return bool(_CONSTRUCTOR.construct_yaml_bool(node))

    def integer(self, node: Node, path: str, *, low: int = 0, high: int = 10_000) -> int | None:
        if not isinstance(node, ScalarNode) or node.tag != _INT:
            self.error(node, path, "bad_value", f"expected a whole number, got {_shown(node)}")
            return None
        value = int(_CONSTRUCTOR.construct_yaml_int(node))
        if not low <= value <= high:
            self.error(node, path, "bad_value", f"{value} is out of range {low}..{high}")
            return None
        return value

    def period(self, node: Node, path: str) -> Period | None:
        raw = self.text(node, path)
        if raw is None:
            return None
        try:
            return parse_period(raw)
        except DurationError as exc:
            self.error(node, path, "bad_duration", str(exc))
            return None

    def size(self, node: Node, path: str) -> int | None:
        raw = self.text(node, path)
        if raw is None:
            return None
        try:
            return parse_size(raw)
        except SizeError as exc:
            self.error(node, path, "bad_size", str(exc))
            return None

    def day(self, node: Node, path: str) -> date | None:
        raw = self.text(node, path)
        if raw is None:
            return None
        try:
            return date.fromisoformat(raw.strip())
        except ValueError:
            self.error(node, path, "bad_value", f"{raw!r} is not a date like 2015-01-31")
            return None


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing"
    return repr(node.value)


def _shown(node: Node) -> str:
    return _kind(node)
