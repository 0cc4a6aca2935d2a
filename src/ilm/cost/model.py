"""Monthly storage cost from bytes per tier. Pure.

Prices are per GB-month with GB = 10^9 bytes, as storage vendors bill.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["GB", "TierPrice", "monthly_storage_cost"]

GB = 1_000_000_000


@dataclass(frozen=True, slots=True)
class TierPrice:
    per_gb_month: float
    retrieval_per_gb: float = 0.0
    min_storage_days: int = 0


def monthly_storage_cost(bytes_by_tier: Mapping[str, int], prices: Mapping[str, TierPrice]) -> float:
    """Sum of bytes x price over tiers; a tier without a price costs nothing."""
    return sum(b / GB * prices[t].per_gb_month for t, b in bytes_by_tier.items() if t in prices)
