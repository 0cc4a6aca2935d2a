"""Policy evaluation compiled to SQL: the decisions of :func:`ilm.policy.evaluate`, found by the database.

The meaning of a policy is defined once, in :mod:`ilm.policy`. This module is
a faster way to reach exactly the same decisions over a whole catalog: the
database decides every study it can decide with certainty, and hands the rest
to the pure :func:`~ilm.policy.evaluate` with the same facts
:mod:`ilm.catalog.facts` would load. A test checks on random catalogs and
random policies, on SQLite and PostgreSQL, that both give identical
decisions (tests/policy_sql/).

One query reads every active study once and computes, in SQL, a code per
study: 0 when no rule matches (the study is kept as it is, which is most of
a catalog on most days), ``k + 1`` when rule ``k`` decides for certain and,
for an expiry, no protection covers the study, and -1 when the database
cannot be sure. Only the rows whose code is not 0 come back to Python.

How the SQL stays exact:

- **Three-valued logic.** Each condition compiles to a SQL boolean whose
  NULL stands for "UNKNOWN, or the SQL cannot tell". SQL's AND, OR and NOT
  are Kleene's, which is how :func:`~ilm.policy.conditions.all_of`, ``any``
  and ``not`` combine MATCH, MISS and UNKNOWN; a NULL is never read as a
  match or a miss, so a study whose decision depends on one is evaluated by
  the pure code (code -1).
- **Calendar periods without SQL date arithmetic.** ``as_of > P.add_to(d)``
  is monotonic in ``d``, so Python finds, with the pure ``Period.add_to``,
  the first day ``T`` for which it no longer holds, and SQL compares the
  column with ``T``: 29 February, month ends and leap years are decided by
  the pure code alone. The two comparisons between two columns (patient
  age at the study, pediatric majority) compare (year * 12 + month, day)
  pairs, which is exact for month clamping (see :meth:`_Sql.after_shift`).
- **Patient facts** (the last encounter, undated studies, the newest
  mammogram) come from the patient's studies that are not being purged, as
  :func:`ilm.policy.facts.patient_facts_from_studies` defines them: whether
  the patient has an undated study by one join per study (the patients who
  have one are listed once), the newest date and the later mammograms by
  correlated subqueries asked only of the studies old enough to need them. A catalog where two patients share a patient key
  (``ISSUER:ID``) is planned by the pure path.
- **Text** is compared in SQL only when it is printable ASCII and, for the
  backslash-joined multi-valued columns, has no blank next to a separator;
  ``equals`` / ``one_of`` then mean ``lower(trim(value))``. Other text (a
  non-ASCII description, a tab) is "cannot tell". A ``regex`` runs the
  policy's own compiled pattern as a Python function registered on SQLite;
  on PostgreSQL a policy with a regex is not compiled (the caller falls back
  to the pure path).
- **No reason text is made in SQL.** A protection that covers an expiry (or
  cannot tell), a rule that is UNKNOWN, a legal hold on the study or its
  patient, an expiry of a study with a WORM copy locked on or after the plan's
  date: the study is evaluated by the pure code, which writes the
  reasons. What the fast path states itself is the matched rule's plain
  outcome ("move to warm", "already on warm", "expire", "kept by rule R")
  and "no rule matched", as :func:`ilm.policy.evaluate` words them.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    String,
    and_,
    case,
    cast,
    extract,
    false,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    true,
    type_coerce,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.elements import ColumnElement

from ilm.catalog.plans import _MULTI as _MULTI_TIER  # the same "held on several tiers" as the plan's cost
from ilm.catalog.plans import _multi_tier_bytes, rule_codes_of, study_tier_bytes
from ilm.catalog.locks import study_locks
from ilm.catalog.retention import list_holds, patient_key
from ilm.catalog.schema import holds, instances, locations, patients, plan_actions, plan_rule_actions, plans, studies
from ilm.policy.conditions import (
    AgeCondition,
    AnyCondition,
    AttributeCondition,
    Condition,
    DateCondition,
    FlagCondition,
    NotCondition,
    RangeCondition,
)
from ilm.policy.durations import Period
from ilm.policy.evaluate import Decision, evaluate
from ilm.policy.facts import (
    MAMMOGRAPHY_SOP_CLASSES,
    SECONDARY_CAPTURE_SOP_CLASS,
    Hold,
    HoldScope,
    PatientFacts,
    StudyFacts,
    patient_facts_from_studies,
    split_multi,
)
from ilm.policy.matchers import Empty, Equals, Matcher, Negated, OneOf, Regex
from ilm.policy.protections import Protections
from ilm.policy.retention import BirthPlus, LastEncounterPlus, Latest, Mqsa, RetainCondition, StudyDatePlus, Term
from ilm.policy.rules import Action, Policy

__all__ = [
    "NotCompilable", "CompiledPolicy", "SqlPlan", "ALREADY", "compile_policy", "plan_in_sql", "count_in_sql",
    "threshold", "no_rule_decision", "decision_of_code", "consistent_read", "discarded",
    "catalog_state", "catalog_state_and_tier_bytes", "insert_actions", "finish_plan", "action_lines",
    "plan_decision_rows", "PureChunk", "evaluate_chunk", "same_snapshot",
]

Bool = ColumnElement[Any]
_SEP = "\\"
_FETCH = 5000  # ids per IN (...) when loading facts for the pure evaluation
_PURE_CHUNK = 30_000  # studies whose facts are held at once for the pure evaluation
ALREADY = 100_000  # code offset: a transition rule matched a study already on its tier


class NotCompilable(Exception):
    """The policy (or the catalog) cannot be decided in SQL with certainty; use the pure path."""


def threshold(period: Period, as_of: date) -> date:
    """The first day ``d`` with ``period.add_to(d) >= as_of``.

    ``add_to`` never decreases as ``d`` grows (month-end clamping keeps the
    order), so ``as_of > period.add_to(d)`` holds exactly for ``d`` before
    this day: "older than P on as_of" is ``d < threshold(P, as_of)``.
    """
    lo, hi = 1, date.max.toordinal()
    while lo < hi:
        mid = (lo + hi) // 2
        if period.add_to(date.fromordinal(mid)) >= as_of:
            hi = mid
        else:
            lo = mid + 1
    return date.fromordinal(lo)


def _norm(v: str) -> str:  # as ilm.policy.matchers compares equals / one_of
    return v.strip().casefold()


def _like_escape(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _has_regex(m: Matcher) -> bool:
    return isinstance(m, Regex) or (isinstance(m, Negated) and _has_regex(m.inner))


_SINGLE = {
    "study_uid": studies.c.study_uid, "institution": studies.c.institution_name,
    "description": studies.c.description, "accession": studies.c.accession_number,
    "patient_id": patients.c.patient_id, "issuer": patients.c.issuer, "sex": patients.c.sex,
}
_MULTI = {
    "modality": studies.c.modalities, "sop_class": studies.c.sop_classes, "body_part": studies.c.body_parts,
    "station": studies.c.station_names, "manufacturer": studies.c.manufacturers, "labels": studies.c.labels,
    "current_tier": studies.c.tiers,
}
_PATIENT_FIELDS = ("patient_id", "issuer", "sex")
# Every mammography SOP class UID contains one of these (checked at import).
_MAMMOGRAPHY_UID_PARTS = ("1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.13.1.")
assert all(any(p in uid for p in _MAMMOGRAPHY_UID_PARTS) for uid in MAMMOGRAPHY_SOP_CLASSES)


class _Sql:
    """The expressions that differ between SQLite and PostgreSQL, and three-valued logic.

    A condition's value ("tri") is MATCH, MISS or UNKNOWN. PostgreSQL keeps
    them as a boolean (NULL: unknown), whose AND, OR and NOT are Kleene's and
    stop at the first deciding operand. SQLite 3.40 evaluates both sides of
    AND and OR outside a WHERE, so there a tri is an integer, 0 (MISS), 1
    (UNKNOWN) or 2 (MATCH): AND is the minimum, OR the maximum, NOT is
    2 - x, each computed with a simple CASE that reads its first operand
    once and the second only when the first does not decide.
    """

    def __init__(self, dialect: str) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise NotCompilable(f"no SQL compilation for {dialect}")
        self.sqlite = dialect == "sqlite"
        self.T: Any = literal(2, Integer) if self.sqlite else true()
        self.F: Any = literal(0, Integer) if self.sqlite else false()
        self.U: Any = literal(1, Integer) if self.sqlite else null()

    # ---- three-valued logic --------------------------------------------------

    def leaf(self, boolean: Any) -> Any:
        """A SQL comparison (NULL when a fact is missing) as a tri."""
        if not self.sqlite:
            return boolean
        return case({1: 2, 0: 0}, value=type_coerce(boolean, Integer), else_=1)

    def and_(self, parts: Sequence[Any]) -> Any:
        """Kleene's AND of the parts, in order, each evaluated at most once, stopping at the first MISS.

        SQLite: ``coalesce(CASE x1 WHEN 0 THEN 0 WHEN 1 THEN <a MISS among the
        rest, else 1> END, CASE x2 ..., 2)``: flat (SQLite's parser allows
        only about twenty nested CASEs) and lazy (coalesce stops at the first
        value).
        """
        return self._fold(parts, stop=0, top=2)

    def or_(self, parts: Sequence[Any]) -> Any:
        """Kleene's OR, as :meth:`and_` with MATCH and MISS swapped."""
        return self._fold(parts, stop=2, top=0)

    def _fold(self, parts: Sequence[Any], *, stop: int, top: int) -> Any:
        if not parts:
            return literal(top, Integer) if self.sqlite else (true() if top == 2 else false())
        if len(parts) == 1:
            return parts[0]
        if not self.sqlite:
            return and_(*parts) if stop == 0 else or_(*parts)

        def seen_unknown(rest: Sequence[Any]) -> Any:
            return func.coalesce(*[case({stop: stop}, value=x) for x in rest], literal(1, Integer))

        arms = [case({stop: stop, 1: seen_unknown(parts[i + 1:])}, value=x) if i + 1 < len(parts)
                else case({stop: stop, 1: 1}, value=x) for i, x in enumerate(parts)]
        return func.coalesce(*arms, literal(top, Integer))

    def not_(self, x: Any) -> Any:
        return literal(2, Integer) - x if self.sqlite else not_(x)

    def is_true(self, x: Any) -> Any:
        """For CASE WHEN / WHERE: the tri is MATCH."""
        return x == 2 if self.sqlite else x

    def first_rule(self, arms: Sequence[tuple[Any, Any]]) -> Any:
        """The first rule that does not miss decides: ``coalesce(CASE m1 WHEN MISS THEN NULL WHEN
        MATCH THEN d1 ELSE -1 END, ..., 0)``, flat, and lazy past the deciding rule."""
        if not arms:
            return literal(0, Integer)
        return func.coalesce(*[case((self.F, null()), (self.T, d), value=m, else_=-1) for m, d in arms],
                             literal(0, Integer))

    def most(self, tri: Any) -> Any:
        """Aggregate over rows: MATCH if any row matches, else UNKNOWN if any is unknown, else MISS (no row: MISS)."""
        if self.sqlite:
            return func.coalesce(func.max(tri), 0)
        return case((func.bool_or(tri), true()), (func.count() > func.count(tri), null()), else_=false())

    # ---- text and dates --------------------------------------------------------

    def contains(self, hay: Any, needle: Any) -> Bool:
        return (func.instr(hay, needle) if self.sqlite else func.strpos(hay, needle)) > 0

    def like_ci(self, col: Any, pattern: str, escape: str | None = None) -> Any:
        """LIKE ignoring ASCII case (SQLite's LIKE already does)."""
        return col.like(pattern, escape=escape) if self.sqlite else col.ilike(pattern, escape=escape)

    def printable(self, col: Any) -> Any:
        """Every character of ``col`` is printable ASCII (space to tilde)."""
        if self.sqlite:
            return not_(col.op("GLOB", is_comparison=True)(literal("*[^ -~]*")))
        return not_(col.op("~", is_comparison=True)(literal(r"[^\x20-\x7e]")))

    def delimited(self, col: Any) -> Any:
        return literal(_SEP) + col + literal(_SEP)

    def clean_multi(self, col: Any) -> Bool:
        """Printable ASCII with no blank next to a separator: SQL splits it as split_multi does."""
        d = self.delimited(col)
        return and_(self.printable(col), not_(self.contains(d, _SEP + " ")), not_(self.contains(d, " " + _SEP)))

    def day_before(self, col: Any, day: date) -> Any:
        """The calendar day of timestamp ``col``, as ilm.policy.context.day_of reads it, is before ``day``.

        SQLite keeps SQLAlchemy's text ("YYYY-MM-DD HH:MM:SS.ffffff", the wall
        clock written, read back naive), so its first ten characters are the
        day; PostgreSQL's timestamptz is read as an aware time whose UTC day counts.
        """
        if self.sqlite:
            return type_coerce(col, String) < literal(day.isoformat(), String)
        return col < literal(datetime.combine(day, time(0), tzinfo=timezone.utc), DateTime(timezone=True))

    def ymd(self, col: Any) -> tuple[Any, Any, Any]:
        if self.sqlite:  # DATE is 'YYYY-MM-DD' text
            return (cast(func.substr(col, 1, 4), Integer), cast(func.substr(col, 6, 2), Integer),
                    cast(func.substr(col, 9, 2), Integer))
        return (cast(extract("year", col), Integer), cast(extract("month", col), Integer),
                cast(extract("day", col), Integer))

    def newest(self, col: Any) -> Any:
        """max(date column) over a patient's studies. On PostgreSQL of ``col + 0``: otherwise the
        planner may answer max() by walking the study-date index backwards until it meets the
        patient, which reads most of the index for a patient whose studies are old."""
        return func.max(col) if self.sqlite else func.max(col + literal(0, Integer))

    def minus_days(self, col: Any, n: int) -> Any:
        if self.sqlite:
            return func.date(col, f"-{n} days")
        return col - literal(n, Integer)

    def after_shift(self, d: Any, b: Any, months: int, *, or_equal: bool = False) -> Bool:
        """``d > shift(b, months)`` (or ``>=``), where shift clamps to the month's end like Period.add_to.

        With i = year * 12 + month: shift(b, m) is (i_b + m, min(day_b, L)),
        L the last day of that month. When d is in that month, L is d's own
        month end and day_d <= L, so ``d > shift`` is ``day_d > day_b`` and
        ``d >= shift`` is ``day_d >= day_b or day_d == L``. A shift past year
        9999 (Period.add_to returns date.max) is never reached by d.
        """
        yd, md, dd = self.ymd(d)
        yb, mb, db = self.ymd(b)
        i_d = yd * 12 + md
        i_s = yb * 12 + mb + months
        if not or_equal:
            same = dd > db
        else:
            leap = case((or_(and_(yd % 4 == 0, yd % 100 != 0), yd % 400 == 0), 1), else_=0)
            last = case((md == 2, 28 + leap), (md.in_([4, 6, 9, 11]), 30), else_=31)
            same = or_(dd >= db, dd == last)
        return or_(i_d > i_s, and_(i_d == i_s, same))


