"""API tokens in the catalog: create, list, revoke, look up by hash (see ilm.security.roles)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from ilm.catalog.schema import api_tokens
from ilm.security.roles import TokenState

__all__ = ["TokenRow", "insert_token", "list_tokens", "token_by_hash", "tokens_by_ref", "revoke_token", "touch_token",
           "active_token_named"]


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: int
    name: str
    role: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


_COLUMNS = (api_tokens.c.id, api_tokens.c.name, api_tokens.c.role, api_tokens.c.created_at, api_tokens.c.created_by,
            api_tokens.c.expires_at, api_tokens.c.revoked_at, api_tokens.c.last_used_at)


def _row(r: object) -> TokenRow:
    return TokenRow(*r)  # type: ignore[misc]


def insert_token(conn: Connection, *, name: str, role: str, hash_: str, now: datetime, by: str,
                 expires_at: datetime | None) -> TokenRow:
    pk = conn.execute(api_tokens.insert().values(
        name=name, role=role, hash=hash_, created_at=now, created_by=by[:128], expires_at=expires_at,
    )).inserted_primary_key
    assert pk is not None
    return TokenRow(int(pk[0]), name, role, now, by[:128], expires_at, None, None)


def active_token_named(conn: Connection, name: str, now: datetime) -> TokenRow | None:
    """The token called ``name`` that is neither revoked nor expired, if any."""
    q = select(*_COLUMNS).where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
    for r in conn.execute(q):
        row = _row(r)
        if row.expires_at is None or _aware(row.expires_at) > now:
            return row
    return None


def _aware(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def list_tokens(conn: Connection, *, include_revoked: bool = False) -> list[TokenRow]:
    q = select(*_COLUMNS).order_by(api_tokens.c.id)
    if not include_revoked:
        q = q.where(api_tokens.c.revoked_at.is_(None))
    return [_row(r) for r in conn.execute(q)]


def token_by_hash(conn: Connection, hash_: str) -> TokenState | None:
    r = conn.execute(select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.role, api_tokens.c.expires_at,
                            api_tokens.c.revoked_at).where(api_tokens.c.hash == hash_)).first()
    return None if r is None else TokenState(id=r.id, name=r.name, role=r.role, expires_at=r.expires_at,
                                             revoked_at=r.revoked_at)


def tokens_by_ref(conn: Connection, ref: str) -> list[TokenRow]:
    """Tokens not yet revoked with that ID (all digits) or that name."""
    col = api_tokens.c.id if ref.isdigit() else api_tokens.c.name
    value: int | str = int(ref) if ref.isdigit() else ref
    q = select(*_COLUMNS).where(col == value, api_tokens.c.revoked_at.is_(None)).order_by(api_tokens.c.id)
    return [_row(r) for r in conn.execute(q)]


def revoke_token(conn: Connection, token_id: int, now: datetime) -> None:
    conn.execute(update(api_tokens).where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                 .values(revoked_at=now))


def touch_token(conn: Connection, token_id: int, now: datetime) -> None:
    conn.execute(update(api_tokens).where(api_tokens.c.id == token_id).values(last_used_at=now))
