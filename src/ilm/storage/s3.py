"""A tier on an S3 object store (AWS S3, SeaweedFS, MinIO, ...).

The only module of ilm that imports boto3/botocore: every botocore error is
translated here into an ilm StorageError naming the tier, the key and the
problem, so nothing above this file knows what S3 is.

Writes are verified and never overwrite:
- ``put`` sends ``x-amz-checksum-sha256``; the server hashes what it received
  and refuses the upload (BadDigest -> IntegrityError) if it differs, so a
  corrupted upload is never stored and never has to be read back. An accepted
  put is therefore returned as ``verified`` (the store checked what it holds):
  a move commits it without asking again (a HEAD would return the very
  checksum the server just verified; docs/operations.md).
- ``put`` is conditional (``If-None-Match: *``): the server refuses it with 412
  (-> ObjectExists) when the key is taken, atomically, with no HEAD-then-PUT race.
  A put whose response was lost and that botocore retried therefore also ends
  in ObjectExists; the caller then compares ``stat`` with what it wrote (the
  service layer does, and adopts identical bytes).
- ``stat`` asks the server for the SHA-256 it recorded at upload
  (``ChecksumMode=ENABLED``) and reads and hashes the object only when the
  server has none (objects written by other tools).

WORM tiers (``worm`` governance/compliance, docs/security.md) use S3 Object
Lock: the bucket must have Object Lock enabled (``create_bucket`` makes it
so; a bucket without it is refused on first use), each put carries
``ObjectLockMode`` and ``ObjectLockRetainUntilDate`` (now + ``retain_days``),
legal holds are set per object (``set_legal_hold``), and ``delete`` removes
the object's versions one by one: a plain DELETE in a versioned bucket only
adds a delete marker and would leave the data. The server refuses the delete
of a locked version (AccessDenied -> ObjectLocked). ilm never sends
``x-amz-bypass-governance-retention``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]  # no stubs shipped; the client is typed Any here
import botocore.exceptions as bx  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from ilm.config import S3TierSettings
from ilm.errors import ConfigError, IntegrityError, ObjectLocked, ObjectNotFound, StorageError, TierFull, TierUnavailable
from ilm.models import StoredObject
from ilm.storage.base import ObjectExists, check_key, check_range, sha256_hex

__all__ = ["S3Tier"]

# How long to wait for a response once connected. Long enough for a server to
# hash a large upload, short enough that a hung server fails an ingest rather
# than blocking it: a DICOM sender gives up after about a minute anyway.
DEFAULT_READ_TIMEOUT = 30.0
PAGE_SIZE = 1000  # keys per list request (the S3 maximum); tests lower it to exercise paging

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_CORRUPT = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "XAmzContentChecksumMismatch"}
_TAKEN = {"412", "PreconditionFailed", "ConditionalRequestConflict"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}


def _b64_to_hex(value: str) -> str | None:
    """Hex of a base64 SHA-256 checksum; None for a multipart composite ("...-N") or junk."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