@dataclass
class CompiledPolicy:
    """A policy as SQL for one dialect and one "as of" day."""

    policy: Policy
    as_of: date
    code: ColumnElement[Any]        # per active study: 0, rule index + 1, or -1 (ask the pure code)
    source: Any                     # the FROM clause the code reads
    functions: dict[str, Callable[[Any], Any]] = field(default_factory=dict)  # SQLite functions to register
    patient_facts: bool = True      # a decision may depend on a patient's other studies (keyed by patient key)

    def register(self, conn: Connection) -> None:
        if self.functions:
            raw = conn.connection.driver_connection
            for name, fn in self.functions.items():
                raw.create_function(name, 1, fn, deterministic=True)  # type: ignore[union-attr]


@dataclass
class _Tri:
    """A compiled condition and a rough cost, so that cheap conditions are checked first.

    An AND or OR keeps its parts, so that nested ones are merged (both are associative).
    """

    expr: Any
    cost: int
    op: str = ""
    parts: tuple["_Tri", ...] = ()


# The patients with a study without a usable StudyDate (not being purged): their last encounter is unknown.
_undated = studies.alias("undated")
_UNDATED = (select(_undated.c.patient_pk).where(_undated.c.study_date.is_(None), _undated.c.state != "purging")
            .distinct().subquery("undated_patients"))


