"""Cost model, projections and the shaping of archive analytics: pure (no I/O).

    model.py        tier prices; storage, read, write, early-deletion and move costs
    projection.py   cohorts and their paths through the tiers -> cost per year
    simulate.py     a policy's path for one study, month by month (the pure evaluator)
    shaping.py      analytics rows -> the stats report; projections -> the comparison
"""

from ilm.cost.model import GB, MoveCost, TierPrice, early_deletion_cost, monthly_storage_cost, move_cost

__all__ = ["GB", "MoveCost", "TierPrice", "early_deletion_cost", "monthly_storage_cost", "move_cost"]
