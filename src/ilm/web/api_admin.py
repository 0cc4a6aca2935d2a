"""REST API for administrators: API tokens and encryption keys (``ilm tokens``, ``ilm keys list``). Role: admin.

    GET    /api/tokens?all=          tokens (never the tokens themselves)
    POST   /api/tokens               {"name", "role", "expires" (P90D, 30d)} -> 201 with the token, shown once
    DELETE /api/tokens/{ref}         revoke the token with that ID, or every active token of that name
    GET    /api/keys?tier=           master keys of encrypted tiers and how many objects each protects
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from ilm.errors import ConfigError
from ilm.policy.durations import DurationError, parse_period
from ilm.web.api_common import ERRORS, ApiRoute, Row, UtcDateTime, actor, service_of
from ilm.web.auth import require

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["admin"], route_class=ApiRoute, responses=ERRORS,
                   dependencies=[require("admin")])


class TokenOut(Row):
    id: int
    name: str
    role: str
    created_at: UtcDateTime
    created_by: str
    expires_at: UtcDateTime | None
    revoked_at: UtcDateTime | None
    last_used_at: UtcDateTime | None


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64, description="What the token is for, e.g. 'viewer-ward3'.")
    role: str = Field(max_length=16, description="viewer, operator, approver or admin.")
    expires: str | None = Field(default=None, max_length=32, description="Valid for this period (P90D, P1Y, 30d); default: until revoked.")
    by: str | None = Field(default=None, max_length=128)


class TokenCreated(BaseModel):
    token: str = Field(description="The token: shown only this once, only its SHA-256 is kept.")
    row: TokenOut


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(request: Request, all_: bool = Query(False, alias="all")) -> Any:
    """Tokens: ID, name, role, created, expires, last used (all=true: revoked ones too)."""
    return [TokenOut.model_validate(r) for r in service_of(request).tokens(include_revoked=all_)]


@router.post("/tokens", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, request: Request) -> Any:
    """Create a token; the answer holds it once (send it as 'Authorization: Bearer <token>')."""
    try:
        period = parse_period(body.expires) if body.expires is not None else None
        row, secret = service_of(request).token_create(body.name, body.role, expires=period,
                                                       by=actor(request, body.by))
    except (DurationError, ConfigError) as exc:  # a bad name, role or period: the request's fault
        raise ValueError(str(exc)) from None
    return TokenCreated(token=secret, row=TokenOut.model_validate(row))


@router.delete("/tokens/{ref}", response_model=list[TokenOut])
def revoke_token(ref: str, request: Request, by: str | None = Query(None, max_length=128)) -> Any:
    """Revoke a token by ID, or every active token of a name: requests presenting it get 401 from now on."""
    return [TokenOut.model_validate(r) for r in service_of(request).token_revoke(ref, by=actor(request, by))]


@router.get("/keys", response_model=dict[str, Any])
def list_keys(request: Request, tier: str | None = Query(None, max_length=64)) -> Any:
    """Master keys of encrypted tiers (id, file, active, retired, objects per tier); never key material."""
    keys, counts = service_of(request).keys_list(tier=tier)
    return {"keys": [asdict(k) for k in keys], "objects": counts}