class _Compiler:
    def __init__(self, policy: Policy, as_of: date, dialect: str) -> None:
        self.policy = policy
        self.as_of = as_of
        self.q = _Sql(dialect)
        self.functions: dict[str, Callable[[Any], Any]] = {}
        self.uses_patients = False
        self.uses_undated = False
        self.s = studies.c
        self._thresholds: dict[Period, date] = {}

    # ---- helpers -------------------------------------------------------------

    def T(self, period: Period) -> date:
        if period not in self._thresholds:
            self._thresholds[period] = threshold(period, self.as_of)
        return self._thresholds[period]

    def all_of(self, tris: Sequence[_Tri]) -> _Tri:
        return self._join("and", tris)

    def any_of(self, tris: Sequence[_Tri]) -> _Tri:
        return self._join("or", tris)

    def _join(self, op: str, tris: Sequence[_Tri]) -> _Tri:
        flat: list[_Tri] = []
        for t in tris:
            flat.extend(t.parts if t.op == op else (t,))
        if len(flat) == 1:
            return flat[0]
        ordered = sorted(flat, key=lambda t: t.cost)  # Kleene's AND and OR do not depend on the order
        exprs = [t.expr for t in ordered]
        return _Tri(self.q.and_(exprs) if op == "and" else self.q.or_(exprs), sum(t.cost for t in flat), op,
                    tuple(ordered))

    def mammography(self, table: Any) -> Any:
        """ilm.policy.facts.is_mammography of a row of ``table`` as a tri (UNKNOWN when its text is not plain).

        Most studies are ruled out by a few LIKEs: a mammogram's modalities
        hold the letters "mg", its SOP classes a mammography or Secondary
        Capture UID, its body parts "brea" (no non-ASCII character
        upper-cases to M, G, B, R, E or A, so this holds for any text).
        """
        q = self.q
        c = table.c
        mods = q.delimited(func.upper(c.modalities))
        sops = q.delimited(c.sop_classes)
        parts = q.delimited(func.upper(c.body_parts))
        raw = or_(
            q.contains(mods, f"{_SEP}MG{_SEP}"),
            *[q.contains(sops, f"{_SEP}{uid}{_SEP}") for uid in sorted(MAMMOGRAPHY_SOP_CLASSES)],
            and_(q.contains(parts, f"{_SEP}BREAST{_SEP}"), q.contains(sops, f"{_SEP}{SECONDARY_CAPTURE_SOP_CLASS}{_SEP}")),
        )
        maybe = or_(
            q.like_ci(c.modalities, "%mg%"),
            *[c.sop_classes.like(f"%{p}%") for p in _MAMMOGRAPHY_UID_PARTS],
            and_(c.sop_classes.like(f"%{SECONDARY_CAPTURE_SOP_CLASS}%"), q.like_ci(c.body_parts, "%brea%")),
        )
        every = c.modalities + literal(_SEP) + c.sop_classes + literal(_SEP) + c.body_parts
        return case((c.modalities == "MG", q.T), (not_(maybe), q.F), (q.clean_multi(every), q.leaf(raw)), else_=q.U)

    # ---- conditions ----------------------------------------------------------

    def rule(self, conditions: Sequence[Condition]) -> Any:
        return self.all_of([self.condition(c) for c in conditions]).expr

    def condition(self, c: Condition) -> _Tri:
        s, q = self.s, self.q
        if isinstance(c, AttributeCondition):
            return self.attribute(c.field, c.matcher)
        if isinstance(c, AgeCondition):
            return self.age(c)
        if isinstance(c, DateCondition):
            parts = []
            if c.before is not None:
                parts.append(_Tri(q.leaf(s.study_date < c.before), 1))
            if c.after is not None:
                parts.append(_Tri(q.leaf(s.study_date > c.after), 1))
            return self.all_of(parts)
        if isinstance(c, RangeCondition):
            col = s.size_bytes if c.field == "study_size" else s.instance_count
            parts = []
            if c.at_least is not None:
                parts.append(_Tri(q.leaf(col >= literal(c.at_least, BigInteger)), 1))
            if c.at_most is not None:
                parts.append(_Tri(q.leaf(col <= literal(c.at_most, BigInteger)), 1))
            return self.all_of(parts)
        if isinstance(c, FlagCondition):
            if c.field == "mammography":
                mg = self.mammography(studies)
                return _Tri(mg if c.expected else q.not_(mg), 10)
            if c.field == "identity_removed":
                return _Tri(q.leaf(s.patient_identity_removed == (true() if c.expected else false())), 1)
        if isinstance(c, NotCondition):
            inner = self.all_of([self.condition(x) for x in c.inner])
            return _Tri(q.not_(inner.expr), inner.cost)
        if isinstance(c, AnyCondition):
            return self.any_of([self.all_of([self.condition(x) for x in g]) for g in c.groups])
        if isinstance(c, RetainCondition):
            return self.ended(c.term)
        raise NotCompilable(f"condition {c.field!r} ({type(c).__name__}) has no SQL form")

    def attribute(self, name: str, m: Matcher) -> _Tri:
        multi = name in _MULTI
        col = _MULTI[name] if multi else _SINGLE.get(name)
        if col is None:
            raise NotCompilable(f"attribute {name!r} has no column")
        if name in _PATIENT_FIELDS:
            self.uses_patients = True
        if _has_regex(m):
            if not self.q.sqlite:
                raise NotCompilable("regular expressions are evaluated in Python (SQLite) or by the pure path")
            return _Tri(self.python_matcher(col, multi, m), 50)
        return _Tri(self.matcher(col, multi, m), 6 if multi else 5)

    def python_matcher(self, col: Any, multi: bool, m: Matcher) -> Any:
        """The policy's own matcher, registered on SQLite as a function of the column text."""
        name = f"ilm_policy_match_{len(self.functions)}"

        def run(text: Any) -> int:
            if text is None:
                return 1
            values = split_multi(text) if multi else ((text,) if text.strip() else ())
            return 2 if m.matches(values) else 0

        self.functions[name] = run
        return getattr(func, name)(col)

    def matcher(self, col: Any, multi: bool, m: Matcher) -> Any:
        q = self.q
        if isinstance(m, Negated):
            return q.not_(self.matcher(col, multi, m.inner))
        if isinstance(m, Empty):
            if multi:
                blank = func.replace(func.replace(col, _SEP, ""), " ", "") == ""
            else:
                blank = func.trim(col) == ""
            return case((q.printable(col), q.leaf(blank if m.expected else not_(blank))), else_=q.U)
        if isinstance(m, (Equals, OneOf)):
            options = m.options if isinstance(m, OneOf) else (m.value,)
            # An empty value matches nothing (blank values are no values); a
            # multi-valued attribute's parts never hold a backslash.
            wanted = sorted({w for w in (_norm(o) for o in options) if w and not (multi and _SEP in w)})
            if not wanted:
                return q.F
            # The common value is exactly one wanted value as written (CT, hot): it matches.
            spelled = sorted({v for w in wanted for v in (w, w.upper())})
            if multi:
                hay = q.delimited(func.lower(col))
                exact = or_(*[q.contains(hay, f"{_SEP}{w}{_SEP}") for w in wanted])
                # A printable ASCII value without any wanted value in it, in any
                # case, matches none; only rows that hold one are split exactly.
                maybe = or_(*[q.like_ci(col, "%" + _like_escape(w) + "%", escape="!") for w in wanted])
                return case((col.in_(spelled), q.T),
                            (maybe, case((q.clean_multi(col), q.leaf(exact)), else_=q.U)),
                            (q.printable(col), q.F), else_=q.U)
            return case((col.in_(spelled), q.T),
                        (q.printable(col), q.leaf(func.lower(func.trim(col)).in_(wanted))), else_=q.U)
        raise NotCompilable(f"matcher {type(m).__name__} has no SQL form")

    def age(self, c: AgeCondition) -> _Tri:
        s, q = self.s, self.q
        f = c.field

        def older(p: Period) -> _Tri:  # "as_of (or the study day) is after start + p"
            if f == "since_last_access":
                return _Tri(q.leaf(q.day_before(func.coalesce(s.last_accessed_at, s.received_at), self.T(p))), 1)
            if f == "since_received":
                return _Tri(q.leaf(q.day_before(s.received_at, self.T(p))), 1)
            if f == "study_age":
                return _Tri(q.leaf(s.study_date < self.T(p)), 1)
            self.uses_patients = True
            birth = patients.c.birth_date  # NULL: unknown, or known only as a PatientAge range: the pure code decides
            if f == "patient_age_now":
                return _Tri(q.leaf(birth < self.T(p)), 2)
            if f == "patient_age_at_study":
                return _Tri(self.after_period(s.study_date, birth, p), 3)
            raise NotCompilable(f"age field {f!r} has no SQL form")

        parts = []
        if c.older_than is not None:
            parts.append(older(c.older_than))
        if c.younger_than is not None:
            t = older(c.younger_than)
            parts.append(_Tri(q.not_(t.expr), t.cost))
        return self.all_of(parts)

    def after_period(self, d: Any, b: Any, p: Period) -> Any:
        """``d > p.add_to(b)`` for two date columns, as a tri: ``d - days > shift(b, months)``."""
        q = self.q
        months = p.years * 12 + p.months
        if not p.days:
            return q.leaf(q.after_shift(d, b, months))
        try:
            earliest = date.min + timedelta(days=p.days)
        except OverflowError:
            return case((or_(d.is_(None), b.is_(None)), q.U), else_=q.F)
        return case((d < earliest, q.U), else_=q.leaf(q.after_shift(q.minus_days(d, p.days), b, months)))

    # ---- retention terms: "as_of > the term's end" ---------------------------

    def ended(self, t: Term) -> _Tri:
        s, q = self.s, self.q
        if isinstance(t, StudyDatePlus):
            return _Tri(q.leaf(s.study_date < self.T(t.period)), 1)
        if isinstance(t, LastEncounterPlus):
            return _Tri(self.last_encounter_over(t.period), 2)
        if isinstance(t, BirthPlus):
            self.uses_patients = True
            return _Tri(q.leaf(patients.c.birth_date < self.T(t.period)), 2)
        if isinstance(t, Mqsa):
            return _Tri(self.mqsa_over(t.years, t.without_later_mammogram_years), 4)
        if isinstance(t, Latest):
            # max(...) ends when every term has ended; a known term still running
            # keeps the study whatever the unknown ones say: Kleene's AND.
            return self.all_of([self.ended(x) for x in t.terms])
        raise NotCompilable(f"retention term {type(t).__name__} has no SQL form")

    def last_encounter_over(self, period: Period) -> Any:
        """The patient's newest StudyDate + period is over (UNKNOWN while any of the patient's studies is undated).

        The study's own date is one of the patient's, so a recent study
        decides without looking at the others; only older ones look them up.
        """
        q, s = self.q, self.s
        t = self.T(period)
        self.uses_undated = True  # looked up once per study, by a join (build), however many terms ask
        other = studies.alias("encounter")
        newest = (select(q.newest(other.c.study_date) < t)
                  .where(other.c.patient_pk == s.patient_pk, other.c.state != "purging")
                  .correlate(studies).scalar_subquery())
        return case((_UNDATED.c.patient_pk.is_not(None), q.U), (s.study_date >= t, q.F), else_=q.leaf(newest))

    def mqsa_over(self, years: int, longer: int) -> Any:
        """StudyDate + ``years`` (the patient has a later mammogram) or + ``longer`` (none) is over.

        Only a study between the two ends needs the patient's later mammograms.
        """
        q, s = self.q, self.s
        short, long_ = self.T(Period(years=years)), self.T(Period(years=longer))
        other = studies.alias("later")
        later = (select(q.most(self.mammography(other)))
                 .where(other.c.patient_pk == s.patient_pk, other.c.state != "purging",
                        other.c.study_date > s.study_date)
                 .correlate(studies).scalar_subquery())
        return case((s.study_date.is_(None), q.U), (s.study_date >= short, q.F), (s.study_date < long_, q.T),
                    else_=later)

    # ---- protections: MATCH when none covers the study -----------------------

    def clear(self, p: Protections) -> Any:
        s, q = self.s, self.q
        parts: list[_Tri] = []
        if p.mammography.switch.enabled:
            m = p.mammography
            mg = self.mammography(studies)
            parts.append(_Tri(q.or_([q.not_(mg), self.mqsa_over(m.years, m.without_later_mammogram_years)]), 10))
        if p.pediatric.switch.enabled:
            self.uses_patients = True
            ped = p.pediatric
            birth = patients.c.birth_date
            over = q.leaf(birth < self.T(Period(years=ped.age_of_majority + ped.years_after_majority)))
            adult = q.leaf(q.after_shift(s.study_date, birth, 12 * ped.age_of_majority, or_equal=True))
            parts.append(_Tri(q.or_([over, case((birth > date(9000, 1, 1), q.U), else_=adult)]), 3))
        if p.minimum_retention.switch.enabled:
            parts.append(_Tri(q.leaf(s.study_date < self.T(p.minimum_retention.period)), 1))
        if p.recently_accessed.switch.enabled:
            t = self.T(p.recently_accessed.within)
            parts.append(_Tri(q.leaf(and_(q.day_before(s.received_at, t),
                                          or_(s.last_accessed_at.is_(None), q.day_before(s.last_accessed_at, t)))), 1))
        # legal_hold: checked in Python on the rows that come back; unknown_facts:
        # any UNKNOWN above already sends the study to the pure code.
        return self.all_of(parts).expr

    # ---- the decision code ---------------------------------------------------

    def transition_code(self, tier: str, k: int) -> Any:
        """For a study transition rule ``k`` matched: ALREADY + k + 1 when every tier holding it is
        ``tier`` (the study stays where it is), k + 1 when it moves, -1 when the tiers column is not
        plain text (the pure code decides).

        Each part of the column is wrapped in its own separators (``a\\b`` becomes
        ``\\a\\\\b\\``) so that removing ``\\tier\\`` removes every part equal to it and
        nothing else; whatever remains that is not a separator is another tier. The common
        column, one tier as ilm writes it, is decided before that.
        """
        q, s = self.q, self.s
        already, moves = ALREADY + k + 1, k + 1
        if _SEP in tier or tier != tier.strip() or not tier:
            return literal(moves, Integer)  # no part of the column can be this tier
        wrapped = q.delimited(func.replace(s.tiers, _SEP, _SEP + _SEP))
        rest = func.replace(wrapped, f"{_SEP}{tier}{_SEP}", "")
        others = func.replace(rest, _SEP, "") != ""
        has = func.length(rest) < func.length(wrapped)
        clean = q.clean_multi(s.tiers)
        return case(
            (s.tiers == tier, already),
            (and_(not_(q.contains(s.tiers, _SEP)), clean), moves),  # one other tier, or none
            (and_(clean, has, not_(others)), already),
            (clean, moves),
            else_=-1,
        )

    def code(self) -> Any:
        """Per study: 0 no rule matched; k + 1 rule k decided (for a transition: the study moves);
        ALREADY + k + 1 transition rule k matched a study already on its tier; -1 the pure code decides."""
        rules = self.policy.rules
        q = self.q
        clear = self.clear(self.policy.protections) if any(r.action is Action.EXPIRE for r in rules) else None
        arms = []
        for k, rule in enumerate(rules):
            decided: ColumnElement[Any] = literal(k + 1, Integer)
            if rule.action is Action.EXPIRE:
                decided = case((q.is_true(clear), k + 1), else_=-1)
            elif rule.action is Action.TRANSITION:
                assert rule.tier is not None
                decided = self.transition_code(rule.tier, k)
            arms.append((self.rule(rule.conditions), decided))
        return q.first_rule(arms)

    def build(self) -> CompiledPolicy:
        code = self.code()
        src: Any = studies
        if self.uses_patients:
            src = src.join(patients, patients.c.id == studies.c.patient_pk)
        if self.uses_undated:
            src = src.outerjoin(_UNDATED, _UNDATED.c.patient_pk == studies.c.patient_pk)
        # Facts across a patient's studies are read by a retention term or a protection
        # (protections judge expiries only); holds are matched by patient key either way.
        patient_facts = any(r.action is Action.EXPIRE or _uses_patient_terms(r.conditions) for r in self.policy.rules)
        return CompiledPolicy(self.policy, self.as_of, code, src, self.functions, patient_facts)


