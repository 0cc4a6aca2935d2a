"""Roles and API tokens: what a token may do and whether it is still good. Pure: no I/O.

Roles are ordered; a higher role includes every lower one:

    viewer    query and read: QIDO-RS, WADO-RS, study and restore lists
    operator  plans and holds
    approver  apply plans, purge, restore (from archive tiers and quarantine)
    admin     configuration, encryption keys, API tokens

A token is ``ilm_`` followed by 43 URL-safe characters: 32 bytes (256 bits)
from ``secrets``. Only its SHA-256 is stored. A slow password hash (a KDF
such as scrypt or argon2) protects secrets people choose, which are guessable;
a 256-bit random token cannot be guessed, so one SHA-256 is as strong, and it
lets a request find its token by an indexed equality lookup instead of running
a deliberately slow function on every request (the practice of GitHub's and
PyPI's API tokens).
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

__all__ = [
    "Role", "ROLES", "parse_role", "Principal", "TokenState", "check_token",
    "new_token", "token_hash", "looks_like_token", "check_token_name", "TOKEN_PREFIX",
]

TOKEN_PREFIX = "ilm_"
_TOKEN = re.compile(r"ilm_[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class Role(enum.IntEnum):
    """Ordered: ``have >= need`` decides."""

    VIEWER = 1
    OPERATOR = 2
    APPROVER = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    def includes(self, need: "Role") -> bool:
        return self >= need


ROLES: tuple[str, ...] = tuple(r.label for r in Role)


def parse_role(text: str) -> Role:
    """A role by name (any case); ValueError naming the choices."""
    try:
        return Role[text.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown role {text!r}: expected one of {', '.join(ROLES)}") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's name and role (``anonymous`` when auth is off)."""

    name: str
    role: Role
    token_id: int | None = None

    @property
    def who(self) -> str:
        return f"token:{self.name}" if self.token_id is not None else self.name


@dataclass(frozen=True, slots=True)
class TokenState:
    """The stored facts about a token that decide whether it is accepted."""

    id: int
    name: str
    role: str
    expires_at: datetime | None
    revoked_at: datetime | None


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t  # SQLite returns naive UTC


def check_token(state: TokenState | None, now: datetime) -> Principal | str:
    """The principal of a token, or why it is refused (unknown, revoked, expired, bad role)."""
    if state is None:
        return "unknown token"
    if state.revoked_at is not None:
        return f"token {state.name!r} was revoked"
    if state.expires_at is not None and _utc(state.expires_at) <= now:
        return f"token {state.name!r} expired at {_utc(state.expires_at).isoformat(timespec='seconds')}"
    try:
        role = parse_role(state.role)
    except ValueError:
        return f"token {state.name!r} has an unknown role {state.role!r}"  # fail closed
    return Principal(name=state.name, role=role, token_id=state.id)


def new_token() -> str:
    """A fresh random token (shown once, never stored)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What is stored and looked up: the SHA-256 of the token, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def looks_like_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def check_token_name(name: str) -> str:
    """A token name: 1-64 of letters, digits, ``.``, ``_``, ``@``, ``-``; not all digits (IDs are)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"token name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    if name.isdigit():
        raise ValueError(f"token name {name!r}: must not be all digits (revoke takes an ID or a name)")
    return name
