"""Tiers that misbehave on purpose, wrapped around a real one (a test double for
what a real store cannot be made to do: store other bytes than it was given)."""

from __future__ import annotations

from ilm.models import StoredObject
from ilm.storage import Tier


class CorruptingTier:
    """Stores every put with its last byte flipped and ignores the SHA-256 it
    was asked to check; everything else is the wrapped tier's."""

    def __init__(self, inner: Tier) -> None:
        self.inner, self.name = inner, inner.name

    def put(self, key: str, data: bytes, sha256: str | None = None) -> StoredObject:
        return self.inner.put(key, data[:-1] + bytes([data[-1] ^ 0xFF]))

    def __getattr__(self, attr: str) -> object:
        return getattr(self.inner, attr)