def _uses_patient_terms(conditions: Sequence[Condition]) -> bool:
    def term(t: Term) -> bool:
        return isinstance(t, (LastEncounterPlus, Mqsa)) or (isinstance(t, Latest) and any(term(x) for x in t.terms))

    for c in conditions:
        if isinstance(c, RetainCondition) and term(c.term):
            return True
        if isinstance(c, NotCondition) and _uses_patient_terms(c.inner):
            return True
        if isinstance(c, AnyCondition) and any(_uses_patient_terms(g) for g in c.groups):
            return True
    return False


def compile_policy(policy: Policy, as_of: date, dialect: str) -> CompiledPolicy:
    """The SQL of ``policy`` on ``as_of`` for ``dialect``; NotCompilable if a part has no exact SQL form."""
    return _Compiler(policy, as_of, dialect).build()


# ---- decisions the fast path states itself (worded as ilm.policy.evaluate does) ----


def no_rule_decision(study_uid: str) -> Decision:
    """The decision for a study no rule matched."""
    return Decision(study_uid, Action.KEEP, Action.KEEP, None, "no rule matched")


def decision_of_code(policy: Policy, code: int, uid: str) -> Decision:
    """The decision a code (see :meth:`_Compiler.code`) stands for, worded as evaluate._decide words it."""
    if code == 0:
        return no_rule_decision(uid)
    if code > ALREADY:
        rule = policy.rules[code - ALREADY - 1]
        return Decision(uid, Action.KEEP, Action.TRANSITION, rule.id, f"already on {rule.tier}", tier=rule.tier)
    rule = policy.rules[code - 1]
    if rule.action is Action.EXPIRE:
        return Decision(uid, Action.EXPIRE, Action.EXPIRE, rule.id, "expire")
    if rule.action is Action.TRANSITION:
        return Decision(uid, Action.TRANSITION, Action.TRANSITION, rule.id, f"move to {rule.tier}", tier=rule.tier)
    return Decision(uid, Action.KEEP, rule.action, rule.id, f"kept by rule {rule.id}")


