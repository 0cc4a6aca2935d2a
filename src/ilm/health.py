"""Readiness: can this archive serve requests now (``GET /health/ready``, docs/api.md)?

Ready when the catalog answers a query and every tier can be reached: a
filesystem tier's folder exists, an S3 tier answers a HEAD request. Nothing
is written (a WORM or archive tier must not collect probe objects) and
nothing is read but metadata, so a load balancer may ask every few seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ilm.storage import Tier
from ilm.storage.filesystem import FilesystemTier

__all__ = ["Readiness", "PROBE_KEY", "tier_problem", "readiness"]

PROBE_KEY = "0/0.0.dcm"  # looked up, never written (a UID-shaped key no study has: UIDs never start with 0.)


@dataclass(frozen=True, slots=True)
class Readiness:
    """``problems``: part ("catalog", "tier:NAME") -> what is wrong; empty when ready."""

    checked: tuple[str, ...]
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return not self.problems


def tier_problem(tier: Tier) -> str | None:
    """Why ``tier`` cannot be reached, or None."""
    root = getattr(tier, "root", None) if isinstance(tier, FilesystemTier) else None
    if root is not None and not root.is_dir():
        return f"folder {root} is missing (unmounted?)"
    try:
        tier.exists(PROBE_KEY)
    except Exception as exc:  # any failure to answer is "not reachable", with its reason
        return f"{exc.__class__.__name__}: {exc}"[:300]
    return None


def readiness(ping_catalog: Callable[[], None], tiers: dict[str, Callable[[], Tier]]) -> Readiness:
    """Check the catalog (``ping_catalog`` raises when it cannot answer) and each tier (opened by its callable)."""
    problems: dict[str, str] = {}
    try:
        ping_catalog()
    except Exception as exc:
        problems["catalog"] = f"{exc.__class__.__name__}: {exc}"[:300]
    for name, open_tier in tiers.items():
        try:
            why = tier_problem(open_tier())
        except Exception as exc:  # the tier could not even be opened
            why = f"{exc.__class__.__name__}: {exc}"[:300]
        if why is not None:
            problems[f"tier:{name}"] = why
    return Readiness(("catalog", *(f"tier:{n}" for n in tiers)), problems)
