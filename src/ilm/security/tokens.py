"""API tokens kept in the catalog: create, list, revoke, authenticate (the service calls this).

The decisions are the pure ones of ``ilm.security.roles``; this module reads
and writes the catalog and the audit trail. Creating and revoking a token are
audited (``token.create``, ``token.revoke``, never the token itself). A
token's ``last_used_at`` is written at most once a minute per token and
process, so that authenticating a request is one indexed read.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.tokens import (
    TokenRow, active_token_named, insert_token, list_tokens, revoke_token, token_by_hash, tokens_by_ref, touch_token,
)
from ilm.errors import ConfigError, NotFound, Unauthenticated
from ilm.policy.durations import Period
from ilm.security.roles import Principal, check_token, check_token_name, new_token, parse_role, token_hash

__all__ = ["TokenStore", "TokenRow", "TOUCH_INTERVAL_SECONDS"]

TOUCH_INTERVAL_SECONDS = 60.0

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class TokenStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._touched: dict[int, float] = {}
        self._lock = threading.Lock()

    def create(self, name: str, role: str, *, expires: Period | None, by: str) -> tuple[TokenRow, str]:
        """A new token: its row and the token itself, which is not kept (only its SHA-256 is).
        ConfigError for a bad name or role, or a name an active token already has."""
        try:
            check_token_name(name)
            parsed = parse_role(role)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        now = _now()
        expires_at = None
        if expires is not None:
            if expires == Period():
                raise ConfigError("--expires: a period of zero days would create a token that is already expired")
            expires_at = datetime.combine(expires.add_to(now.date()), now.timetz())
        secret = new_token()
        with self.catalog.write() as conn:
            if active_token_named(conn, name, now) is not None:
                raise ConfigError(f"a token named {name!r} exists already (revoke it first, or choose another name)")
            row = insert_token(conn, name=name, role=parsed.label, hash_=token_hash(secret), now=now, by=by,
                               expires_at=expires_at)
            append_audit(conn, at=now, actor=by, action="token.create",
                         detail={"id": row.id, "name": name, "role": parsed.label,
                                 "expires_at": expires_at.isoformat() if expires_at else None})
        return row, secret

    def rows(self, *, include_revoked: bool = False) -> list[TokenRow]:
        with self.catalog.read() as conn:
            return list_tokens(conn, include_revoked=include_revoked)

    def revoke(self, ref: str, *, by: str) -> list[TokenRow]:
        """Revoke the token with that ID, or every token not yet revoked with that name.
        NotFound when there is none; nothing changes then."""
        now = _now()
        with self.catalog.write() as conn:
            rows = tokens_by_ref(conn, ref)
            if not rows:
                raise NotFound(f"no token with ID or name {ref!r} that is not revoked (see 'ilm tokens list --all')")
            for row in rows:
                revoke_token(conn, row.id, now)
                append_audit(conn, at=now, actor=by, action="token.revoke",
                             detail={"id": row.id, "name": row.name, "role": row.role})
        return rows

    def authenticate(self, token: str) -> Principal:
        """The principal of a presented token; Unauthenticated saying why it is refused."""
        now = _now()
        with self.catalog.read() as conn:
            state = token_by_hash(conn, token_hash(token))
        verdict = check_token(state, now)
        if isinstance(verdict, str):
            exc = Unauthenticated(verdict)
            exc.token_name = state.name if state is not None else ""  # for the audit: who, never the token
            raise exc
        self._touch(verdict, now)
        return verdict

    def _touch(self, p: Principal, now: datetime) -> None:
        assert p.token_id is not None
        tick = time.monotonic()
        with self._lock:
            last = self._touched.get(p.token_id)
            if last is not None and tick - last < TOUCH_INTERVAL_SECONDS:
                return
            self._touched[p.token_id] = tick
        try:
            with self.catalog.write() as conn:
                touch_token(conn, p.token_id, now)
        except Exception as exc:  # bookkeeping only: a busy catalog must not refuse a valid token
            log.warning("could not record the use of token %s: %s", p.name, exc)