# ---- the plan's own rows -----------------------------------------------------------------

def _key_collisions(conn: Connection) -> bool:
    """Whether two patients share a patient key (``ID`` / ``ISSUER:ID``), which only a ':' allows."""
    p = patients.c
    if conn.execute(select(p.id).where(or_(p.patient_id.contains(":"), p.issuer.contains(":"))).limit(1)).first() is None:
        return False
    key = case((p.issuer != "", p.issuer + literal(":") + p.patient_id), else_=p.patient_id)
    dup = select(key.label("k")).group_by(key).having(func.count() > 1).limit(1)
    return conn.execute(dup).first() is not None


def _holds(conn: Connection) -> tuple[dict[str, tuple[Hold, ...]], dict[str, tuple[Hold, ...]]]:
    on_study: dict[str, list[Hold]] = {}
    on_patient: dict[str, list[Hold]] = {}
    for h in list_holds(conn):
        hold = Hold(scope=HoldScope(h.scope), reason=h.reason, placed_by=h.created_by, placed_at=h.created_at)
        (on_study if h.scope == "study" else on_patient).setdefault(h.target, []).append(hold)
    return ({k: tuple(v) for k, v in on_study.items()}, {k: tuple(v) for k, v in on_patient.items()})


_FACT_COLUMNS = (
    studies.c.id, studies.c.patient_pk, studies.c.study_uid, studies.c.study_date, studies.c.study_date_raw,
    studies.c.patient_age, studies.c.modalities, studies.c.sop_classes, studies.c.body_parts,
    studies.c.institution_name, studies.c.station_names, studies.c.manufacturers, studies.c.description,
    studies.c.accession_number, studies.c.patient_identity_removed, studies.c.size_bytes, studies.c.instance_count,
    studies.c.labels, studies.c.received_at, studies.c.last_accessed_at, studies.c.tiers,
    patients.c.patient_id, patients.c.issuer, patients.c.birth_date, patients.c.birth_date_raw, patients.c.sex,
)


def _study_facts(r: Any, study_holds: dict[str, tuple[Hold, ...]],
                 locks: dict[str, datetime] | None = None) -> StudyFacts:
    """A study row (the columns of _FACT_COLUMNS, in their order) as ilm.catalog.facts builds it.

    The row is unpacked, not read by name: a named read of a row costs more
    than the rest of the work here, on the tens of thousands of studies the
    pure code evaluates in a plan."""
    (_id, _patient_pk, study_uid, study_date, study_date_raw, patient_age, modalities, sop_classes, body_parts,
     institution_name, station_names, manufacturers, description, accession_number, patient_identity_removed,
     size_bytes, instance_count, labels, received_at, last_accessed_at, tiers,
     patient_id, issuer, birth_date, birth_date_raw, sex) = r
    return StudyFacts(
        study_uid=study_uid, patient_key=patient_key(patient_id, issuer), patient_id=patient_id,
        issuer=issuer, study_date=study_date, study_date_raw=study_date_raw, birth_date=birth_date,
        birth_date_raw=birth_date_raw, patient_age_raw=patient_age, sex=sex,
        modalities=split_multi(modalities), sop_classes=split_multi(sop_classes),
        body_parts=split_multi(body_parts), institution=institution_name,
        stations=split_multi(station_names), manufacturers=split_multi(manufacturers),
        description=description, accession=accession_number,
        identity_removed=bool(patient_identity_removed), size_bytes=int(size_bytes),
        instance_count=int(instance_count), labels=split_multi(labels), tiers=split_multi(tiers),
        received_at=received_at, last_accessed_at=last_accessed_at,
        holds=study_holds.get(study_uid, ()),
        locked_until=locks.get(study_uid) if locks else None,
    )


