"""Exceptions raised by ilm.

Every error a user can cause carries a message that names the problem (the
file, key, UID or tier) so that front-ends can print it unchanged.

    IlmError
    ├── ConfigError           config file missing, unreadable or invalid (exit 2)
    ├── InvalidUID            a UID that is not digits and dots, <= 64 chars
    ├── RejectedInstance      a dataset that cannot be stored (not DICOM, no UIDs ...)
    ├── InvalidQuery          a query (C-FIND identifier, QIDO-RS parameters) that cannot run
    ├── PolicyError           a policy file with errors (ilm.policy.errors; lists each with file:line)
    ├── Unauthenticated       no API token, or one unknown, revoked or expired (HTTP 401)
    ├── Forbidden             a valid token whose role is too low for the request (HTTP 403)
    ├── CatalogError          the catalog cannot be opened or migrated
    │   └── NotFound          no such study / series / instance
    └── StorageError          a tier failed (I/O error, S3 down, ...)
        ├── ObjectNotFound    the key is not on that tier
        ├── IntegrityError    what the tier holds does not hash to what was written
        │   └── DecryptionFailed  an encrypted object fails authentication: a changed byte, never served
        ├── KeyUnavailable    the master key an encrypted object names is not in the key ring (or retired)
        ├── TierUnavailable   the tier cannot be reached at all
        ├── TierFull          the tier has no room left (disk full, quota): ingest tries the next tier
        ├── ObjectLocked      a WORM copy: its retention date has not passed, or a legal hold is on it
        └── NotReady          the data is on an archive tier and must be restored first
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "IlmError",
    "ConfigError",
    "InvalidUID",
    "RejectedInstance",
    "InvalidQuery",
    "Unauthenticated",
    "Forbidden",
    "CatalogError",
    "NotFound",
    "StorageError",
    "ObjectNotFound",
    "IntegrityError",
    "DecryptionFailed",
    "KeyUnavailable",
    "TierUnavailable",
    "TierFull",
    "ObjectLocked",
    "NotReady",
]


class IlmError(Exception):
    """Base class of every error ilm raises on purpose."""


class ConfigError(IlmError):
    """The configuration is missing or invalid."""


class InvalidUID(IlmError, ValueError):
    """A DICOM UID failed validation."""


class RejectedInstance(IlmError):
    """A dataset was refused; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidQuery(IlmError, ValueError):
    """A query with an unknown level or attribute, or a value that cannot match."""


class Unauthenticated(IlmError):
    """A request without a valid API token; the message says what was wrong with it.
    ``token_name``: the name of a known (revoked, expired) token, '' for an unknown one."""

    token_name: str = ""


class Forbidden(IlmError):
    """A valid token whose role does not include the one the request needs."""


class CatalogError(IlmError):
    """The catalog failed."""


class NotFound(CatalogError):
    """The catalog has no such entity."""


class StorageError(IlmError):
    """A storage tier failed."""


class ObjectNotFound(StorageError):
    """The object is not on the tier."""


class IntegrityError(StorageError):
    """Stored bytes do not match their recorded SHA-256."""


class DecryptionFailed(IntegrityError):
    """An encrypted object failed authentication (a changed byte in its header,
    ciphertext or tag, or a truncated object): nothing of it is returned."""


class KeyUnavailable(StorageError):
    """The master key an encrypted object was wrapped with is not in the key ring, or is retired."""


class TierUnavailable(StorageError):
    """The tier cannot be reached (server down, mount missing)."""


class TierFull(StorageError):
    """The tier refused a write for lack of space (ENOSPC, quota exceeded)."""


class ObjectLocked(StorageError):
    """A delete refused because the copy is immutable (WORM) until ``until``
    (None: a legal hold, or a date the store did not say)."""

    def __init__(self, message: str, until: datetime | None = None) -> None:
        super().__init__(message)
        self.until = until


class NotReady(StorageError):
    """The study is on an archive tier: a restore is needed (or under way).

    ``retry_after`` is the number of seconds until the restore should be done
    (None when no restore was requested yet).
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NothingToApply(IlmError):
    """A plan has no pending or failed action left (applied already, or empty)."""
