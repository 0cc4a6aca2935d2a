"""A tier on a local or mounted file system.

Writes go to a temporary file in the target folder, are flushed (fsync when
configured), and are then linked to their final name: link() fails if the
name exists, so a put is atomic and never overwrites.

On a WORM tier (``worm`` set, docs/security.md) every file is written
read-only (0444) with its retain-until date as its modification time (as
NetApp SnapLock keeps it in the access time): ``delete`` refuses a read-only
file whose date is still ahead (ObjectLocked), whoever calls it. The date
travels with the file (cp -p, rsync -t keep it) and ilm never writes a file
twice, so the modification time is free for it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_mode
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

from ilm.errors import IntegrityError, ObjectLocked, ObjectNotFound, StorageError, TierFull, TierUnavailable
from ilm.models import StoredObject
from ilm.storage.base import ObjectExists, check_key, check_range, sha256_hex

__all__ = ["FilesystemTier", "CheckedFile"]

_TMP = ".tmp-"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _kernel_copy(src: int, dst: int) -> None:
    """Copy the whole file ``src`` to ``dst`` inside the kernel: copy_file_range,
    or sendfile where that is refused (an older kernel across file systems)."""
    copy = getattr(os, "copy_file_range", None)
    while copy is not None:
        try:
            if copy(src, dst, 1 << 30) == 0:
                return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            copy = None
    while os.sendfile(dst, src, None, 1 << 30):
        pass


def _hash_fd(fd: int) -> tuple[str, int]:
    """SHA-256 and size of the whole file ``fd``, read into one reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    size = 0
    while n := os.preadv(fd, [buf], size):
        h.update(view[:n])
        size += n
    return h.hexdigest(), size


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class CheckedFile:
    """A file of a tier whose bytes were hashed to the SHA-256 the caller expected.

    ``open()`` opens it again, for a sender that reads the file itself (a
    C-STORE sent from the file, ilm.dicom.sending), and refuses it with
    IntegrityError when the name now holds another file or the file was
    written since it was hashed (device, inode, size, modification and change
    time differ): ilm never writes a file twice, so an unchanged identity is
    the file that was checked. ObjectNotFound when it is gone (moved since).
    """

    path: Path
    size: int
    identity: tuple[int, int, int, int, int]

    def open(self) -> BinaryIO:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.path} is gone since it was checked") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if _identity(os.fstat(fh.fileno())) != self.identity:
            fh.close()
            raise IntegrityError(f"{self.path} was replaced or written since it was checked")
        return fh


