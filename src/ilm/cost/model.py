"""Tier prices and the cost of one thing: storing, reading, moving. Pure.

Prices are per GB-month with GB = 10^9 bytes, as storage vendors bill; a
month is 30 days for the minimum-storage-duration charge (AWS bills an
early-deleted object "the remaining days" of the minimum at the
GB-month price, pro rata over 30 days). Request prices are per 1,000
requests: one PUT per object written, one GET per object read; a packed
tier (``packed``) holds one object per study, so moving or reading a study
costs one request there, whatever its instance count.

The formulas (docs/cost.md explains them with an example):

- storage per month = GB x ``per_gb_month``
- a read of B bytes in N objects = B/GB x ``retrieval_per_gb`` + N/1000 x ``get_per_1000``
- writing N objects = N/1000 x ``put_per_1000``
- removing bytes held d days from a tier with a minimum of m days
  = GB x ``per_gb_month`` x max(0, m - d) / 30
- a move = read at the source + write at the destination + early deletion at the source
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "GB", "DAYS_PER_MONTH", "TierPrice", "MoveCost", "monthly_storage_cost", "storage_cost", "read_cost",
    "write_cost", "early_deletion_cost", "move_cost", "requests",
]

GB = 1_000_000_000
DAYS_PER_MONTH = 30  # the month of the early-deletion charge


@dataclass(frozen=True, slots=True)
class TierPrice:
    per_gb_month: float
    retrieval_per_gb: float = 0.0
    min_storage_days: int = 0
    put_per_1000: float = 0.0
    get_per_1000: float = 0.0
    packed: bool = False  # one object per study (ilm.storage.pack)


@dataclass(frozen=True, slots=True)
class MoveCost:
    """The one-time cost of moving data from one tier to another, by part."""

    read: float = 0.0            # retrieval per GB and GETs at the source
    write: float = 0.0           # PUTs at the destination
    early_deletion: float = 0.0  # the source's minimum storage duration not yet served

    @property
    def total(self) -> float:
        return self.read + self.write + self.early_deletion


def monthly_storage_cost(bytes_by_tier: Mapping[str, int], prices: Mapping[str, TierPrice]) -> float:
    """Sum of bytes x price over tiers; a tier without a price costs nothing."""
    return sum(b / GB * prices[t].per_gb_month for t, b in bytes_by_tier.items() if t in prices)


def storage_cost(nbytes: float, price: TierPrice, months: float = 1.0) -> float:
    return nbytes / GB * price.per_gb_month * months


def requests(objects: float, studies: float, price: TierPrice) -> float:
    """Requests to read or write ``objects`` instances of ``studies`` studies on this tier."""
    return studies if price.packed else objects


def read_cost(nbytes: float, objects: float, price: TierPrice, studies: float = 0.0) -> float:
    """Reading bytes out of a tier: retrieval per GB plus one GET per object."""
    return nbytes / GB * price.retrieval_per_gb + requests(objects, studies, price) / 1000 * price.get_per_1000


def write_cost(objects: float, price: TierPrice, studies: float = 0.0) -> float:
    """Writing objects into a tier: one PUT each."""
    return requests(objects, studies, price) / 1000 * price.put_per_1000


def early_deletion_cost(nbytes: float, held_days: float, price: TierPrice) -> float:
    """What removing bytes held ``held_days`` costs on a tier with a minimum storage duration."""
    remaining = max(0.0, price.min_storage_days - held_days)
    return nbytes / GB * price.per_gb_month * remaining / DAYS_PER_MONTH


def move_cost(nbytes: float, objects: float, source: TierPrice, target: TierPrice, *, held_days: float,
              studies: float = 0.0) -> MoveCost:
    """Moving bytes (in ``objects`` instances of ``studies`` studies) held ``held_days`` on the source."""
    return MoveCost(
        read=read_cost(nbytes, objects, source, studies),
        write=write_cost(objects, target, studies),
        early_deletion=early_deletion_cost(nbytes, held_days, source),
    )
