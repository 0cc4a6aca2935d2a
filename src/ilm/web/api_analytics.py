"""REST API: archive analytics and cost (``ilm stats``, ``ilm cost``; docs/cost.md). Role: viewer.

    GET /api/stats?as_of=&largest=        composition, growth, reads by study age, never-read share,
                                          patients with priors, largest studies
    POST /api/stats/snapshot              record today's storage by tier (operator; ilm stats --snapshot)
    GET /api/cost?years=&growth_gb_per_month=&growth_percent=&sample=&as_of=&policy_path=...
                                          monthly cost now and the projection per scenario: everything
                                          on the first tier, the archive as it is, each policy given
"""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter, Query, Request

from ilm.analytics import CostOptions
from ilm.web.api_common import ERRORS, ApiRoute, service_of
from ilm.web.auth import require

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["analytics"], route_class=ApiRoute, responses=ERRORS,
                   dependencies=[require("viewer")])


@router.get("/stats", response_model=dict[str, Any])
def stats(request: Request, as_of: date | None = Query(None, description="Ages and windows as of this day."),
          largest: int = Query(10, ge=0, le=1000, description="How many of the largest studies to list.")) -> Any:
    """How big the archive is and how it is used."""
    return service_of(request).stats(today=as_of, largest=largest)


@router.post("/stats/snapshot", response_model=dict[str, Any], dependencies=[require("operator")])
def snapshot(request: Request) -> Any:
    """Record today's studies, instances and bytes per tier (the first snapshot also reconstructs the
    past); ``ilm serve`` records one a day by itself."""
    return service_of(request).snapshot_tiers().as_dict()


@router.get("/cost", response_model=dict[str, Any])
def cost(request: Request, years: int = Query(10, ge=1, le=50),
         growth_gb_per_month: float | None = Query(None, ge=0, le=1e9,
                                                   description="New data per month (default: the catalog's history)."),
         growth_percent: float | None = Query(None, ge=-100, le=1000,
                                              description="Yearly growth of the monthly new data, in percent."),
         sample: int = Query(1000, ge=1, le=100_000, description="Studies simulated (all in a smaller archive)."),
         as_of: date | None = Query(None),
         policy_path: list[str] = Query([], max_length=20, description="Policy files inside ILM_HOME to project.")) -> Any:
    """Cost now and per year over ``years``: everything on the first tier, the archive as it is, and each
    policy, with the savings against keeping everything on the first tier."""
    service = service_of(request)
    policies = [service.policy_file(p) for p in policy_path]
    opts = CostOptions(years=years, growth_gb_per_month=growth_gb_per_month, growth_percent=growth_percent,
                       sample=sample)
    return service.cost(policies, today=as_of, options=opts)
