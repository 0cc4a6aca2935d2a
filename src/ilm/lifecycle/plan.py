"""Planning: evaluate a policy over the whole catalog and store the result.

A plan records what the policy decided for every study it acts on (and every
study a protection vetoed), the hash of the policy text, and a hash of the
catalog facts it saw. ``apply`` later executes exactly these actions.

Two ways reach the same decisions. By default the database decides every
study it can decide with certainty (:mod:`ilm.catalog.policy_sql`) and only
the others are read into Python and given to the pure
:func:`~ilm.policy.evaluate`; ``pure=True`` reads every study and evaluates
each one in Python (the reference, and the fallback when a policy has a part
the database cannot evaluate exactly). The stored plan is the same either
way: the same actions, summary and hashes (the plan hash covers the actions
in Study Instance UID order; the order of the rows does not matter).

The catalog hash is the SHA-256 of a few aggregates of the catalog
(:func:`ilm.catalog.policy_sql.catalog_state`: active studies, their ids,
sizes, instance counts, newest update and read; holds), not of
every study: cheap at a million studies, and ``apply`` re-checks each
study's own fingerprint before acting anyway.
"""

from __future__ import annotations

import gc
import hashlib
import json
import secrets
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.facts import load_policy_inputs
from ilm.catalog.plans import PlanRow, fingerprint_text, insert_plan, study_tier_bytes
from ilm.catalog.policy_sql import (
    NotCompilable, PureChunk, SqlPlan, action_lines, catalog_state_and_tier_bytes, consistent_read, decision_of_code, discarded,
    evaluate_chunk, finish_plan, insert_actions, no_rule_decision, plan_decision_rows, plan_in_sql, same_snapshot,
)
from ilm.config import Settings
from ilm.cost import TierPrice, monthly_storage_cost
from ilm.errors import IlmError
from ilm.lifecycle.tiering import cooling_enabled, with_cooling
from ilm.policy import Action, Decision, Policy, StudyFacts, evaluate_all, parse_policy

