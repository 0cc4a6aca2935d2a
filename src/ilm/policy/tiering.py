"""Access-based tiering, the pure part: cooling days, promotion on read, prefetch of priors.

Learned from NetApp FabricPool (cooling days, retrieval policy on-read /
never / promote) and S3 Intelligent-Tiering (objects not read for a while
move down, a read brings them back), done per study and per patient.
Nothing here does I/O: the caller gives the tiers (hottest first), the
study's facts and the dates.

Cooling. A study whose copies are all on one tier that has ``cooling_days``,
and that nobody has read for that many days as of the plan date, moves to
the next tier in config order. "Not read" counts from the newest of: its last
read, its receipt, and the time its copies arrived on that tier (so a study a
promotion or prefetch just brought up is not sent down again the same
night). A study with copies on several tiers (a move under way, a restored
copy) is left alone. The decision names the rule ``cooling:<tier>``.

Promotion. A read of a study whose copies sit on a tier with
``retrieval_policy = on_read`` (or ``prefetch_priors``, which includes it)
promotes the study to the first tier. ``never`` on any tier holding the study
keeps it where it is; so does an archive tier (a read there needs a restore).

Prefetch. When a new study of a patient arrives, the patient's relevant
priors (same modality or body part, the newest ``count`` within
``max_age_years`` of the new study's date) that sit on a tier with
``retrieval_policy = prefetch_priors`` are promoted to the first tier.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from ilm.policy.evaluate import Decision
from ilm.policy.facts import StudyFacts
from ilm.policy.rules import Action

__all__ = [
    "COOLING_PREFIX",
    "NON_IMAGE_MODALITIES",
    "PrefetchRule",
    "Promotion",
    "TierRole",
    "cooling_decision",
    "cooling_recheck",
    "cooling_rule_id",
    "idle_days",
    "idle_since",
    "is_cooling_rule",
    "next_tier",
    "promotion_check",
    "relevant_priors",
    "years_before",
]

COOLING_PREFIX = "cooling:"
# Modalities that are documents or derived objects, not images to compare:
# two studies sharing only a structured report are not "the same modality".
NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "DOC", "REG", "SEG", "RWV", "FID", "PLAN", "RTPLAN", "RTSTRUCT"})

RetrievalPolicy = Literal["never", "on_read", "prefetch_priors"]


@dataclass(frozen=True, slots=True)
class PrefetchRule:
    """Which priors are relevant to a new study."""

    count: int = 3
    max_age_years: int = 10
    match: Literal["modality", "body_part", "either"] = "either"


@dataclass(frozen=True, slots=True)
class TierRole:
    """What access-based tiering needs to know about one tier."""

    name: str
    cooling_days: int | None = None
    retrieval_policy: RetrievalPolicy = "never"
    archive: bool = False
    prefetch: PrefetchRule = PrefetchRule()


def cooling_rule_id(tier: str) -> str:
    return f"{COOLING_PREFIX}{tier}"


def is_cooling_rule(rule_id: str | None) -> bool:
    return bool(rule_id) and str(rule_id).startswith(COOLING_PREFIX)


def _role(roles: Sequence[TierRole], name: str) -> TierRole | None:
    for r in roles:
        if r.name == name:
            return r
    return None


def next_tier(roles: Sequence[TierRole], name: str) -> str | None:
    """The tier after ``name`` in config order, or None for the last (or an unknown) tier."""
    names = [r.name for r in roles]
    if name not in names:
        return None
    i = names.index(name)
    return names[i + 1] if i + 1 < len(names) else None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def idle_since(study: StudyFacts, on_tier_since: datetime | None = None) -> datetime | None:
    """The newest of the last read, the receipt and the arrival on the current tier (UTC)."""
    moments = [_utc(m) for m in (study.last_accessed_at, study.received_at, on_tier_since) if m is not None]
    return max(moments) if moments else None


def idle_days(study: StudyFacts, as_of: date, on_tier_since: datetime | None = None) -> int | None:
    """Whole days without a read (or an arrival) as of ``as_of``; None when nothing is known."""
    since = idle_since(study, on_tier_since)
    return None if since is None else (as_of - since.date()).days


def cooling_decision(
    study: StudyFacts, roles: Sequence[TierRole], as_of: date, on_tier_since: datetime | None = None
) -> Decision | None:
    """The cooling move of a study no rule decided, or None when it stays.

    ``on_tier_since``: when the study's copies arrived on the tier they are on
    (the newest copy), when the catalog knows it.
    """
    if len(set(study.tiers)) != 1:
        return None  # no copy, or copies on several tiers: a move or a restore settles it first
    tier = study.tiers[0]
    role = _role(roles, tier)
    if role is None or role.cooling_days is None:
        return None
    target = next_tier(roles, tier)
    if target is None:
        return None
    idle = idle_days(study, as_of, on_tier_since)
    if idle is None or idle < role.cooling_days:
        return None
    return Decision(study.study_uid, Action.TRANSITION, Action.TRANSITION, cooling_rule_id(tier),
                    f"not read for {idle} days on {tier} (cooling_days {role.cooling_days}): move to {target}",
                    tier=target)


def cooling_recheck(
    study: StudyFacts, rule_id: str, target: str, roles: Sequence[TierRole], as_of: date,
    on_tier_since: datetime | None = None,
) -> str | None:
    """Why a planned cooling move no longer holds (None: it still does).

    A move that was interrupted leaves the study on its tier and the target:
    that still holds, so a resumed apply finishes it.
    """
    tier = rule_id[len(COOLING_PREFIX):]
    role = _role(roles, tier)
    if role is None or role.cooling_days is None:
        return f"tier {tier!r} no longer has cooling_days"
    if next_tier(roles, tier) != target:
        return f"the tier after {tier!r} is no longer {target!r}"
    held = set(study.tiers)
    if not held or not held <= {tier, target}:
        return f"the study is now on {', '.join(sorted(held)) or 'no tier'}"
    if held == {target}:
        return None  # moved already (an earlier run got to the end): nothing left but cleanup
    idle = idle_days(study, as_of, on_tier_since)
    if idle is None or idle < role.cooling_days:
        return f"read or brought onto {tier} since the plan (idle {idle} days < cooling_days {role.cooling_days})"
    return None


@dataclass(frozen=True, slots=True)
class Promotion:
    """Whether a study is promoted to the first tier, and why (or why not)."""

    promote: bool
    reason: str
    target: str = ""
    sources: tuple[str, ...] = ()


def promotion_check(
    tiers: Iterable[str], roles: Sequence[TierRole], trigger: Literal["read", "prefetch"]
) -> Promotion:
    """Does a read (or a prefetch) bring a study on ``tiers`` up to the first tier?

    Every tier holding the study, other than the first, must allow it: a read
    is allowed by ``on_read`` and ``prefetch_priors``, a prefetch only by
    ``prefetch_priors``. ``never`` keeps the study; an archive tier needs a
    restore (``ilm recall``), not a promotion.
    """
    if not roles:
        return Promotion(False, "no tiers")
    first = roles[0].name
    held = sorted(set(tiers))
    others = [t for t in held if t != first]
    if not held:
        return Promotion(False, "the study has no verified copy", first)
    if not others:
        return Promotion(False, f"already on {first}", first)
    allowed = ("on_read", "prefetch_priors") if trigger == "read" else ("prefetch_priors",)
    for t in others:
        role = _role(roles, t)
        if role is None:
            return Promotion(False, f"tier {t!r} is not configured", first)
        if role.archive:
            return Promotion(False, f"on archive tier {t!r}: a read needs a restore (ilm recall)", first)
        if role.retrieval_policy not in allowed:
            return Promotion(False, f"tier {t!r} has retrieval_policy {role.retrieval_policy}", first)
    return Promotion(True, f"{trigger}: {', '.join(others)} -> {first}", first, tuple(others))


def years_before(day: date, years: int) -> date:
    """The same calendar day ``years`` earlier (29 February -> 28 February)."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def _modalities(s: StudyFacts) -> set[str]:
    return {m.strip().upper() for m in s.modalities if m.strip()} - NON_IMAGE_MODALITIES