class S3Tier:
    """Objects in one bucket, under an optional key prefix."""

    pack_studies = False  # moves write a whole study as one object (ilm.storage.pack); set by open_tier

    def __init__(
        self,
        name: str,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        create_bucket: bool = False,
        connect_timeout: float = 5.0,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_attempts: int = 3,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        upload_workers: int = 8,
    ) -> None:
        if (access_key_id is None) != (secret_access_key is None):
            raise ConfigError(f"tier {name!r}: give both access_key_id and secret_access_key, or neither")
        if endpoint_url is not None:
            url = urlsplit(endpoint_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ConfigError(f"tier {name!r}: endpoint_url {endpoint_url!r} is not an http(s) URL")
        self.name = name
        self.bucket = bucket
        # Stored as "p/" so that prefixing and stripping are plain concatenation.
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self.create_bucket = create_bucket
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        # Concurrent uploads of a move into this tier (ilm.lifecycle.move); the client
        # keeps at least as many connections open.
        self.upload_workers = upload_workers
        # Server-side encryption asked for on every write (docs/security.md).
        self._sse: dict[str, str] = {}
        if sse is not None:
            self._sse["ServerSideEncryption"] = sse
        if sse_kms_key_id is not None:
            if sse != "aws:kms":
                raise ConfigError(f"tier {name!r}: sse_kms_key_id needs sse = \"aws:kms\"")
            self._sse["SSEKMSKeyId"] = sse_kms_key_id
        self._client: Any = None  # created on first use: constructing must not touch the network
        self._lock = threading.Lock()
        # Object Lock (set by open_tier from the tier's worm / retain_days).
        self.worm = "off"
        self.retain_days = 0
        self.clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)

    @classmethod
    def from_settings(cls, name: str, s: S3TierSettings) -> "S3Tier":
        tier = cls(
            name,
            s.bucket,
            prefix=s.prefix,
            endpoint_url=s.endpoint_url,
            region=s.region,
            access_key_id=s.access_key_id,
            secret_access_key=s.secret_access_key,
            create_bucket=s.create_bucket,
            connect_timeout=s.connect_timeout_seconds,
            max_attempts=s.max_attempts,
            sse=s.sse,
            sse_kms_key_id=s.sse_kms_key_id,
            upload_workers=s.upload_workers,
        )
        tier.worm, tier.retain_days = s.worm, s.retain_days
        return tier

    def __repr__(self) -> str:
        return f"S3Tier({self.name!r}, {self._where()})"

    def _where(self) -> str:
        return f"{self.endpoint_url or f'AWS S3 {self.region}'} bucket {self.bucket!r}"

    # -- client and errors ----------------------------------------------------

    def _s3(self) -> Any:
        """The boto3 client, created (and the bucket made, if configured) on first use."""
        if self._client is not None:
            return self._client
        with self._lock:
            if self._client is not None:
                return self._client
            config = Config(
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                retries={"max_attempts": self.max_attempts, "mode": "standard"},
                s3={"addressing_style": "path"},  # SeaweedFS/MinIO endpoints are not wildcard DNS
                signature_version="s3v4",
                # botocore's default of 10 would make concurrent uploads beyond it wait or reconnect
                max_pool_connections=max(10, self.upload_workers + 2),
            )
            try:
                # A session per tier: boto3's default session is not thread-safe to create clients from.
                client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    aws_access_key_id=self._access_key_id,
                    aws_secret_access_key=self._secret_access_key,
                    config=config,
                )
            except (ValueError, bx.BotoCoreError) as exc:
                raise StorageError(f"tier {self.name!r}: cannot set up an S3 client for {self._where()}: {exc}") from None
            if self.create_bucket:
                self._ensure_bucket(client)
            if self.worm != "off":
                self._check_object_lock(client)
            self._client = client
            return client

    def _ensure_bucket(self, client: Any) -> None:
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except bx.ClientError as exc:
            if self._code(exc) not in _NOT_FOUND | _NO_BUCKET:
                self._raise(exc, "check bucket", "")
        except (bx.BotoCoreError, OSError) as exc:
            self._raise(exc, "check bucket", "")
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.worm != "off":  # Object Lock can only be switched on when the bucket is made
            kwargs["ObjectLockEnabledForBucket"] = True
        if self.region != "us-east-1":  # AWS refuses an explicit us-east-1 constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            client.create_bucket(**kwargs)
        except bx.ClientError as exc:
            if self._code(exc) not in {"BucketAlreadyOwnedByYou"}:  # a concurrent first use
                self._raise(exc, "create bucket", "")
        except (bx.BotoCoreError, OSError) as exc:
            self._raise(exc, "create bucket", "")

    def _check_object_lock(self, client: Any) -> None:
        """A WORM tier needs a bucket with Object Lock: without it every locked put would fail."""
        try:
            conf = client.get_object_lock_configuration(Bucket=self.bucket)
            enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except bx.ClientError as exc:
            if self._code(exc) in _NO_BUCKET:
                self._raise(exc, "check Object Lock of bucket", "")
            enabled = False  # ObjectLockConfigurationNotFoundError and the like
        except (bx.BotoCoreError, OSError) as exc:
            self._raise(exc, "check Object Lock of bucket", "")
        if not enabled:
            raise StorageError(
                f"tier {self.name!r}: worm = {self.worm!r}, but bucket {self.bucket!r} at {self._where()} has no "
                "Object Lock: create the bucket with Object Lock enabled (or let ilm create it: create_bucket = true)")

    def _worm_args(self) -> dict[str, Any]:
        """Object Lock headers of a put: the tier's mode and now + retain_days."""
        if self.worm == "off" or not self.retain_days:
            return {}
        return {"ObjectLockMode": self.worm.upper(),
                "ObjectLockRetainUntilDate": self.clock() + timedelta(days=self.retain_days)}

    def set_legal_hold(self, key: str, on: bool) -> None:
        """Set (on) or clear the Object Lock legal hold of the object's current version."""
        try:
            self._s3().put_object_legal_hold(Bucket=self.bucket, Key=self._key(key),
                                             LegalHold={"Status": "ON" if on else "OFF"})
        except (bx.ClientError, bx.BotoCoreError, OSError) as exc:
            self._raise(exc, "set legal hold on", key)

    def _delete_versions(self, key: str, full: str) -> None:
        """Delete every version (and delete marker) of one key, as Object Lock requires."""
        try:
            pages = self._s3().get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=full)
            found = [(str(v["Key"]), str(v["VersionId"]))
                     for page in pages for v in [*page.get("Versions", ()), *page.get("DeleteMarkers", ())]]
        except (bx.ClientError, bx.BotoCoreError, OSError) as exc:
            self._raise(exc, "delete", key)
        for k, version in found:
            if k != full:
                continue  # another key under the same prefix
            try:
                self._s3().delete_object(Bucket=self.bucket, Key=full, VersionId=version)
            except bx.ClientError as exc:
                if self._code(exc) in _DENIED:
                    raise ObjectLocked(f"tier {self.name!r}: {key} is locked by the store's Object Lock "
                                       f"(retention date not reached, or a legal hold): not deleted") from None
                if self._code(exc) not in _NOT_FOUND:
                    self._raise(exc, "delete", key)
            except (bx.BotoCoreError, OSError) as exc:
                self._raise(exc, "delete", key)

    @staticmethod
    def _code(exc: bx.ClientError) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))

    def _raise(self, exc: BaseException, op: str, key: str) -> NoReturn:
        """Translate a botocore/network error into an ilm error naming tier, key and problem."""
        what = f"tier {self.name!r}: {op} {key}".rstrip()
        if isinstance(exc, bx.ClientError):
            code = self._code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            msg = exc.response.get("Error", {}).get("Message") or code
            if code in _NOT_FOUND:
                raise ObjectNotFound(f"tier {self.name!r}: no object {key} in {self._where()}") from None
            if code in _NO_BUCKET:
                raise TierUnavailable(f"{what}: bucket {self.bucket!r} does not exist at {self._where()}") from None
            if code in _CORRUPT:
                raise IntegrityError(f"{what}: the server refused the bytes: they do not match the SHA-256 sent with them ({code}: wrong data or corrupted in transit)") from None
            if code in _TAKEN:
                raise ObjectExists(f"tier {self.name!r}: {key} already exists") from None
            if code in _DENIED:
                raise StorageError(f"{what}: access denied by {self._where()} ({code}: check the tier's credentials)") from None
            if status == 507 or code in {"QuotaExceeded", "InsufficientStorage", "XMinioStorageFull"}:
                raise TierFull(f"{what}: the store has no room left ({status} {code}: {msg})") from None
            if status in (502, 503, 504) or code in {"ServiceUnavailable", "SlowDown"}:
                raise TierUnavailable(f"{what}: S3 endpoint {self._where()} unavailable ({status} {code})") from None
            raise StorageError(f"{what}: S3 error {code or status}: {msg}") from None
        if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, ConnectionError)):
            raise TierUnavailable(
                f"tier {self.name!r}: S3 endpoint {self.endpoint_url or self._where()} unreachable "
                f"({f'{op} {key}'.strip()}): {exc}"
            ) from None
        if isinstance(exc, bx.FlexibleChecksumError):
            raise IntegrityError(f"{what}: bytes read do not match the server's checksum: {exc}") from None
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            raise StorageError(
                f"{what}: no S3 credentials (set access_key_id/secret_access_key or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
            ) from None
        raise StorageError(f"{what}: {type(exc).__name__}: {exc}") from None

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    # -- the Tier protocol ----------------------------------------------------

    def put(self, key: str, data: bytes, sha256: str | None = None) -> StoredObject:
        full = self._key(key)
        # With the caller's digest, the server checks the bytes against it
        # (BadDigest -> IntegrityError): no local hashing needed.
        if sha256 is None:
            sha256 = sha256_hex(data)
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode("ascii")
        try:
            self._s3().put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                ChecksumSHA256=checksum,  # the server refuses bytes that do not hash to this
                IfNoneMatch="*",  # ...and refuses to replace an existing object
                ContentType="application/dicom" if key.endswith(".dcm") else "application/octet-stream",
                **self._worm_args(),
                **self._sse,
            )
        except (bx.ClientError, bx.BotoCoreError, OSError) as exc:
            if self._server_error(exc) and self._exists_full(full):
                # A server error after its retries, and the key is there now: either an earlier
                # object (SeaweedFS answers some refused conditional puts under load with
                # InternalError instead of 412) or this put landed and its answer was lost.
                # Both are "already exists": the caller compares the stored SHA-256 before
                # adopting, exactly as after a 412.
                raise ObjectExists(f"tier {self.name!r}: {key} already exists (the put answered "
                                   f"{self._code(exc) if isinstance(exc, bx.ClientError) else exc})") from None
            self._raise(exc, "put", key)
        # Accepted: the server hashed the bytes it took and found ``sha256``.
        return StoredObject(key=key, size=len(data), sha256=sha256, verified=True)

    @staticmethod
    def _server_error(exc: BaseException) -> bool:
        return (isinstance(exc, bx.ClientError)
                and int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)) >= 500)

    def _exists_full(self, full: str) -> bool:
        try:
            self._s3().head_object(Bucket=self.bucket, Key=full)
            return True
        except (bx.ClientError, bx.BotoCoreError, OSError):
            return False

    def replace(self, key: str, data: bytes) -> None:
        """Overwrite an existing object (key rotation rewrites an encrypted
        object's header). An S3 PUT replaces an object atomically; the bytes are
        checksummed like any put, and conditional on the ETag the object has
        (``If-Match``), so an object deleted meanwhile is not brought back.
        ObjectNotFound when there is nothing to replace; ObjectLocked on a WORM tier,
        whose objects are never rewritten (the old version would stay, locked, under
        a new unlocked one)."""
        full = self._key(key)
        if self.worm != "off":
            raise ObjectLocked(f"tier {self.name!r}: {key} is immutable (worm = {self.worm}): not rewritten")
        etag = self._head(key, full)["ETag"]
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
        try:
            self._s3().put_object(Bucket=self.bucket, Key=full, Body=data, ChecksumSHA256=checksum, IfMatch=etag,
                                  ContentType="application/octet-stream", **self._sse)
        except bx.ClientError as exc:
            if self._code(exc) in _TAKEN:
                raise StorageError(f"tier {self.name!r}: {key} changed or was deleted while being replaced; "
                                   "nothing was written") from None
            self._raise(exc, "replace", key)
        except (bx.BotoCoreError, OSError) as exc:
            self._raise(exc, "replace", key)

    def get(self, key: str) -> bytes:
        full = self._key(key)
        try:
            # ChecksumMode makes botocore check the body against the stored SHA-256.
            resp = self._s3().get_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
            data: bytes = resp["Body"].read()
        except (bx.ClientError, bx.BotoCoreError, OSError) as exc:
            self._raise(exc, "get", key)
        expected = resp.get("ContentLength")
        if expected is not None and expected != len(data):
            raise StorageError(f"tier {self.name!r}: get {key}: read {len(data)} of {expected} bytes")
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """One HTTP range request (``Range: bytes=offset-end``): only these bytes cross the network.
        The server's whole-object checksum cannot cover a part, so callers check the
        part's own SHA-256 (the catalog keeps one per instance)."""
        full = self._key(key)
        check_range(self.name, key, offset, length)
        if length == 0:  # no byte to ask for: check the range against the object's size
            size = int(self._head(key, full)["ContentLength"])
            if offset > size:
                raise StorageError(f"tier {self.name!r}: range {offset}+0 is beyond the end of {key} ({size} bytes)")
            return b""
        try:
            resp = self._s3().get_object(Bucket=self.bucket, Key=full, Range=f"bytes={offset}-{offset + length - 1}")
            data: bytes = resp["Body"].read()
        except bx.ClientError as exc:
            if self._code(exc) in {"InvalidRange", "416"}:
                raise StorageError(f"tier {self.name!r}: range {offset}+{length} is beyond the end of {key}") from None
            self._raise(exc, "get", key)
        except (bx.BotoCoreError, OSError) as exc:
            self._raise(exc, "get", key)
        if len(data) != length:
            # A range that runs past the end is answered with what there is.
            raise StorageError(f"tier {self.name!r}: range {offset}+{length} is beyond the end of {key} "
                               f"(got {len(data)} bytes)")
        return data

    def delete(self, key: str) -> None:
        full = self._key(key)
        if self.worm != "off":
            self._delete_versions(key, full)
            return
        try:
            self._s3().delete_object(Bucket=self.bucket, Key=full)
        except bx.ClientError as exc:
            if self._code(exc) in _NOT_FOUND:
                return
            self._raise(exc, "delete", key)
        except (bx.BotoCoreError, OSError) as exc:
            self._raise(exc, "delete", key)

    def _head(self, key: str, full: str) -> dict[str, Any]:
        try:
            head: dict[str, Any] = self._s3().head_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
            return head
        except (bx.ClientError, bx.BotoCoreError, OSError) as exc:
            self._raise(exc, "stat", key)

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self._head(key, full)
        except ObjectNotFound:
            return False
        return True

    def stat(self, key: str) -> StoredObject:
        full = self._key(key)
        head = self._head(key, full)
        stored = _b64_to_hex(str(head.get("ChecksumSHA256") or ""))
        if stored is not None:
            return StoredObject(key=key, size=int(head["ContentLength"]), sha256=stored)
        # No whole-object SHA-256 on the server (uploaded by another tool, or
        # multipart): read it and hash what we get.
        data = self.get(key)
        return StoredObject(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def keys(self, prefix: str = "") -> Iterator[str]:
        # A prefix is a folder, as on the filesystem tier: "1.2" lists 1.2/... but not 1.23/...
        where = self.prefix + (check_key(prefix.rstrip("/")) + "/" if prefix else "")
        try:
            pages = self._s3().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=where, PaginationConfig={"PageSize": PAGE_SIZE}
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = str(obj["Key"])[len(self.prefix) :]
                    try:
                        yield check_key(key)
                    except StorageError:
                        continue  # not an ilm object key (put there by hand): not ours to report
        except (bx.ClientError, bx.BotoCoreError, OSError) as exc:
            self._raise(exc, "list", f"keys under {prefix}" if prefix else "all keys")
