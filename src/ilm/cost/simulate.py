"""Where a policy puts a study month by month as it ages. Pure.

The pure policy evaluator (:func:`ilm.policy.evaluate`) is asked on future
days: the study's own facts, its patient's facts and the tier the
simulation has put it on. It is asked once a year and, when the answer
changes within the year, at the months between (bisection), so a
transition or an expiry is placed to the month at about 15 evaluations per
study for ten years instead of 120. This relies on decisions changing at
most once inside a year for a study that stays put, which holds for age
and time-since-read conditions (they only grow). Future reads, future
studies of the same patient and holds placed later are not known: the
study is simulated as nobody reads it again.

:func:`reborn` moves a recent study and its patient forward in time so
that the study arrives on a given day: the path of new data is that of the
recent arrivals, aged from their first day.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta

from ilm.cost.projection import Segment
from ilm.policy import Action, PatientFacts, Policy, StudyFacts, evaluate
from ilm.policy.conditions import AgeCondition, AnyCondition, Condition, NotCondition

__all__ = ["month_day", "monotone", "path_of", "reborn", "study_age_months"]

MAX_CHANGES = 8


def month_day(start: date, month: int) -> date:
    """The day ``month`` months after ``start`` (months of 365.25/12 days)."""
    return start + timedelta(days=round(month * 365.25 / 12))


def study_age_months(study: StudyFacts, today: date) -> int:
    """Months since the study date (else since it was received); 0 if neither is known."""
    when = study.study_date or (study.received_at.date() if study.received_at else None)
    if when is None:
        return 0
    return max(0, int((today - when).days / (365.25 / 12)))


def _grows(c: Condition) -> bool:
    """True if the condition, once met, stays met as time passes (nothing else changing)."""
    if isinstance(c, (NotCondition, AnyCondition)):
        return False
    return not (isinstance(c, AgeCondition) and c.younger_than is not None)


def monotone(policy: Policy) -> bool:
    """True if, for a study left where it is, a rule that acts keeps acting as time passes: no
    upper age bound, no ``not``/``any``, and no ``keep`` rule on age that could start to match
    later and stop a move. Protections only ever stop vetoing as time passes."""
    for rule in policy.rules:
        if not all(_grows(c) for c in rule.conditions):
            return False
        if rule.action is Action.KEEP and any(isinstance(c, AgeCondition) for c in rule.conditions):
            return False
    return True


def path_of(policy: Policy, study: StudyFacts, patient: PatientFacts | None, tier: str, start: date, months: int,
            *, step: int = 12, grows: bool = False) -> tuple[Segment, ...]:
    """The segments of ``study`` (now on ``tier``) under ``policy`` for ``months`` months from ``start``.

    With ``grows`` (see :func:`monotone`) the first probe is the last month: a study nothing
    happens to by then costs two evaluations, and a change is found by bisection over the
    whole horizon."""
    facts = replace(study, tiers=(tier,))
    segs = [Segment(0, tier)]
    seen: dict[tuple[int, tuple[str, ...]], tuple[Action, str | None] | None] = {}

    def decide(m: int) -> tuple[Action, str | None] | None:
        key = (m, facts.tiers)  # the month a bisection found is asked again: answer it from memory
        if key not in seen:
            d = evaluate(policy, facts, patient, month_day(start, m))
            seen[key] = None if d.action is Action.KEEP else (d.action, d.tier)
        return seen[key]

    t, changes, last = 0, 0, months - 1
    while t <= last and changes < MAX_CHANGES:
        acted = decide(t)
        if acted is not None:
            action, target = acted
            changes += 1
            if action is Action.EXPIRE:
                segs.append(Segment(t, None))
                break
            assert target is not None
            facts = replace(facts, tiers=(target,))
            segs.append(Segment(t, target))
            continue
        probe = last if grows else min(t + step, last)
        if probe <= t:
            break
        if decide(probe) is None:
            t = probe
            if probe == last:
                break
            continue
        lo, hi = t, probe
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if decide(mid) is None:
                lo = mid
            else:
                hi = mid
        t = hi
    return tuple(segs)


def _shift_dt(v: datetime | None, delta: timedelta, cap: date | None = None) -> datetime | None:
    if v is None:
        return None
    out = v + delta
    return min(out, datetime.combine(cap, datetime.min.time(), tzinfo=v.tzinfo)) if cap is not None else out


def reborn(study: StudyFacts, patient: PatientFacts | None, arrives: date) -> tuple[StudyFacts, PatientFacts | None]:
    """The study and its patient moved in time so that the study is received on ``arrives``.

    Every date moves by the same amount (the patient's age at the study stays
    the same); a read that would fall after ``arrives`` is set to that day.
    """
    base = study.received_at.date() if study.received_at else study.study_date
    if base is None:
        return study, patient
    delta = arrives - base
    moved = replace(
        study,
        study_date=study.study_date + delta if study.study_date else None,
        birth_date=study.birth_date + delta if study.birth_date else None,
        received_at=_shift_dt(study.received_at, delta),
        last_accessed_at=_shift_dt(study.last_accessed_at, delta, arrives),
    )
    if patient is None:
        return moved, None
    return moved, replace(
        patient,
        newest_study_date=patient.newest_study_date + delta if patient.newest_study_date else None,
        mammogram_dates=tuple(d + delta for d in patient.mammogram_dates),
    )
