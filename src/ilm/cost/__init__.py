"""Cost model: pure functions over bytes and tier prices (no I/O)."""

from ilm.cost.model import GB, TierPrice, monthly_storage_cost

__all__ = ["GB", "TierPrice", "monthly_storage_cost"]