class FilesystemTier:
    pack_studies = False  # moves write a whole study as one object (ilm.storage.pack); set by open_tier
    def __init__(self, name: str, root: Path, *, fsync: bool = True, create: bool = True,
                 worm: str = "off", retain_days: int = 0) -> None:
        self.name = name
        self.root = Path(root)
        self.fsync = fsync
        self.worm = worm                # "off" | "governance" | "compliance"
        self.retain_days = retain_days  # each file locked this long from its write
        self.clock: Callable[[], datetime] = _utcnow
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TierUnavailable(f"tier {name!r}: cannot create {self.root}: {exc.strerror}") from None

    def __repr__(self) -> str:
        return f"FilesystemTier({self.name!r}, {str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _fail(self, what: str, key: str, exc: OSError) -> StorageError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return TierFull(f"tier {self.name!r}: disk full writing {key} in {self.root}")
        if not self.root.is_dir():
            return TierUnavailable(f"tier {self.name!r}: folder {self.root} is missing")
        return StorageError(f"tier {self.name!r}: cannot {what} {key}: {exc.strerror or exc}")

    def _read_error(self, key: str, exc: OSError) -> StorageError:
        if isinstance(exc, FileNotFoundError):
            if not self.root.is_dir():
                return TierUnavailable(f"tier {self.name!r}: folder {self.root} is missing")
            return ObjectNotFound(f"tier {self.name!r}: no object {key}")
        return self._fail("read", key, exc)

    def put(self, key: str, data: bytes, sha256: str | None = None) -> StoredObject:
        path = self._path(key)
        actual = sha256_hex(data)
        if sha256 is not None and actual != sha256:
            raise IntegrityError(f"tier {self.name!r}: refused {key}: data does not match the given SHA-256")
        self._publish(key, path, lambda fd: _write_all(fd, data), replace=False)
        return StoredObject(key=key, size=len(data), sha256=actual)

    def copy_in(self, key: str, source: FilesystemTier, sha256: str) -> StoredObject:
        """Copy ``key`` from another file-system tier in the kernel (copy_file_range:
        no bytes pass through Python), then hash what this tier now holds, read
        back from it, and publish it only if that is ``sha256`` (else
        IntegrityError and nothing is left behind). Atomic and never overwriting
        like ``put`` (ObjectExists)."""
        path = self._path(key)
        try:
            sfd = os.open(source._path(key), os.O_RDONLY)
        except OSError as exc:
            raise source._read_error(key, exc) from None
        held: list[StoredObject] = []

        def copy_and_check(fd: int) -> None:
            _kernel_copy(sfd, fd)
            digest, size = _hash_fd(fd)
            if digest != sha256:
                raise IntegrityError(f"tier {self.name!r}: refused {key} copied from tier {source.name!r}: "
                                     "the bytes written do not match the given SHA-256")
            held.append(StoredObject(key=key, size=size, sha256=digest))

        try:
            self._publish(key, path, copy_and_check, replace=False)
        finally:
            os.close(sfd)
        return held[0]

    def replace(self, key: str, data: bytes) -> None:
        """Overwrite an existing object atomically (rename over it): key rotation
        rewrites an encrypted object's header this way. ObjectNotFound when absent."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"tier {self.name!r}: no object {key}")
        self._refuse_locked(key, "rewritten")
        self._publish(key, path, lambda fd: _write_all(fd, data), replace=True)

    def _publish(self, key: str, path: Path, fill: Callable[[int], None], *, replace: bool) -> None:
        """Write a temporary file with ``fill`` (given its descriptor, open for
        reading and writing), flush it, then link it to ``path`` (never
        overwriting: ObjectExists) or, with ``replace``, rename it over ``path``."""
        tmp = path.parent / f"{_TMP}{uuid.uuid4().hex}"
        try:
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:  # a new study or series: its folder is made then, not checked on every put
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                fill(fd)
                if self.worm != "off":  # locked before it gets its name: never visible writable
                    until = (self.clock() + timedelta(days=self.retain_days)).timestamp()
                    os.utime(fd, (until, until))
                    os.fchmod(fd, 0o444)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise ObjectExists(f"tier {self.name!r}: {key} already exists") from None
            if self.fsync:
                dfd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            raise self._fail("write", key, exc) from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise self._read_error(key, exc) from None

    def checked_file(self, key: str, sha256: str) -> CheckedFile:
        """The file at ``key`` once its bytes hash to ``sha256`` (read here, on the caller's
        thread): IntegrityError when they do not, ObjectNotFound when it is absent."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                before = os.fstat(fd)
                digest, size = _hash_fd(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._read_error(key, exc) from None
        if digest != sha256:
            raise IntegrityError(f"tier {self.name!r}: {key} does not match its SHA-256 "
                                 f"(holds {size} bytes hashing to {digest[:12]}..., expected {sha256[:12]}...)")
        return CheckedFile(path, size, _identity(before))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        path = self._path(key)
        check_range(self.name, key, offset, length)
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if offset + length > size:
                    raise StorageError(f"tier {self.name!r}: range {offset}+{length} is beyond the end of {key} ({size} bytes)")
                fh.seek(offset)
                data = fh.read(length)
        except OSError as exc:
            raise self._read_error(key, exc) from None
        if len(data) != length:
            raise StorageError(f"tier {self.name!r}: read {len(data)} of {length} bytes at {offset} of {key}")
        return data

    def locked_until(self, key: str) -> datetime | None:
        """The retain-until date of a WORM file still ahead of the tier's clock (None: deletable or absent)."""
        if self.worm == "off":
            return None
        try:
            st = os.stat(self._path(key))
        except OSError:
            return None
        if st.st_mode & (stat_mode.S_IWUSR | stat_mode.S_IWGRP | stat_mode.S_IWOTH):
            return None  # not a locked file (written before the tier became WORM)
        until = datetime.fromtimestamp(st.st_mtime, timezone.utc)
        return until if until > self.clock() else None

    def _refuse_locked(self, key: str, what: str) -> None:
        until = self.locked_until(key)
        if until is not None:
            raise ObjectLocked(f"tier {self.name!r}: {key} is immutable (worm = {self.worm}) until "
                               f"{until:%Y-%m-%d %H:%M} UTC: not {what}", until)

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._refuse_locked(key, "deleted")
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fail("delete", key, exc) from None
        # Remove emptied series and study folders; a concurrent put recreates them.
        for parent in (path.parent, path.parent.parent):
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> StoredObject:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                digest, size = _hash_fd(fd)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise ObjectNotFound(f"tier {self.name!r}: no object {key}") from None
        except OSError as exc:
            raise self._fail("read", key, exc) from None
        return StoredObject(key=key, size=size, sha256=digest)

    def keys(self, prefix: str = "") -> Iterator[str]:
        base = self.root / check_key(prefix.rstrip("/")) if prefix else self.root
        if not base.exists():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(_TMP):
                    continue
                yield os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