@dataclass
class SqlPlan:
    """A plan the database makes, on one connection inside one transaction.

    :meth:`decide` writes a row of ``plan_rule_actions`` for every active
    study whose code is not 0, under the plan's id: the expiries and moves
    a rule decided are stored that way (:meth:`rule_codes` maps their codes
    to what readers show), a study a rule kept keeps its code, a study the
    SQL cannot decide has code -1. :meth:`pure` evaluates those with the
    pure code (the caller stores the result in ``plan_actions``).
    """

    compiled: CompiledPolicy
    conn: Connection
    study_holds: dict[str, tuple[Hold, ...]]
    patient_holds: dict[str, tuple[Hold, ...]]
    plan_id: str
    scratch: bool = False     # a plan id of its own: close() deletes its rows
    pure_evaluated: int = 0   # studies handed to the pure evaluate()

    def _rows(self) -> Any:
        return plan_rule_actions.c.plan_id == self.plan_id

    def decide(self, parts: int = 1, decided: Callable[[int | None, int | None], None] | None = None) -> None:
        """Compute every active study's code (NotCompilable: SQLite refuses the statement; nothing was done).

        With ``parts`` > 1 the studies are decided in that many ranges of ids,
        one statement each, and ``decided(lo, hi)`` is called after each range
        (ids ``lo < id <= hi``; ``None, None``: all of them) is complete: the
        caller may read and evaluate its studies left to the pure code
        (:meth:`pure_chunks`) in another thread while the database decides the
        next range. The codes are the same however the ids are cut.
        """
        conn = self.conn
        self.pure_evaluated = 0
        held = self._held_ids()
        bounds: list[int | None] = [None, None]
        if parts > 1:
            lo, hi = conn.execute(select(func.min(studies.c.id), func.max(studies.c.id))).one()
            if lo is not None and hi - lo >= parts:  # every range bounded on both sides: one statement to compile
                step = (hi - lo + 1) // parts
                bounds = [lo - 1] + [lo - 1 + step * k for k in range(1, parts)] + [hi]
        for lo, hi in zip(bounds, bounds[1:]):
            try:
                conn.execute(_decide_statement(self.compiled, self.plan_id, lo, hi))
            except OperationalError as exc:
                # SQLite refuses the statement while preparing it: nothing was read or written.
                if conn.dialect.name == "sqlite" and _refused(exc):
                    raise NotCompilable(f"the database refuses the policy's statement: {exc.orig}") from None
                raise
            self._ask_pure(held, lo, hi)
            if decided is not None:
                decided(lo, hi)

    def _ask_pure(self, held: list[int], lo: int | None, hi: int | None) -> None:
        """Held studies, and expiries of studies with a locked copy, of the range: code -1."""
        r = plan_rule_actions.c
        held = [i for i in held if (lo is None or i > lo) and (hi is None or i <= hi)]
        for i in range(0, len(held), _FETCH):
            self.conn.execute(update(plan_rule_actions).where(self._rows(), r.study_pk.in_(held[i:i + _FETCH]))
                              .values(code=-1))
        self._locked_expiries(lo, hi)

    def _locked_expiries(self, lo: int | None = None, hi: int | None = None) -> None:
        """An expiry of a study with a WORM copy locked on or after the plan's date: the pure code
        decides (the worm_lock protection names the date)."""
        rules = self.compiled.policy.rules
        expiring = [k + 1 for k, r in enumerate(rules) if r.action is Action.EXPIRE]
        if not expiring:
            return
        start = datetime.combine(self.compiled.as_of, time.min, tzinfo=timezone.utc)
        locked = (select(instances.c.study_pk).join(locations, locations.c.instance_pk == instances.c.id)
                  .where(locations.c.retain_until >= start))
        r = plan_rule_actions.c
        self.conn.execute(update(plan_rule_actions).where(self._rows(), r.code.in_(expiring), r.study_pk.in_(locked),
                                                          *_id_range(r.study_pk, lo, hi))
                          .values(code=-1))

    def _held_ids(self) -> list[int]:
        """Active studies with a hold on them or on their patient: the pure code decides (and counts the holds)."""
        if not (self.study_holds or self.patient_holds):
            return []
        s, p = studies.c, patients.c
        key = case((p.issuer != "", p.issuer + literal(":") + p.patient_id), else_=p.patient_id)
        ids: set[int] = set()
        uids, keys = sorted(self.study_holds), sorted(self.patient_holds)
        for i in range(0, len(uids), _FETCH):
            ids.update(self.conn.execute(select(s.id).where(s.study_uid.in_(uids[i:i + _FETCH]))).scalars())
        for i in range(0, len(keys), _FETCH):
            pks = select(p.id).where(key.in_(keys[i:i + _FETCH]))
            ids.update(self.conn.execute(select(s.id).where(s.patient_pk.in_(pks))).scalars())
        return sorted(ids)

    def _acting(self) -> dict[int, Any]:
        rules = self.compiled.policy.rules
        return {k + 1: r for k, r in enumerate(rules) if r.action in (Action.EXPIRE, Action.TRANSITION)}

    def rule_codes(self) -> dict[int, tuple[str, str | None, str, str]]:
        """Code -> (decision, target tier, rule id, reason) of the expiries and moves a rule decided,
        worded as :func:`ilm.policy.evaluate` words them (stored with the plan: ``plans.rule_codes``)."""
        return {k: (r.action.value, r.tier if r.action is Action.TRANSITION else None, r.id,
                    "expire" if r.action is Action.EXPIRE else f"move to {r.tier}")
                for k, r in self._acting().items()}

    def totals(self) -> tuple[dict[tuple[str, str, str], list[int]], list[tuple[str, str, str | None, int]]]:
        """The expiries and moves the SQL decided, summed: per (action, rule, tier) [studies, instances,
        bytes], and bytes per (tier holding them, action, target tier), as
        :func:`ilm.catalog.plans.study_tier_bytes` counts them (one tier: the study's size; several: its
        verified copies)."""
        acting = self._acting()
        per_rule: dict[tuple[str, str, str], list[int]] = {}
        moved: list[tuple[str, str, str | None, int]] = []
        if not acting:
            return per_rule, moved
        s, r = studies.c, plan_rule_actions.c
        src = plan_rule_actions.join(studies, studies.c.id == r.study_pk)
        several = case((r.tiers.contains("\\", autoescape=True), 1), else_=0)  # as plans._MULTI
        q = (select(r.code, several, r.tiers, func.count(), func.coalesce(func.sum(r.instance_count), 0),
                    func.coalesce(func.sum(r.size_bytes), 0))
             .where(self._rows(), r.code.in_(list(acting))).group_by(r.code, several, r.tiers))
        many: list[tuple[str, int]] = []
        any_multi = False
        for c, multi, tiers, n, ic, b in self.conn.execute(q):
            rule = acting[int(c)]
            key = (rule.action.value, rule.id, rule.tier or "")
            row = per_rule.setdefault(key, [0, 0, 0])
            row[0] += int(n)
            row[1] += int(ic)
            row[2] += int(b)
            if tiers and not multi:
                moved.append((str(tiers), rule.action.value, rule.tier, int(b)))
            any_multi = any_multi or bool(multi)
        if any_multi:  # studies in the middle of a move: their verified copies, one by one
            for uid, c in self.conn.execute(select(s.study_uid, r.code).select_from(src)
                                            .where(self._rows(), r.code.in_(list(acting)), _MULTI_TIER)):
                many.append((uid, int(c)))
        per = study_tier_bytes(self.conn, [uid for uid, _ in many])
        for uid, c in many:
            rule = acting[c]
            moved.extend((tier, rule.action.value, rule.tier, b) for tier, b in per.get(uid, {}).items())
        return per_rule, moved

    def stream(self) -> Iterator[tuple[Decision, StudyFacts]]:
        """Every study a rule decided in SQL (with the facts a plan action needs), then :meth:`pure`.

        For a caller that must see each decision (the cooling moves of
        ilm.lifecycle.tiering, which then stores them all itself: see
        :meth:`forget`); otherwise the rows :meth:`decide` wrote are the plan's.
        """
        policy = self.compiled.policy
        s, r = studies.c, plan_rule_actions.c
        q = (select(s.study_uid, r.code, s.instance_count, s.size_bytes, s.last_accessed_at, s.tiers)
             .select_from(plan_rule_actions.join(studies, studies.c.id == r.study_pk))
             .where(self._rows(), r.code > 0).order_by(r.study_pk))
        for row in self.conn.execute(q.execution_options(yield_per=20_000)):
            facts = StudyFacts(study_uid=row.study_uid, instance_count=int(row.instance_count),
                               size_bytes=int(row.size_bytes), last_accessed_at=row.last_accessed_at,
                               tiers=split_multi(row.tiers))
            yield decision_of_code(policy, int(row.code), row.study_uid), facts
        yield from self.pure()

    def forget(self) -> None:
        """Delete the rows :meth:`decide` wrote (the caller stores every decision itself)."""
        self.conn.execute(plan_rule_actions.delete().where(self._rows()))

    def pure(self) -> Iterator[tuple[Decision, StudyFacts]]:
        """The pure evaluate() on the facts ilm.catalog.facts would load, for the studies the SQL left."""
        for chunk in self.pure_chunks():
            yield from evaluate_chunk(self.compiled.policy, chunk, self.compiled.as_of)

    def pure_chunks(self, size: int = _PURE_CHUNK, lo: int | None = None, hi: int | None = None) -> Iterator[PureChunk]:
        """The rows of the studies the SQL left (of ids ``lo < id <= hi`` if given) and of their patients'
        studies, in study id order, ``size`` studies at a time, each chunk read when the iterator is
        advanced (one statement, and one per 5,000 patients)."""
        r, s = plan_rule_actions.c, studies.c
        src = plan_rule_actions.join(studies, s.id == r.study_pk).join(patients, patients.c.id == s.patient_pk)
        last = lo or 0
        while True:
            rows = list(self.conn.execute(
                select(*_FACT_COLUMNS).select_from(src)
                .where(self._rows(), r.code < 0, r.study_pk > last, *_id_range(r.study_pk, None, hi))
                .order_by(r.study_pk).limit(size)))
            if not rows:
                return
            last = int(rows[-1].id)
            self.pure_evaluated += len(rows)
            yield self._chunk(self.conn, rows)
            if len(rows) < size:
                return

    def pure_ids(self, lo: int | None = None, hi: int | None = None) -> list[list[int]]:
        """The ids of the studies the SQL left to the pure code (of ``lo < id <= hi`` if given), in order,
        in chunks of the size :meth:`pure_chunks` reads."""
        r = plan_rule_actions.c
        q = select(r.study_pk).where(self._rows(), r.code < 0, *_id_range(r.study_pk, lo, hi)).order_by(r.study_pk)
        ids = [int(i) for i in self.conn.execute(q).scalars()]
        return [ids[i:i + _PURE_CHUNK] for i in range(0, len(ids), _PURE_CHUNK)]

    def read_chunk(self, conn: Connection, ids: list[int]) -> PureChunk:
        """The chunk :meth:`pure_chunks` reads for these studies (ids in order), read on ``conn``: this
        plan's connection, or one that sees the same snapshot (only catalog tables are read), in another
        thread."""
        s = studies.c
        src = studies.join(patients, patients.c.id == s.patient_pk)
        rows: list[Any] = []
        for i in range(0, len(ids), _FETCH):
            rows.extend(conn.execute(select(*_FACT_COLUMNS).select_from(src)
                                     .where(s.id.in_(ids[i:i + _FETCH])).order_by(s.id)))
        return self._chunk(conn, rows)

    def _chunk(self, conn: Connection, rows: list[Any]) -> PureChunk:
        return PureChunk(rows, self._patient_rows(sorted({r.patient_pk for r in rows}), conn),
                         study_locks(conn, [r.study_uid for r in rows]), self.study_holds, self.patient_holds)

    def _patient_rows(self, pks: list[int], conn: Connection | None = None) -> list[Any]:
        s = studies.c
        out: list[Any] = []
        for i in range(0, len(pks), _FETCH):
            out.extend((conn or self.conn).execute(
                select(s.study_uid, s.study_date, s.modalities, s.sop_classes, s.body_parts,
                       patients.c.patient_id, patients.c.issuer)
                .join(patients, patients.c.id == s.patient_pk)
                .where(s.patient_pk.in_(pks[i:i + _FETCH]), s.state != "purging")))
        return out

    def close(self) -> None:
        """A scratch plan's rows are deleted; a stored plan's stay (they are its actions)."""
        if self.scratch:
            self.forget()


