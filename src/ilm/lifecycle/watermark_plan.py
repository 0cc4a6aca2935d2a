"""Capacity watermarks, the pure part: thresholds, the arrivals reserve, and which studies go.

No I/O here: the caller measures the tier and lists its studies, least
recently read first; :func:`select` decides. ``ilm.lifecycle.watermark``
does the measuring, stores the decision as a plan and applies it.

Semantics (docs/tiers.md, "Watermarks"):

- A threshold is a percentage of the tier's file system (``"85%"``) or a
  size (``"500GB"``). With a percentage on either watermark, *used* is the
  file system's used bytes (everything on it, as ``df`` counts them) and
  sizes are compared with that too; with sizes only, *used* is the bytes of
  the verified copies the catalog has on the tier, which works on any kind
  of tier (S3 included).
- ``low_watermark`` defaults to ``high_watermark``; it must not be above it.
- The reserve keeps room for the arrivals the tier expects
  (``expected_daily_gb``), dcm4chee 2 style: at night (the maintenance window
  when one is configured, else 22:00-06:00) room for 24 hours of arrivals,
  during the day room for one hour (``expected_daily_gb / 24``). The reserve
  counts as used: a run starts when ``used + reserve > high`` and frees until
  ``used + reserve <= low``.
- Studies are taken least recently read first (last access, else receipt;
  ties by Study Instance UID) until enough bytes are freed. A study pinned by
  the policy (a ``keep`` rule decides it, or might: missing facts fail
  closed) is passed over and reported, never moved or dropped; so is a study
  that must move when there is no lower tier. Legal holds do not stop a
  watermark move: a move never deletes the last copy of anything.
- A study whose every copy on the tier has a verified copy on another tier
  (a restored or promoted copy: the tier acts as a cache for it) is dropped
  there instead of moved; it frees the same bytes without a copy.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dtime

from ilm.lifecycle.limits import MaintenanceWindow
from ilm.policy.sizes import SizeError, parse_size

__all__ = [
    "DAY_HOURS_RESERVED",
    "NIGHT",
    "Candidate",
    "Kind",
    "Limits",
    "Selection",
    "Threshold",
    "Usage",
    "WatermarkError",
    "limits",
    "parse_threshold",
    "reserve_bytes",
    "select",
]

NIGHT = MaintenanceWindow(dtime(22, 0), dtime(6, 0))  # the night, when no maintenance window is configured
DAY_HOURS_RESERVED = 1  # hours of arrivals kept free during the day; 24 at night


class WatermarkError(ValueError):
    """Watermarks that cannot be evaluated (a percentage without a file system, low above high ...)."""


@dataclass(frozen=True, slots=True)
class Threshold:
    """``85%`` (percent set) or ``500GB`` (size set)."""

    text: str
    percent: float | None = None
    size: int | None = None

    def bytes(self, capacity: int | None) -> int:
        if self.size is not None:
            return self.size
        assert self.percent is not None
        if capacity is None:
            raise WatermarkError(f"{self.text!r} is a percentage of a file system; this tier has none "
                                 f"(use a size such as '500GB')")
        return int(capacity * self.percent / 100)


def parse_threshold(text: str) -> Threshold:
    t = text.strip()
    if t.endswith("%"):
        try:
            pct = float(t[:-1])
        except ValueError:
            raise WatermarkError(f"{text!r} is not a percentage such as '85%'") from None
        if not 0 < pct <= 100:
            raise WatermarkError(f"{text!r}: a percentage must be above 0 and at most 100")
        return Threshold(t, percent=pct)
    try:
        return Threshold(t, size=parse_size(t))
    except SizeError as exc:
        raise WatermarkError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Usage:
    """What counts against the watermarks of one tier."""

    used: int
    capacity: int | None  # file-system size; None when measured from the catalog
    measured: str  # "file system" | "catalog"


@dataclass(frozen=True, slots=True)
class Limits:
    high: int
    low: int
    reserve: int
    high_text: str
    low_text: str


def reserve_bytes(expected_daily_gb: float, at: datetime, night: MaintenanceWindow | None = None) -> int:
    """Room to keep for arrivals: 24 h of them at night, 1 h during the day."""
    if expected_daily_gb <= 0:
        return 0
    hours = 24 if (night or NIGHT).contains(at) else DAY_HOURS_RESERVED
    return int(expected_daily_gb * 1000**3 * hours / 24)


def limits(high: str, low: str | None, usage: Usage, reserve: int) -> Limits:
    h = parse_threshold(high)
    lo = parse_threshold(low) if low else h
    hb, lb = h.bytes(usage.capacity), lo.bytes(usage.capacity)
    if lb > hb:
        raise WatermarkError(f"low watermark {lo.text} ({lb} bytes) is above the high watermark {h.text} ({hb} bytes)")
    return Limits(hb, lb, reserve, h.text, lo.text)


class Kind(str, enum.Enum):
    MOVE = "transition"  # to the next tier down, through the safe move
    DROP = "drop"        # every copy here is verified elsewhere: drop these copies


@dataclass(frozen=True, slots=True)
class Candidate:
    """A study on the tier, as the selection sees it."""

    study_uid: str
    size: int        # bytes of its copies on this tier
    last_read: datetime  # last access, else receipt
    kind: Kind
    instances: int = 0
    pinned: str = ""  # why it must stay here; empty when it may go


@dataclass
class Selection:
    tier: str
    usage: Usage
    limits: Limits
    triggered: bool
    to_free: int = 0
    chosen: list[Candidate] = field(default_factory=list)
    passed_over: list[Candidate] = field(default_factory=list)  # pinned studies the run would have taken
    freed: int = 0

    @property
    def used_after(self) -> int:
        return self.usage.used - self.freed

    @property
    def ends_under_low(self) -> bool:
        return self.used_after + self.limits.reserve <= self.limits.low


def select(tier: str, usage: Usage, lim: Limits, candidates: Iterable[Candidate]) -> Selection:
    """The studies a watermark run takes from ``tier``.

    ``candidates`` must come least recently read first; iteration stops as
    soon as enough bytes are chosen, so the caller may stream them.
    """
    triggered = usage.used + lim.reserve > lim.high
    sel = Selection(tier, usage, lim, triggered)
    if not triggered:
        return sel
    sel.to_free = usage.used + lim.reserve - lim.low
    for c in candidates:
        if sel.freed >= sel.to_free:
            break
        if c.pinned:
            sel.passed_over.append(c)
            continue
        sel.chosen.append(c)
        sel.freed += c.size
    return sel
