"""A tier that encrypts what it stores: envelope encryption over any other tier.

``EncryptedTier`` wraps a filesystem or S3 tier (``encryption = "envelope"``
in the tier's settings). Objects are stored in the format of
``ilm.storage.envelope``: AES-256-GCM in 64 KiB segments under a random data
key per object, wrapped by the key ring's active master key.

What callers see is the plaintext: sizes and SHA-256 digests are those of the
plaintext (the catalog's SHA-256, which fixity, moves and de-duplication
compare whatever tier a copy is on). ``stat`` therefore reads and decrypts the
object: every tag is checked and the plaintext hashed, so a verify after a
move or a fixity check proves the stored bytes decrypt to the catalogued
image. One shortcut: for an object this process wrote a moment ago, the
inner tier's own checksum of what it holds (S3: the SHA-256 the server
recorded, no download) is compared with the ciphertext written; when they are
equal the object is the one encrypted from the verified plaintext, and is not
read back. Any difference falls back to the full read. A changed byte is reported as DecryptionFailed (an IntegrityError) and
nothing of the object is returned.

``get_range`` reads the header and only the segments that hold the range, and
checks their tags: a packed study's instance is read without the rest of
the pack.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

from ilm.errors import DecryptionFailed, IlmError, IntegrityError, ObjectNotFound, StorageError, TierUnavailable
from ilm.keyring import KeyRing, MasterKey
from ilm.models import StoredObject
from ilm.storage import envelope
from ilm.storage.base import Tier, check_key, check_range, sha256_hex

__all__ = ["EncryptedTier", "Replaceable"]

_WRITTEN_MAX = 4096  # recent puts remembered for a stat without a read-back; recent headers for ranged reads


class Replaceable(Tier, Protocol):
    def replace(self, key: str, data: bytes) -> None:
        """Overwrite an existing object atomically (key rotation); ObjectNotFound when absent."""
        ...


class EncryptedTier:
    """Envelope encryption in front of ``inner``; same name, same keys, plaintext in and out."""

    def __init__(self, inner: Replaceable, ring: KeyRing) -> None:
        self.inner = inner
        self.name = inner.name
        self.ring = ring
        self.pack_studies = bool(getattr(inner, "pack_studies", False))
        # key -> (ciphertext SHA-256, plaintext facts) of recent puts, for stat (bounded)
        self._written: OrderedDict[str, tuple[str, StoredObject]] = OrderedDict()
        self._written_lock = threading.Lock()
        self._headers: OrderedDict[str, envelope.Header] = OrderedDict()  # of recent ranged reads (bounded)

    def __repr__(self) -> str:
        return f"EncryptedTier({self.inner!r}, key ring {str(self.ring.path)!r})"

    def __getattr__(self, name: str) -> Any:
        """Anything else a backend offers (Object Lock, legal holds, ...) is the inner tier's."""
        if name == "inner":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _where(self, key: str) -> str:
        return f"tier {self.name!r}: {key}"

    # -- the Tier protocol ------------------------------------------------------

    def put(self, key: str, data: bytes, sha256: str | None = None) -> StoredObject:
        check_key(key)
        actual = sha256_hex(data)
        if sha256 is not None and actual != sha256:
            raise IntegrityError(f"tier {self.name!r}: refused {key}: data does not match the given SHA-256")
        master = self.ring.active()
        held = self.inner.put(key, envelope.seal(data, master.id, master.material))
        stored = StoredObject(key=key, size=len(data), sha256=actual)
        with self._written_lock:
            self._written[key] = (held.sha256, stored)
            while len(self._written) > _WRITTEN_MAX:
                self._written.popitem(last=False)
        return stored

    def get(self, key: str) -> bytes:
        return envelope.open_blob(self.inner.get(key), self.ring.material, self._where(key))

    def _header(self, key: str) -> envelope.Header:
        try:
            raw = self.inner.get_range(key, 0, envelope.HEADER_SIZE)
        except (ObjectNotFound, TierUnavailable, IntegrityError):
            raise
        except StorageError as exc:
            if "beyond the end" in str(exc):
                raise DecryptionFailed(f"{self._where(key)}: integrity failure: too short for an encrypted object") from None
            raise
        return envelope.parse_header(raw, self._where(key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_key(key)
        check_range(self.name, key, offset, length)
        with self._written_lock:
            cached = self._headers.get(key)
        if cached is not None:
            # The header of an object read a moment ago (the next instance of the same
            # pack): one request instead of two. A header that has gone stale (the
            # object rewritten by a rotation whose old key is retired, or replaced)
            # fails to open the segments: read it again and retry once.
            try:
                return self._read_range(key, cached, offset, length)
            except (ObjectNotFound, TierUnavailable):
                raise
            except IlmError:
                pass
        header = self._header(key)
        with self._written_lock:
            self._headers[key] = header
            self._headers.move_to_end(key)
            while len(self._headers) > _WRITTEN_MAX:
                self._headers.popitem(last=False)
        return self._read_range(key, header, offset, length)

    def _read_range(self, key: str, header: envelope.Header, offset: int, length: int) -> bytes:
        if offset + length > header.size or (length == 0 and offset > header.size):
            raise StorageError(f"tier {self.name!r}: range {offset}+{length} is beyond the end of {key} "
                               f"({header.size} bytes)")
        if length == 0:
            return b""
        where = self._where(key)
        data_key = envelope.unwrap(header, self.ring.material, where)
        first, start, count = envelope.segment_span(header, offset, length)
        try:
            blob = self.inner.get_range(key, start, count)
        except (ObjectNotFound, TierUnavailable):
            raise
        except StorageError as exc:
            if "beyond the end" in str(exc):
                raise DecryptionFailed(f"{where}: integrity failure: shorter than its header says (truncated)") from None
            raise
        plain = envelope.decrypt_segments(header, data_key, first, blob, where)
        skip = offset - first * header.segment
        return plain[skip:skip + length]

    def delete(self, key: str) -> None:
        with self._written_lock:
            self._written.pop(key, None)
            self._headers.pop(key, None)
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def stat(self, key: str) -> StoredObject:
        """Size and SHA-256 of the plaintext, by reading and decrypting the whole object
        (or, for an object just written here, by the inner tier's checksum of it)."""
        with self._written_lock:
            written = self._written.pop(key, None)
        if written is not None and self.inner.stat(key).sha256 == written[0]:
            return written[1]
        data = self.get(key)
        return StoredObject(key=key, size=len(data), sha256=sha256_hex(data))

    def keys(self, prefix: str = "") -> Iterator[str]:
        return self.inner.keys(prefix)

    # -- key management -----------------------------------------------------------

    def key_id(self, key: str) -> str:
        """The id of the master key that wraps the object's data key (one header read)."""
        return self._header(key).key_id

    def rewrap(self, key: str, to: MasterKey) -> str:
        """Wrap the object's data key by ``to`` instead of its current master key
        and return the id it had. Only the 72 key bytes of the header change;
        the encrypted segments are written back unchanged (not re-encrypted).
        The whole object is authenticated first, so a damaged object is reported
        (DecryptionFailed) rather than carried forward under a new key."""
        where = self._where(key)
        blob = self.inner.get(key)
        header = envelope.parse_header(blob, where)
        if header.key_id == to.id:
            return header.key_id
        envelope.open_blob(blob, self.ring.material, where)  # every tag checked
        with self._written_lock:
            self._headers.pop(key, None)
        new_header = envelope.rewrap_header(header, self.ring.material, to.id, to.material, where)
        self.inner.replace(key, new_header + blob[envelope.HEADER_SIZE:])
        return header.key_id