@dataclass(frozen=True)
class PureChunk:
    """Studies the SQL left, as read from the catalog: their rows, the rows of their patients' studies
    (those not being purged), the retain-until of their locked copies, and the holds."""

    rows: list[Any]
    patient_rows: list[Any]
    locks: dict[str, datetime]
    study_holds: dict[str, tuple[Hold, ...]]
    patient_holds: dict[str, tuple[Hold, ...]]

    def inputs(self) -> list[tuple[StudyFacts, PatientFacts | None]]:
        """Each study's facts and its patient's, as ilm.catalog.facts builds them (no I/O)."""
        lite = [StudyFacts(study_uid=uid, patient_key=patient_key(patient_id, issuer), study_date=study_date,
                           modalities=split_multi(modalities), sop_classes=split_multi(sop_classes),
                           body_parts=split_multi(body_parts))
                for uid, study_date, modalities, sop_classes, body_parts, patient_id, issuer in self.patient_rows]
        pats = patient_facts_from_studies(lite, self.patient_holds)
        facts = [_study_facts(r, self.study_holds, self.locks) for r in self.rows]
        return [(f, pats.get(f.patient_key)) for f in facts]


def evaluate_chunk(policy: Policy, chunk: PureChunk, as_of: date) -> list[tuple[Decision, StudyFacts]]:
    """The pure evaluate() of each study of a chunk (no I/O: may run in another thread)."""
    return [(evaluate(policy, f, p, as_of), f) for f, p in chunk.inputs()]


def plan_in_sql(conn: Connection, policy: Policy, as_of: date, plan_id: str | None = None) -> SqlPlan | None:
    """The database's plan over every active study, or None when it cannot be exact here
    (a part of the policy without SQL form on this database, or patients sharing a key).

    Its rows are written under ``plan_id``; without one, under an id of its
    own that :meth:`SqlPlan.close` deletes.
    """
    try:
        compiled = compile_policy(policy, as_of, conn.dialect.name)
    except NotCompilable:
        return None
    if compiled.patient_facts and _key_collisions(conn):
        return None
    compiled.register(conn)
    study_holds, patient_holds = _holds(conn)
    if plan_id is None:
        return SqlPlan(compiled, conn, study_holds, patient_holds, f"~{secrets.token_hex(8)}", scratch=True)
    return SqlPlan(compiled, conn, study_holds, patient_holds, plan_id)


def _refused(exc: OperationalError) -> bool:
    """SQLite's parser refuses a statement this deep or this large (a policy of many nested any / not)."""
    return any(m in str(exc) for m in ("parser stack overflow", "too large", "too many"))


def _id_range(col: Any, lo: int | None, hi: int | None) -> list[Any]:
    """``lo < col <= hi``, each bound only when given."""
    return ([col > lo] if lo is not None else []) + ([col <= hi] if hi is not None else [])


def _decide_statement(compiled: CompiledPolicy, plan_id: str, lo: int | None = None, hi: int | None = None) -> Any:
    """INSERT a row of plan_rule_actions for every active study whose code is not 0 (of ids ``lo < id <= hi``).

    The code is computed once per study, in a subquery the database may not
    merge into the outer query (OFFSET 0): written in both the select list
    and WHERE, it would be computed twice for every study kept, which are
    the studies whose code is the most expensive.
    """
    s = studies.c
    inner = (select(s.id.label("id"), compiled.code.label("code"), s.instance_count, s.size_bytes,
                    s.last_accessed_at, s.tiers).select_from(compiled.source)
             .where(s.state == "active", *_id_range(s.id, lo, hi)).offset(0).subquery("coded"))
    c = inner.c
    return plan_rule_actions.insert().from_select(
        ["plan_id", "study_pk", "code", "instance_count", "size_bytes", "last_accessed_at", "tiers"],
        select(literal(plan_id, String), c.id, c.code, c.instance_count, c.size_bytes, c.last_accessed_at, c.tiers)
        .where(c.code != 0))


def count_in_sql(conn: Connection, policy: Policy, as_of: date) -> int:
    """One COUNT with the same predicates: the studies a rule decides or the pure code must see (the floor)."""
    compiled = compile_policy(policy, as_of, conn.dialect.name)
    compiled.register(conn)
    q = (select(func.count()).select_from(compiled.source)
         .where(studies.c.state == "active", compiled.code != 0))
    return int(conn.execute(q).scalar_one())


