"""The one interface every storage tier implements.

Kept as small as httpx's transport: seven methods (``get_range`` reads part
of an object: one instance inside a packed study, see ``ilm.storage.pack``).
Keys are built by ``ilm.uids.instance_key`` from validated UIDs; backends
still refuse any key that could escape their root.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from ilm.errors import StorageError
from ilm.models import StoredObject

__all__ = ["Tier", "ObjectExists", "check_key", "sha256_hex", "check_range"]

_KEY = re.compile(r"[0-9.]+(/[0-9.]+)*(\.dcm|\.pack|\.idx)?")


class ObjectExists(StorageError):
    """``put`` found an object already at that key; nothing was overwritten."""


def check_key(key: str) -> str:
    """Refuse a key that is not UID path segments (no '..', no '/', no NUL)."""
    if not _KEY.fullmatch(key) or any(part in ("", ".", "..") for part in key.split("/")) or len(key) > 255:
        raise StorageError(f"refused object key {key[:100]!r}: keys are UID path segments")
    return key


def check_range(tier: str, key: str, offset: int, length: int) -> None:
    """Refuse a negative offset or length (a backend then checks the range ends inside the object)."""
    if offset < 0 or length < 0:
        raise StorageError(f"tier {tier!r}: refused range {offset}+{length} of {key}: negative")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@runtime_checkable
class Tier(Protocol):
    """A place that holds objects. Every method raises StorageError subclasses only."""

    name: str

    def put(self, key: str, data: bytes, sha256: str | None = None) -> StoredObject:
        """Store ``data`` at ``key`` atomically, never overwriting; return its SHA-256.

        With ``sha256`` (the digest the caller expects, as a move passes the
        catalog's), data that does not hash to it is refused with
        IntegrityError; without it, the backend computes the digest once and
        returns it. ObjectExists if the key is taken. A failed put leaves
        nothing behind.
        """
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFound when absent."""
        ...

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the object from ``offset`` (an instance inside a
        packed study), without reading the rest. ObjectNotFound when absent;
        StorageError when the range is not inside the object."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; removing an absent key is not an error."""
        ...

    def exists(self, key: str) -> bool: ...

    def stat(self, key: str) -> StoredObject:
        """Size and SHA-256 of what the tier holds now (the tier's own checksum
        where it keeps one, else by reading). ObjectNotFound when absent."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix`` (for reconciling the tier with the catalog)."""
        ...
