"""Protections: safety nets that veto expiry, whatever the rules say.

A protection never blocks a transition; it only turns an EXPIRE decision
into a kept study, and names itself and the reason. All are on by default.
Each can be tuned in the policy's ``protections:`` section, and each except
the legal hold can be turned off, but only explicitly, with a reason, and a
turned-off protection is listed in every plan (:meth:`Protections.summary`).

- ``legal_hold``: a hold on the study or on its patient (cannot be turned off:
  remove the hold instead).
- ``worm_lock``: a copy of the study on a WORM tier is locked until a date on
  or after the plan's date (cannot be turned off: the store would refuse the
  deletion anyway; docs/security.md).
- ``mammography``: MG studies (by modality, mammography/breast SOP class, or
  Secondary Capture of the breast) are kept 5 years, or 10 when the patient
  has no later mammogram in the archive (MQSA, 21 CFR 900.12(c)(4)(i)).
- ``pediatric``: a study made before the patient's age of majority (18) is
  kept until majority + N years (N = 10 by default: the 28th birthday, the
  longest of the laws in docs/policies.md).
- ``minimum_retention``: nothing younger than P5Y (StudyDate) is expired
  (Medicare CoP for hospitals, 42 CFR 482.24(b)(1): 5 years).
- ``recently_accessed``: nothing read or received in the last P30D is expired.
- ``unknown_facts``: a fact a rule or protection needed is missing or
  unparsable (StudyDate, PatientBirthDate, PatientAge ...): keep, naming it.

A protection that cannot decide for lack of a fact vetoes as
``unknown_facts`` when that one is on, and under its own name otherwise: a
missing fact is never read as "not protected".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ilm.policy.context import StudyContext, Unknown
from ilm.policy.durations import Period

__all__ = [
    "Veto", "ProtectionStatus", "ProtectionCheck", "Switch", "MammographyRetention",
    "PediatricRetention", "MinimumRetention", "RecentlyAccessed", "UnknownFacts", "Protections",
    "PROTECTION_NAMES", "vetoes_of",
]

PROTECTION_NAMES = (
    "legal_hold", "worm_lock", "mammography", "pediatric", "minimum_retention", "recently_accessed", "unknown_facts",
)


@dataclass(frozen=True, slots=True)
class Veto:
    """A protection that stopped an expiry, and why."""

    protection: str
    reason: str
    facts: tuple[str, ...] = ()  # for unknown_facts: the missing facts, e.g. ("StudyDate",)


class ProtectionStatus(str, enum.Enum):
    VETO = "veto"    # covers the study: an expiry would be vetoed
    CLEAR = "clear"  # does not cover the study
    OFF = "off"      # turned off in the policy


@dataclass(frozen=True, slots=True)
class ProtectionCheck:
    protection: str
    status: ProtectionStatus
    reason: str
    facts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Switch:
    """On, or off with the reason the policy gave."""

    enabled: bool = True
    off_reason: str = ""


@dataclass(frozen=True, slots=True)
class MammographyRetention:
    switch: Switch = Switch()
    years: int = 5
    without_later_mammogram_years: int = 10

    def covers(self, ctx: StudyContext) -> str | None | Unknown:
        if not ctx.mammography:
            return None
        sd = ctx.study_date
        if isinstance(sd, Unknown):
            return sd
        later = ctx.later_mammogram
        years = self.years if later is not None else self.without_later_mammogram_years
        until = Period(years=years).add_to(sd)
        if ctx.as_of > until:
            return None
        why = f"later mammogram on {later.isoformat()}" if later else "no later mammogram"
        return f"mammogram of {sd.isoformat()} kept {years} years ({why}) until {until.isoformat()}"


@dataclass(frozen=True, slots=True)
class PediatricRetention:
    switch: Switch = Switch()
    age_of_majority: int = 18
    years_after_majority: int = 10

    def covers(self, ctx: StudyContext) -> str | None | Unknown:
        birth = ctx.birth_range
        if isinstance(birth, Unknown):
            return birth
        _, latest, source = birth  # the latest possible birth keeps the study longest
        majority = Period(years=self.age_of_majority).add_to(latest)
        until = Period(years=self.age_of_majority + self.years_after_majority).add_to(latest)
        if ctx.as_of > until:
            return None  # whatever the study date, the window is over
        sd = ctx.study_date
        if isinstance(sd, Unknown):
            return sd
        if sd >= majority:
            return None
        return (f"child at the study ({source}); kept until age "
                f"{self.age_of_majority + self.years_after_majority}, {until.isoformat()}")


@dataclass(frozen=True, slots=True)
class MinimumRetention:
    switch: Switch = Switch()
    period: Period = Period(years=5)

    def covers(self, ctx: StudyContext) -> str | None | Unknown:
        sd = ctx.study_date
        if isinstance(sd, Unknown):
            return sd
        until = self.period.add_to(sd)
        if ctx.as_of > until:
            return None
        return f"StudyDate {sd.isoformat()} is within the minimum retention {self.period} (until {until.isoformat()})"


@dataclass(frozen=True, slots=True)
class RecentlyAccessed:
    switch: Switch = Switch()
    within: Period = Period(days=30)

    def covers(self, ctx: StudyContext) -> str | None | Unknown:
        last = ctx.last_activity
        if last is None or ctx.as_of > self.within.add_to(last):
            return None
        return f"read or received on {last.isoformat()}, within {self.within}"


@dataclass(frozen=True, slots=True)
class UnknownFacts:
    switch: Switch = Switch()


@dataclass(frozen=True, slots=True)
class Protections:
    """The policy's protections; the defaults are the safe settings."""

    mammography: MammographyRetention = field(default_factory=MammographyRetention)
    pediatric: PediatricRetention = field(default_factory=PediatricRetention)
    minimum_retention: MinimumRetention = field(default_factory=MinimumRetention)
    recently_accessed: RecentlyAccessed = field(default_factory=RecentlyAccessed)
    unknown_facts: UnknownFacts = field(default_factory=UnknownFacts)

    def disabled(self) -> tuple[tuple[str, str], ...]:
        """The protections turned off, each with the policy's reason."""
        return tuple(
            (name, sw.off_reason) for name, sw in self._switches() if not sw.enabled
        )

    def _switches(self) -> tuple[tuple[str, Switch], ...]:
        return (
            ("legal_hold", Switch()),
            ("worm_lock", Switch()),
            ("mammography", self.mammography.switch),
            ("pediatric", self.pediatric.switch),
            ("minimum_retention", self.minimum_retention.switch),
            ("recently_accessed", self.recently_accessed.switch),
            ("unknown_facts", self.unknown_facts.switch),
        )

    def summary(self) -> tuple[str, ...]:
        """One line per protection, for plans and reports: settings, or OFF and why."""
        m, p = self.mammography, self.pediatric
        settings = {
            "legal_hold": "holds on a study or its patient",
            "worm_lock": "copies on WORM tiers before their retain-until date",
            "mammography": f"{m.years} years, {m.without_later_mammogram_years} without a later mammogram",
            "pediatric": f"age of majority {p.age_of_majority} + {p.years_after_majority} years",
            "minimum_retention": f"{self.minimum_retention.period} from StudyDate",
            "recently_accessed": f"read or received within {self.recently_accessed.within}",
            "unknown_facts": "missing or unparsable StudyDate, PatientBirthDate, PatientAge keep the study",
        }
        return tuple(
            f"{name}: on ({settings[name]})" if sw.enabled else f"{name}: OFF ({sw.off_reason})"
            for name, sw in self._switches()
        )

    def check(self, ctx: StudyContext, rule_unknown: Unknown | None = None) -> tuple[ProtectionCheck, ...]:
        """Every protection's verdict on one study; ``rule_unknown`` is what the deciding rule lacked."""
        out: list[ProtectionCheck] = []
        missing: list[str] = []
        facts: list[str] = []
        if rule_unknown is not None:
            missing.append(f"the rule needs {', '.join(rule_unknown.facts)}: {rule_unknown.reason}")
            facts.extend(rule_unknown.facts)
        out.append(_legal_hold(ctx))
        out.append(_worm_lock(ctx))
        guarded = (
            ("mammography", self.mammography.switch, self.mammography.covers),
            ("pediatric", self.pediatric.switch, self.pediatric.covers),
            ("minimum_retention", self.minimum_retention.switch, self.minimum_retention.covers),
            ("recently_accessed", self.recently_accessed.switch, self.recently_accessed.covers),
        )
        unknown_on = self.unknown_facts.switch.enabled
        for name, sw, covers in guarded:
            if not sw.enabled:
                out.append(ProtectionCheck(name, ProtectionStatus.OFF, sw.off_reason))
                continue
            verdict = covers(ctx)
            if isinstance(verdict, Unknown):
                if unknown_on:
                    missing.append(f"{name} needs {', '.join(verdict.facts)}: {verdict.reason}")
                    facts.extend(verdict.facts)
                    out.append(ProtectionCheck(name, ProtectionStatus.CLEAR, f"cannot tell: {verdict.reason}"))
                else:
                    out.append(ProtectionCheck(name, ProtectionStatus.VETO, f"cannot tell, so kept: {verdict.reason}",
                                               verdict.facts))
            elif verdict is None:
                out.append(ProtectionCheck(name, ProtectionStatus.CLEAR, "does not cover this study"))
            else:
                out.append(ProtectionCheck(name, ProtectionStatus.VETO, verdict))
        if not unknown_on:
            out.append(ProtectionCheck("unknown_facts", ProtectionStatus.OFF, self.unknown_facts.switch.off_reason))
        elif missing:
            out.append(ProtectionCheck("unknown_facts", ProtectionStatus.VETO, "; ".join(missing),
                                       tuple(dict.fromkeys(facts))))
        else:
            out.append(ProtectionCheck("unknown_facts", ProtectionStatus.CLEAR, "every needed fact is known"))
        return tuple(out)


def _legal_hold(ctx: StudyContext) -> ProtectionCheck:
    holds = list(ctx.study.holds) + list(ctx.patient.holds if ctx.patient else ())
    if not holds:
        return ProtectionCheck("legal_hold", ProtectionStatus.CLEAR, "no hold")
    text = "; ".join(f"{h.scope.value} hold: {h.reason or '(no reason given)'}" for h in holds)
    return ProtectionCheck("legal_hold", ProtectionStatus.VETO, text)


def _worm_lock(ctx: StudyContext) -> ProtectionCheck:
    """Locked through the plan's whole day: a lock ending on the plan's date still keeps the study."""
    until = ctx.study.locked_until
    if until is None or until.date() < ctx.as_of:
        return ProtectionCheck("worm_lock", ProtectionStatus.CLEAR, "no locked copy")
    return ProtectionCheck("worm_lock", ProtectionStatus.VETO, f"locked until {until:%Y-%m-%d}")


def vetoes_of(checks: tuple[ProtectionCheck, ...]) -> tuple[Veto, ...]:
    """The checks that veto, as vetoes."""
    return tuple(Veto(c.protection, c.reason, c.facts) for c in checks if c.status is ProtectionStatus.VETO)

