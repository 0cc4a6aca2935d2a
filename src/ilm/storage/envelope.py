"""The envelope-encrypted object format: AES-256-GCM in 64 KiB segments.

Pure: bytes in, bytes out, no I/O. ``ilm.storage.encrypted`` stores objects
in this format on any tier.

Every object gets its own random 256-bit data key, wrapped (AES key wrap,
RFC 3394) by a master key from the key ring. The object is a fixed 88-byte
header followed by the segments:

    offset size
      0     6   magic b"ILMENC"
      6     1   format version (1)
      7     1   log2 of the segment size (16: 64 KiB)
      8     8   plaintext size, big-endian
     16    32   master key id, ASCII, NUL-padded
     48    40   the data key wrapped by that master key
     88   ...   segment 0, 1, ...: ciphertext of 64 KiB of plaintext (the
                last one shorter, an empty object has one empty segment),
                each followed by its 16-byte GCM tag

Segment ``i`` is encrypted with nonce ``i`` (12 bytes, big-endian; the data
key is used for this one object only, so a nonce never repeats under a key)
and authenticated with the first 16 header bytes, ``i`` and a last-segment
flag as associated data: a changed byte anywhere in a segment, its tag or the
first 16 header bytes, reordered or dropped segments, and a truncated object
all fail authentication. A changed wrapped key fails the key unwrap's own
integrity check; a changed key id names a key that is missing or does not
unwrap. Nothing decrypted is returned before its tag checked.

Segments are what make ranged reads possible: an instance inside a packed
study is read by fetching and checking only the segments that hold it.

Key rotation replaces bytes 16-88 only (another master key's id and wrap of
the same data key): the segments, and so the data, are not re-encrypted.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from ilm.errors import DecryptionFailed, KeyUnavailable

__all__ = [
    "HEADER_SIZE",
    "SEGMENT",
    "Header",
    "KEY_ID",
    "seal",
    "open_blob",
    "parse_header",
    "segment_span",
    "decrypt_segments",
    "rewrap_header",
    "sealed_size",
]

MAGIC = b"ILMENC"
VERSION = 1
SEGMENT_LOG2 = 16
SEGMENT = 1 << SEGMENT_LOG2
TAG = 16
_FIXED = struct.Struct(">6sBBQ")  # magic, version, segment log2, plaintext size: the part every tag covers
_KEY_ID_LEN = 32
_WRAPPED_LEN = 40  # AES key wrap of a 32-byte key
HEADER_SIZE = _FIXED.size + _KEY_ID_LEN + _WRAPPED_LEN
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")

# The master key material for a key id (raises when the ring has no such usable key).
MasterLookup = Callable[[str], bytes]


@dataclass(frozen=True, slots=True)
class Header:
    fixed: bytes  # the first 16 bytes, associated data of every segment
    segment: int
    size: int  # plaintext bytes
    key_id: str
    wrapped: bytes

    @property
    def segments(self) -> int:
        return max(1, -(-self.size // self.segment))


def sealed_size(size: int) -> int:
    """Bytes an object of ``size`` plaintext bytes takes once sealed."""
    return HEADER_SIZE + size + TAG * max(1, -(-size // SEGMENT))


def _aad(fixed: bytes, index: int, last: bool) -> bytes:
    return fixed + struct.pack(">QB", index, 1 if last else 0)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _key_id_field(key_id: str) -> bytes:
    if not KEY_ID.fullmatch(key_id):
        raise ValueError(f"master key id {key_id!r}: 1-32 letters, digits, '-' or '_'")
    return key_id.encode("ascii").ljust(_KEY_ID_LEN, b"\0")


def seal(data: bytes, key_id: str, master: bytes) -> bytes:
    """``data`` encrypted under a fresh data key wrapped by ``master`` (id ``key_id``)."""
    data_key = AESGCM.generate_key(bit_length=256)
    fixed = _FIXED.pack(MAGIC, VERSION, SEGMENT_LOG2, len(data))
    out = [fixed, _key_id_field(key_id), aes_key_wrap(master, data_key)]
    gcm = AESGCM(data_key)
    view = memoryview(data)
    n = max(1, -(-len(data) // SEGMENT))
    for i in range(n):
        out.append(gcm.encrypt(_nonce(i), view[i * SEGMENT:(i + 1) * SEGMENT], _aad(fixed, i, i == n - 1)))
    return b"".join(out)


def parse_header(raw: bytes, where: str) -> Header:
    """The header of an encrypted object (its first HEADER_SIZE bytes, or more)."""
    if len(raw) < HEADER_SIZE:
        raise DecryptionFailed(f"{where}: integrity failure: {len(raw)} bytes is too short for an encrypted object")
    magic, version, seg_log2, size = _FIXED.unpack_from(raw)
    if magic != MAGIC:
        raise DecryptionFailed(f"{where}: integrity failure: not an encrypted object (no ILMENC header)")
    if version != VERSION or not 10 <= seg_log2 <= 24:
        raise DecryptionFailed(f"{where}: integrity failure: unknown encrypted format (version {version}, segment 2^{seg_log2})")
    raw_id = raw[_FIXED.size:_FIXED.size + _KEY_ID_LEN].rstrip(b"\0")
    key_id = raw_id.decode("ascii", "replace")
    if not KEY_ID.fullmatch(key_id):
        raise DecryptionFailed(f"{where}: integrity failure: the header's master key id {raw_id[:32]!r} is damaged")
    wrapped = bytes(raw[_FIXED.size + _KEY_ID_LEN:HEADER_SIZE])
    return Header(bytes(raw[:_FIXED.size]), 1 << seg_log2, size, key_id, wrapped)


def unwrap(header: Header, master: MasterLookup, where: str) -> bytes:
    """The object's data key; DecryptionFailed if the wrapped key was changed."""
    try:
        material = master(header.key_id)
    except KeyUnavailable as exc:
        raise KeyUnavailable(f"{where}: {exc}") from None
    try:
        return aes_key_unwrap(material, header.wrapped)
    except InvalidUnwrap:
        raise DecryptionFailed(f"{where}: integrity failure: its data key does not unwrap under master key {header.key_id!r} "
                               "(a changed byte in the header, or another key of that id)") from None