__all__ = ["PolicySource", "read_policy", "fingerprint", "make_plan", "PlanResult", "PlanDecisions", "tier_prices"]


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

    Plain text, ``instances/bytes/last read/holds on the study``, the last
    read as its UTC wall clock ``YYYY-MM-DD HH:MM:SS.ffffff`` (empty if
    never read): the rows the database decides store these facts and are
    read back with the same text (:func:`ilm.catalog.plans.fingerprint_text`).
    Tiers are left out: an interrupted move changes them, and the resumed
    apply must finish it; the policy, evaluated again, judges tiers.
    """
    return fingerprint_text(s.instance_count, s.size_bytes, s.last_accessed_at, len(s.holds))


def tier_prices(settings: Settings) -> dict[str, TierPrice]:
    return {n: TierPrice(t.cost_per_gb_month, t.retrieval_cost_per_gb, t.min_storage_days)
            for n, t in settings.tiers.items()}


class PlanDecisions(Sequence[Decision]):
    """Every study's decision in a plan the database made, read back on demand.

    Only the decisions evaluated in Python are held in memory. Iterating
    reads the active studies (up to the newest id the plan saw) with the
    plan's stored actions: a stored action is the decision its rule made; a
    study a rule decided in the database is recalled from its code; any
    other study no rule matched.
    """

    def __init__(self, catalog: Catalog, policy: Policy, plan_id: str, known: list[Decision],
                 max_id: int, total: int) -> None:
        self._catalog = catalog
        self._policy = policy
        self._plan_id = plan_id
        self._known = known
        self._max_id = max_id
        self._total = total
        self._all: list[Decision] | None = None

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[Decision]:
        if self._all is not None:
            yield from self._all
            return
        with self._catalog.read() as conn:
            yield from self.read(conn)

    def read(self, conn: Any) -> Iterator[Decision]:
        """The decisions, read on an open catalog connection."""
        known = {d.study_uid: d for d in self._known}
        for _sid, uid, action, code in plan_decision_rows(conn, self._plan_id, self._max_id):
            d = known.pop(uid, None)
            if d is not None:
                yield d
            elif action is not None:
                decision, tier, rule_id, reason = action
                try:
                    proposed = self._policy.rule(rule_id).action
                except KeyError:  # not a rule of the policy (a cooling move)
                    proposed = Action(decision)
                yield Decision(uid, Action(decision), proposed, rule_id, reason,
                               tier=tier if decision == Action.TRANSITION.value else None)
            elif code is not None and code > 0:
                yield decision_of_code(self._policy, code, uid)
            else:
                yield no_rule_decision(uid)
        yield from known.values()  # studies that left the active state since the plan

    def __getitem__(self, i: Any) -> Any:
        if self._all is None:
            self._all = list(iter(self))
        return self._all[i]


@dataclass
class PlanResult:
    plan: PlanRow
    decisions: Sequence[Decision] = field(default_factory=list)


def _new_id(now: datetime) -> str:
    return f"p{now:%Y%m%d}-{secrets.token_hex(3)}"


def _action(d: Decision, study: StudyFacts) -> dict[str, Any]:
    return dict(
        study_uid=study.study_uid, decision=d.action.value,
        target_tier=d.tier if d.action is Action.TRANSITION else None, rule_id=d.rule_id,
        vetoes=json.dumps([{"protection": v.protection, "reason": v.reason} for v in d.vetoes]),
        fingerprint=fingerprint(study), instance_count=study.instance_count, size_bytes=study.size_bytes,
        state="pending" if d.action is not Action.KEEP else "kept", reason=d.reason,
    )


def _with_actions(pairs: Iterable[tuple[Decision, StudyFacts]]) -> list[tuple[Decision, dict[str, Any] | None]]:
    """Each decision with its plan_actions row (None: the plan does not store it)."""
    return [(d, _action(d, study) if _acts(d) else None) for d, study in pairs]


def _evaluate_rows(policy: Policy, chunk: PureChunk, as_of: date) -> list[tuple[Decision, dict[str, Any] | None]]:
    """The pure decisions of a chunk with their plan_actions rows (no I/O: runs in the plan's second thread)."""
    return _with_actions(evaluate_chunk(policy, chunk, as_of))


def _acts(d: Decision) -> bool:
    """A plan stores the studies it acts on and those a protection or a missing fact kept."""
    return d.action is not Action.KEEP or bool(d.vetoes) or bool(d.unknown)


def _plan_hash(source: PolicySource, catalog_hash: str, as_of: date, lines: Iterable[str]) -> str:
    """SHA-256 of the policy, the catalog state, the date and every action, one line each by study id
    (:func:`ilm.catalog.policy_sql.action_lines`)."""
    h = hashlib.sha256(json.dumps([source.sha256, catalog_hash, as_of.isoformat()]).encode())
    for piece in lines:
        h.update(piece.encode())
    return h.hexdigest()


def _catalog_hash(state: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def make_plan(
    catalog: Catalog,
    settings: Settings,
    source: PolicySource,
    *,
    as_of: date,
    created_by: str,
    progress: Callable[[int], None] | None = None,
    store: bool = True,
    pure: bool = False,
) -> PlanResult:
    """Decide for every active study and store the plan (unless ``store`` is False).

    By default the database decides what it can and the pure code the rest;
    ``pure`` evaluates every study in Python. The plan is the same.
    """
    now = datetime.now(timezone.utc)
    with _gc_paused():
        if not pure:
            made = _plan_in_sql(catalog, settings, source, as_of, created_by, progress, store, now)
            if made is not None:
                return made
        return _plan_in_python(catalog, settings, source, as_of, created_by, progress, store, now)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector waits while a plan is made.

    A plan allocates many small objects that only reference counting frees
    (rows, facts, decisions); each allocation burst set off collections that
    walked every object alive, a third of the time of the studies evaluated
    in Python. Collected once at the end.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _plan_in_python(catalog: Catalog, settings: Settings, source: PolicySource, as_of: date, created_by: str,
                    progress: Callable[[int], None] | None, store: bool, now: datetime) -> PlanResult:
    """Every study read into Python and evaluated there; the plan written afterwards."""
    decided: list[Decision] = []
    actions: list[dict[str, Any]] = []
    by_uid: dict[str, StudyFacts] = {}
    with catalog.read() as conn:
        consistent_read(conn)
        state, before = catalog_state_and_tier_bytes(conn, list(settings.tiers))
        inputs = load_policy_inputs(conn)
        stream: Iterator[tuple[Decision, StudyFacts]] = zip(
            evaluate_all(source.policy, inputs.studies, inputs.patients, as_of), inputs.studies)
        # Access-based tiering: cooling-days moves for the studies no rule decided (ilm.lifecycle.tiering).
        stream = with_cooling(stream, conn, settings, as_of)
        for d, study in stream:
            decided.append(d)
            if _acts(d):
                by_uid[study.study_uid] = study
                actions.append(_action(d, study))
            if progress:
                progress(1)
        # Cost before and after: moves shift a study's bytes to the target tier,
        # expiries remove them.
        per_study = study_tier_bytes(conn, [a["study_uid"] for a in actions if a["decision"] != "keep"])
    actions.sort(key=lambda a: a["study_uid"])
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
    summary = summarise(decided, by_uid, before, dict(after), tier_prices(settings), len(inputs.studies))
    catalog_hash = _catalog_hash(state)
    plan = PlanRow(
        id=_new_id(now), created_at=now, created_by=created_by, as_of=as_of, policy_name=source.policy.name,
        policy_path=source.path, policy_sha256=source.sha256, catalog_sha256=catalog_hash,
        plan_sha256="", state="planned", approved_by=None, summary=summary,
    )
    # The plan hash is read back from the stored rows (by study id), as the database path reads it.
    with catalog.write() as conn, (nullcontext() if store else discarded(conn)):
        insert_plan(conn, plan, actions)
        plan = replace(plan, plan_sha256=_plan_hash(source, catalog_hash, as_of, action_lines(conn, plan.id)))
        finish_plan(conn, plan.id, summary, plan.plan_sha256)
        if store:
            _audit(conn, plan, source, created_by)
    return PlanResult(plan, decided)


def _audit(conn: Any, plan: PlanRow, source: PolicySource, created_by: str) -> None:
    append_audit(conn, at=plan.created_at, actor=created_by, action="plan.create", plan_id=plan.id,
                 detail={"policy": source.path, "policy_sha256": source.sha256, "as_of": plan.as_of.isoformat(),
                         "plan_sha256": plan.plan_sha256, "actions": plan.summary["actions"]})


# SQLite decides the studies in this many ranges of ids, so that the studies of one range left to the pure
# code are evaluated (in a second thread) while the database decides the next; at most this many studies are
# evaluated ahead so (held in memory at once), the others after the decision, a chunk at a time.
_DECIDE_PARTS = 4
_AHEAD = 60_000


class _EvaluatedAhead:
    """The pure evaluation of the studies the SQL left, range by range as :meth:`SqlPlan.decide` completes them.

    The plan's connection lists a range's studies (their codes are rows it has not committed); their facts
    are read, on ``reader`` (a connection that sees the same snapshot) when there is one, and evaluated in
    the pool's thread, while the plan's connection decides the next range.
    """

    def __init__(self, sql: SqlPlan, pool: ThreadPoolExecutor, policy: Policy, as_of: date,
                 reader: Any) -> None:
        self._sql, self._pool, self._policy, self._as_of, self._reader = sql, pool, policy, as_of, reader
        self._futures: list[Future[list[tuple[Decision, dict[str, Any] | None]]]] = []
        self._count = 0
        self._started = False
        self._upto: int | None = None  # every study up to this id is evaluated ahead (None: all, once started)

    def decided(self, lo: int | None, hi: int | None) -> None:
        if self._count >= _AHEAD:
            return
        for part in self._sql.pure_ids(lo, hi):
            self._sql.pure_evaluated += len(part)
            self._count += len(part)
            if self._reader is None:
                chunk = self._sql.read_chunk(self._sql.conn, part)
                self._futures.append(self._pool.submit(_evaluate_rows, self._policy, chunk, self._as_of))
            else:
                self._futures.append(self._pool.submit(self._read_and_evaluate, part))
        self._started, self._upto = True, hi

    def _read_and_evaluate(self, ids: list[int]) -> list[tuple[Decision, dict[str, Any] | None]]:
        assert self._reader is not None
        return _evaluate_rows(self._policy, self._sql.read_chunk(self._reader, ids), self._as_of)

    def stream(self) -> Iterator[tuple[Decision, dict[str, Any] | None]]:
        """Every decision with its plan_actions row (None: not stored), in study id order."""
        for f in self._futures:
            yield from f.result()
        if self._started and self._upto is None:
            return
        for c in self._sql.pure_chunks(lo=self._upto if self._started else None):
            yield from _evaluate_rows(self._policy, c, self._as_of)


def _plan_in_sql(catalog: Catalog, settings: Settings, source: PolicySource, as_of: date, created_by: str,
                 progress: Callable[[int], None] | None, store: bool, now: datetime) -> PlanResult | None:
    """The database decides and writes what it can, in one transaction; None if the policy has no exact SQL form.

    One statement computes every study's code and writes a row of
    ``plan_rule_actions`` for each study whose code is not 0: the expiries
    and moves a rule decided are stored that way. The studies it cannot
    decide with certainty are evaluated by the pure code and stored from
    Python in ``plan_actions``. With cooling days configured, every study a
    rule decided is streamed through Python instead, so that
    :func:`~ilm.lifecycle.tiering.with_cooling` sees them, and stored there.

    Two things run in a second thread while the database works: the
    catalog's aggregates (on a second connection that sees the same
    snapshot) while the studies are decided, and the pure evaluation of the
    studies the SQL left, range of ids by range while SQLite decides the
    next range (:class:`_EvaluatedAhead`), the last while the SQL's actions
    are summed (SQLite and psycopg leave Python's lock while a statement
    runs).
    """
    plan_id = _new_id(now)
    with catalog.write() as conn, ThreadPoolExecutor(max_workers=1, thread_name_prefix="ilm-plan") as pool:
        consistent_read(conn)
        sql = plan_in_sql(conn, source.policy, as_of, plan_id)
        if sql is None:
            return None
        tiers = list(settings.tiers)
        # The second connection's snapshot is exported before the savepoint of a plan not stored (PostgreSQL
        # exports none from a subtransaction).
        with same_snapshot(conn) as other, nullcontext() if store else discarded(conn):
            scan = None if other is None else pool.submit(catalog_state_and_tier_bytes, other, tiers)
            written = not cooling_enabled(settings)
            ahead = _EvaluatedAhead(sql, pool, source.policy, as_of, other)
            try:
                sql.decide(_DECIDE_PARTS if conn.dialect.name == "sqlite" else 1, ahead.decided if written else None)
            except NotCompilable:
                return None
            finally:
                state, before = catalog_state_and_tier_bytes(conn, tiers) if scan is None else scan.result()
            total = state["studies"]
            catalog_hash = _catalog_hash(state)
            plan = PlanRow(
                id=plan_id, created_at=now, created_by=created_by, as_of=as_of, policy_name=source.policy.name,
                policy_path=source.path, policy_sha256=source.sha256, catalog_sha256=catalog_hash,
                plan_sha256="", state="planned", approved_by=None, summary={},
            )
            insert_plan(conn, plan, [], rule_codes=sql.rule_codes() if written else None)
            if written:
                # A statement that leaves Python's lock for its whole run, while the thread evaluates the
                # last range. (Not a fetch of many rows: the driver takes the lock back at every row, and
                # waits for the thread each time.)
                sums, moved = sql.totals()
                stream: Iterable[tuple[Decision, dict[str, Any] | None]] = ahead.stream()
            else:
                stream = _with_actions(with_cooling(sql.stream(), conn, settings, as_of))
                sums, moved = {}, []
            known: list[Decision] = []
            actions: list[dict[str, Any]] = []
            vetoed: dict[str, int] = defaultdict(int)
            unknown: dict[str, int] = defaultdict(int)
            for d, stored in stream:
                known.append(d)
                if stored is not None:
                    actions.append(stored)
                for v in d.vetoes:
                    vetoed[v.protection] += 1
                for u in d.unknown:
                    unknown[u] += 1
            if not written:
                sql.forget()  # every decision went through Python and is stored in plan_actions
            insert_actions(conn, plan.id, actions)
            if progress:
                progress(total)
            # Totals: the SQL's own actions summed by the database, the others here.
            acting = [a for a in actions if a["decision"] != "keep"]
            for a in acting:
                row = sums.setdefault((a["decision"], a["rule_id"] or "", a["target_tier"] or ""), [0, 0, 0])
                row[0] += 1
                row[1] += a["instance_count"]
                row[2] += a["size_bytes"]
            per_study = study_tier_bytes(conn, [a["study_uid"] for a in acting])
            for a in acting:
                moved.extend((t, a["decision"], a["target_tier"], b) for t, b in per_study.get(a["study_uid"], {}).items())
            per_rule = {k: {"studies": n, "instances": i, "bytes": b} for k, (n, i, b) in sums.items()}
            after = defaultdict(int, before)
            for tier, decision, target, b in moved:
                if decision == "transition":
                    if tier != target:
                        after[tier] -= b
                        after[target] += b  # type: ignore[index]
                elif decision == "expire":
                    after[tier] -= b
            summary = _summary(per_rule, vetoed, unknown, before, dict(after), tier_prices(settings), total)
            plan_hash = _plan_hash(source, catalog_hash, as_of, action_lines(conn, plan.id))
            plan = replace(plan, plan_sha256=plan_hash, summary=summary)
            finish_plan(conn, plan.id, summary, plan_hash)
            decisions = PlanDecisions(catalog, source.policy, plan.id, known, state["max_id"], total)
            if store:
                _audit(conn, plan, source, created_by)
            else:  # read them now: the plan's rows go with the rollback
                decisions = list(decisions.read(conn))  # type: ignore[assignment]
        sql.close()
    return PlanResult(plan, decisions)


def summarise(
    decisions: Iterable[Decision],
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
    return _summary(per_rule, vetoed, unknown, before, after, prices, total)


def _summary(
    per_rule: Mapping[tuple[str, str, str], Mapping[str, int]],
    vetoed: Mapping[str, int],
    unknown: Mapping[str, int],
    before: Mapping[str, int],
    after: Mapping[str, int],
    prices: Mapping[str, TierPrice],
    total: int,
) -> dict[str, Any]:
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