def consistent_read(conn: Connection) -> None:
    """Make the statements of a plan on ``conn`` see one snapshot: call before its first statement.

    SQLite: a transaction (deferred BEGIN in WAL mode, or the writer's
    BEGIN IMMEDIATE) already is one; PostgreSQL: REPEATABLE READ instead
    of its default READ COMMITTED.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")


@contextmanager
def same_snapshot(conn: Connection) -> Iterator[Connection | None]:
    """A second connection that sees the catalog as ``conn`` does, for a read run beside it in a thread
    (None for an SQLite database in memory, which has no second connection).

    ``conn`` is a plan's writer, after :func:`consistent_read`. SQLite: it
    holds the write lock since its BEGIN IMMEDIATE, so no commit can come
    between its snapshot and the one the second connection takes (its own
    uncommitted rows, the plan's, are not seen). PostgreSQL: the second
    transaction imports the writer's exported snapshot.
    """
    if conn.dialect.name == "sqlite" and conn.engine.url.database in (None, "", ":memory:"):
        yield None
        return
    snapshot = None
    if conn.dialect.name == "postgresql":
        snapshot = str(conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one())
    with conn.engine.connect() as other:
        if snapshot is not None:
            other.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            if not re.fullmatch(r"[0-9A-Fa-f-]+", snapshot):
                raise ValueError(f"unexpected snapshot id {snapshot!r}")
            other.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")  # a utility statement: no parameters
        try:
            yield other
        finally:
            other.rollback()


@contextmanager
def discarded(conn: Connection) -> Iterator[None]:
    """Whatever is written inside is rolled back (a plan previewed, not stored)."""
    sp = conn.begin_nested()
    try:
        yield
    finally:
        sp.rollback()


def catalog_state(conn: Connection) -> dict[str, Any]:
    """What a plan saw of the catalog, in a few aggregates (hashed into the plan's catalog hash).

    Active studies: count, sum of ids, of sizes and of instance counts, the
    newest update (a receipt is one) and read; the newest study id; holds:
    count, count released, newest id.
    Cheap on a million studies, and changed by what changes a plan: a study
    added, expired or restored, new instances, a read, a hold placed or
    released. ``apply`` re-checks every study's own fingerprint anyway.
    """
    return catalog_state_and_tier_bytes(conn, ())[0]


def catalog_state_and_tier_bytes(conn: Connection, tiers: Sequence[str]) -> tuple[dict[str, Any], dict[str, int]]:
    """:func:`catalog_state` and :func:`ilm.catalog.plans.tier_bytes`, from one scan of the studies.

    The bytes of the studies held on one of ``tiers`` (the configured tiers)
    are summed in the same scan; the studies held on several tiers, or on a
    tier not named, are summed as tier_bytes does, only if there are any.
    """
    s = studies.c
    single = and_(s.tiers != "", not_(_MULTI_TIER))
    per_tier = [x for t in tiers for x in (func.count(case((s.tiers == t, 1))),
                                           func.coalesce(func.sum(case((s.tiers == t, s.size_bytes))), 0))]
    row = conn.execute(
        select(func.count(), func.coalesce(func.sum(s.id), 0), func.coalesce(func.sum(s.size_bytes), 0),
               func.coalesce(func.sum(s.instance_count), 0), func.max(s.updated_at), func.max(s.last_accessed_at),
               func.count(case((_MULTI_TIER, 1))),
               func.count(case((and_(single, s.tiers.not_in(tiers)) if tiers else single, 1))), *per_tier)
        .where(s.state == "active")
    ).one()
    on_tier: dict[str, int] = {t: int(row[9 + 2 * i]) for i, t in enumerate(tiers) if row[8 + 2 * i]}
    if row[7]:  # a tier not configured (any more)
        q = (select(s.tiers, func.coalesce(func.sum(s.size_bytes), 0))
             .where(s.state == "active", single, s.tiers.not_in(tiers)).group_by(s.tiers))
        on_tier.update({str(t): int(b) for t, b in conn.execute(q)})
    if row[6]:  # studies in the middle of a move: their verified copies
        for per in _multi_tier_bytes(conn, (s.state == "active") & _MULTI_TIER).values():
            for t, b in per.items():
                on_tier[t] = on_tier.get(t, 0) + b
    top = int(conn.execute(select(func.coalesce(func.max(s.id), 0))).scalar_one())  # from the index, at once
    h = conn.execute(select(func.count(), func.count(holds.c.released_at), func.coalesce(func.max(holds.c.id), 0))).one()

    def iso(v: Any) -> str | None:
        if v is None:
            return None
        if v.tzinfo is not None:
            v = v.astimezone(timezone.utc).replace(tzinfo=None)
        return str(v.isoformat(" ", "microseconds"))

    return {
        "studies": int(row[0]), "id_sum": int(row[1]), "bytes": int(row[2]), "instances": int(row[3]),
        "updated": iso(row[4]), "read": iso(row[5]), "max_id": top,
        "holds": int(h[0]), "holds_released": int(h[1]), "holds_max_id": int(h[2]),
    }, on_tier


# ---- a stored plan's totals ----------------------------------------------------------------


_ACTION_COLUMNS = ("study_uid", "decision", "target_tier", "rule_id", "vetoes", "fingerprint", "instance_count",
                   "size_bytes", "state", "reason")


def insert_actions(conn: Connection, plan_id: str, actions: list[dict[str, Any]]) -> None:
    """Rows of plan_actions (each action: the values of _ACTION_COLUMNS, text and integers)."""
    if conn.dialect.name == "sqlite":
        # The driver's own executemany on the same connection and transaction: plain tuples, none of
        # SQLAlchemy's per-row parameter processing (which these columns do not need).
        names = ", ".join(("plan_id",) + _ACTION_COLUMNS)
        marks = ", ".join("?" * (len(_ACTION_COLUMNS) + 1))
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.executemany(f"INSERT INTO plan_actions ({names}) VALUES ({marks})",
                            [(plan_id, *[a[c] for c in _ACTION_COLUMNS]) for a in actions])
        finally:
            cur.close()
        return
    for i in range(0, len(actions), _FETCH):
        conn.execute(plan_actions.insert(), [dict(a, plan_id=plan_id) for a in actions[i:i + _FETCH]])


def finish_plan(conn: Connection, plan_id: str, summary: dict[str, Any], plan_sha256: str) -> None:
    conn.execute(update(plans).where(plans.c.id == plan_id)
                 .values(summary=json.dumps(summary, sort_keys=True), plan_sha256=plan_sha256))


def _line(sid: int, decision: str, tier: str | None, rule: str | None) -> str:
    return f"\n{sid}\t{decision}\t{tier or ''}\t{rule or ''}"


def action_lines(conn: Connection, plan_id: str) -> Iterator[str]:
    """Every action of a plan as text, one line ``\\n<study id>\\t<decision>\\t<target tier>\\t<rule>``
    each, in study id order, many lines per piece: the rows a rule decided (plan_rule_actions, with a
    code of ``plans.rule_codes``) merged with the rows of plan_actions (their study ids looked up by UID).
    What a plan's hash covers."""
    codes = rule_codes_of(conn, plan_id)
    tail = {c: _line(0, d, t, r)[2:] for c, (d, t, r, _) in codes.items()}  # "\t<decision>\t<tier>\t<rule>"
    a = plan_actions.c
    others = conn.execute(
        select(studies.c.id, a.decision, a.target_tier, a.rule_id)
        .join(studies, studies.c.study_uid == a.study_uid).where(a.plan_id == plan_id).order_by(studies.c.id))
    rest: Iterator[tuple[int, str]] = ((int(i), _line(int(i), d, t, rule)) for i, d, t, rule in others)
    if not tail:
        while head := list(islice(rest, 50_000)):
            yield "".join(x for _, x in head)
        return
    r = plan_rule_actions.c
    if conn.dialect.name == "sqlite":
        # The driver's own cursor on the same connection (and transaction): plain tuples, no result processing.
        inlist = ", ".join(str(int(c)) for c in sorted(tail))
        cur = conn.connection.driver_connection.execute(  # type: ignore[union-attr]
            f"SELECT study_pk, code FROM plan_rule_actions WHERE plan_id = ? AND code IN ({inlist}) ORDER BY study_pk",
            (plan_id,))
        fetch = cur.fetchmany
    else:
        q = select(r.study_pk, r.code).where(r.plan_id == plan_id, r.code.in_(sorted(tail))).order_by(r.study_pk)
        res = conn.execute(q.execution_options(stream_results=True))
        cur, fetch = None, res.fetchmany
    try:
        nxt = next(rest, None)
        while rows := fetch(50_000):
            if nxt is None or nxt[0] > rows[-1][0]:  # no other row within: the common case, at once
                yield "".join([f"\n{sid}{tail[code]}" for sid, code in rows])
                continue
            piece: list[str] = []
            for sid, code in rows:
                while nxt is not None and nxt[0] < sid:
                    piece.append(nxt[1])
                    nxt = next(rest, None)
                piece.append(f"\n{sid}{tail[code]}")
            yield "".join(piece)
        if nxt is not None:
            yield nxt[1] + "".join(x for _, x in rest)
    finally:
        if cur is not None:
            cur.close()


def plan_decision_rows(conn: Connection, plan_id: str, max_id: int) -> Iterator[tuple[int, str, Any, int | None]]:
    """(study id, UID, the plan's plan_actions row or None, its plan_rule_actions code or None) of the active
    studies up to ``max_id``, in id order."""
    a = plan_actions.alias("a")
    r = plan_rule_actions.alias("r")
    q = (select(studies.c.id, studies.c.study_uid, a.c.decision, a.c.target_tier, a.c.rule_id, a.c.reason, r.c.code)
         .select_from(studies.outerjoin(a, and_(a.c.plan_id == plan_id, a.c.study_uid == studies.c.study_uid))
                      .outerjoin(r, and_(r.c.plan_id == plan_id, r.c.study_pk == studies.c.id)))
         .where(studies.c.state == "active", studies.c.id <= max_id).order_by(studies.c.id))
    for row in conn.execute(q.execution_options(yield_per=20_000)):
        yield (int(row[0]), row[1], (row[2], row[3], row[4], row[5]) if row[2] is not None else None,
               None if row[6] is None else int(row[6]))