def decrypt_segments(header: Header, data_key: bytes, first: int, blob: bytes | memoryview, where: str) -> bytes:
    """Plaintext of the consecutive segments from ``first`` held in ``blob``, every tag checked."""
    gcm = AESGCM(data_key)
    view = memoryview(blob)
    step = header.segment + TAG
    out = []
    last = header.segments - 1
    i = first
    pos = 0
    while pos < len(view):
        chunk = view[pos:pos + step]
        if len(chunk) < TAG:
            raise DecryptionFailed(f"{where}: integrity failure: segment {i} is truncated")
        try:
            out.append(gcm.decrypt(_nonce(i), chunk, _aad(header.fixed, i, i == last)))
        except InvalidTag:
            raise DecryptionFailed(f"{where}: integrity failure: segment {i} fails authentication (changed bytes)") from None
        pos += step
        i += 1
    return b"".join(out)


def open_blob(blob: bytes, master: MasterLookup, where: str) -> bytes:
    """The plaintext of a whole encrypted object; DecryptionFailed on any changed byte."""
    header = parse_header(blob, where)
    expected = HEADER_SIZE + header.size + TAG * header.segments
    if len(blob) != expected:
        raise DecryptionFailed(f"{where}: integrity failure: {len(blob)} bytes where the header says {expected} (truncated or padded)")
    data = decrypt_segments(header, unwrap(header, master, where), 0, memoryview(blob)[HEADER_SIZE:], where)
    if len(data) != header.size:  # cannot happen with intact tags; kept as a guard
        raise DecryptionFailed(f"{where}: integrity failure: decrypted {len(data)} bytes, the header says {header.size}")
    return data


def segment_span(header: Header, offset: int, length: int) -> tuple[int, int, int]:
    """For plaintext ``offset``/``length`` (length > 0, inside the object): the first
    segment, and the byte offset and length of the encrypted segments that hold it."""
    first = offset // header.segment
    last = (offset + length - 1) // header.segment
    start = HEADER_SIZE + first * (header.segment + TAG)
    end = HEADER_SIZE + min(header.size, (last + 1) * header.segment) + (last + 1) * TAG
    return first, start, end - start


def rewrap_header(header: Header, master: MasterLookup, new_id: str, new_master: bytes, where: str) -> bytes:
    """A header for the same data key wrapped by another master key (rotation)."""
    data_key = unwrap(header, master, where)
    return header.fixed + _key_id_field(new_id) + aes_key_wrap(new_master, data_key)


def new_master_key() -> bytes:
    return os.urandom(32)