def _body_parts(s: StudyFacts) -> set[str]:
    return {b.strip().upper() for b in s.body_parts if b.strip()}


def relevant_priors(new: StudyFacts, others: Iterable[StudyFacts], rule: PrefetchRule, today: date) -> list[StudyFacts]:
    """The patient's priors worth having at hand when ``new`` is read, newest first.

    A prior is another study of the patient dated on or before the new study
    (``today`` when the new study has no date), at most ``max_age_years``
    older, sharing an image modality (``match: modality``), a body part
    (``body_part``) or either (``either``). Priors without a usable date are
    left out. At most ``count``.
    """
    ref = new.study_date or today
    oldest = years_before(ref, rule.max_age_years)
    mods, parts = _modalities(new), _body_parts(new)
    out = []
    for s in others:
        if s.study_uid == new.study_uid or s.study_date is None or not oldest <= s.study_date <= ref:
            continue
        same_mod = bool(mods & _modalities(s))
        same_part = bool(parts & _body_parts(s))
        if rule.match == "modality" and not same_mod:
            continue
        if rule.match == "body_part" and not same_part:
            continue
        if rule.match == "either" and not (same_mod or same_part):
            continue
        out.append(s)
    out.sort(key=lambda s: (s.study_date, s.study_uid), reverse=True)
    return out[: rule.count]
