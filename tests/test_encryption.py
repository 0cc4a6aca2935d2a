"""Envelope encryption of a tier (ilm.storage.encrypted, ilm.storage.envelope, ilm.keyring)
on real files and a real S3 server (SeaweedFS): every changed byte is refused,
ranged reads decrypt only what they need, the key ring guards its keys, and
S3 tiers can ask the store for server-side encryption."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings as hypothesis_settings
from hypothesis import strategies as st

from conftest import write_config
from support.seaweed import SeaweedFS

from ilm.config import load_settings
from ilm.errors import ConfigError, DecryptionFailed, IntegrityError, KeyUnavailable
from ilm.keyring import KeyRing
from ilm.storage import FilesystemTier, open_tier
from ilm.storage import envelope
from ilm.storage.encrypted import EncryptedTier
from ilm.storage.s3 import S3Tier

KEY = "1.2.840.1/1.2.840.2/1.2.840.3.dcm"


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    r = KeyRing(tmp_path / "keyring.toml", env={})
    r.add("k1")
    return r


@pytest.fixture
def disk(tmp_path: Path, ring: KeyRing) -> EncryptedTier:
    return EncryptedTier(FilesystemTier("safe", tmp_path / "tier", fsync=False), ring)


def _flip(blob: bytes, i: int) -> bytes:
    return blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:]


# -- the format ------------------------------------------------------------------


def test_every_single_changed_byte_is_refused(ring: KeyRing) -> None:
    """Header, wrapped key, ciphertext and tag: flipping any one bit of a stored
    object makes the read fail; nothing decrypted is returned."""
    data = os.urandom(100)
    blob = envelope.seal(data, "k1", ring.material("k1"))
    assert len(blob) == envelope.HEADER_SIZE + 100 + 16 == envelope.sealed_size(100)
    assert envelope.open_blob(blob, ring.material, "t") == data
    for i in range(len(blob)):
        with pytest.raises((DecryptionFailed, KeyUnavailable)):
            envelope.open_blob(_flip(blob, i), ring.material, "t")
    # Outside the key id (bytes 16-47: another id names a key that is not there), it is an integrity failure.
    for i in list(range(0, 16)) + list(range(48, len(blob))):
        with pytest.raises(DecryptionFailed, match="integrity failure"):
            envelope.open_blob(_flip(blob, i), ring.material, "t")


def test_reordered_truncated_or_extended_segments_are_refused(ring: KeyRing) -> None:
    data = os.urandom(3 * envelope.SEGMENT + 10)  # four segments
    blob = envelope.seal(data, "k1", ring.material("k1"))
    step = envelope.SEGMENT + 16
    h = envelope.HEADER_SIZE
    seg = [blob[h + i * step:h + (i + 1) * step] for i in range(4)]
    swapped = blob[:h] + seg[1] + seg[0] + seg[2] + seg[3]
    dropped = blob[:h] + seg[0] + seg[1] + seg[2]  # a whole segment cut off
    for bad in (swapped, dropped, blob[:-1], blob + b"\0"):
        with pytest.raises(DecryptionFailed):
            envelope.open_blob(bad, ring.material, "t")


@hypothesis_settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 5 * envelope.SEGMENT + 3), data=st.data())
def test_any_range_of_any_object_decrypts_to_the_plaintext(size: int, data: st.DataObject) -> None:
    """segment_span + decrypt_segments, for any object size and any range inside it
    (segment boundaries, the last short segment, single bytes, the whole object)."""
    master = b"m" * 32
    plain = bytes(i % 251 for i in range(size))
    blob = envelope.seal(plain, "k1", master)
    header = envelope.parse_header(blob, "t")
    offset = data.draw(st.integers(0, max(0, size - 1)))
    length = data.draw(st.integers(1, max(1, size - offset))) if size else 0
    if length == 0:
        return
    first, start, count = envelope.segment_span(header, offset, length)
    got = envelope.decrypt_segments(header, envelope.unwrap(header, lambda _k: master, "t"), first,
                                    blob[start:start + count], "t")
    skip = offset - first * header.segment
    assert got[skip:skip + length] == plain[offset:offset + length]
    assert start + count <= len(blob)


def test_each_object_has_its_own_data_key(ring: KeyRing) -> None:
    data = b"same plaintext" * 100
    a, b = (envelope.seal(data, "k1", ring.material("k1")) for _ in range(2))
    assert a[envelope.HEADER_SIZE:] != b[envelope.HEADER_SIZE:]
    assert a[48:88] != b[48:88]


# -- the tier on a file system -------------------------------------------------------


def test_files_on_disk_hold_no_plaintext(disk: EncryptedTier, tmp_path: Path) -> None:
    data = b"PATIENT^SECRET " * 1000
    stored = disk.put(KEY, data)
    raw = (tmp_path / "tier" / KEY).read_bytes()
    assert b"PATIENT^SECRET" not in raw
    assert raw.startswith(b"ILMENC") and len(raw) == envelope.sealed_size(len(data))
    # What callers see is the plaintext: its size and SHA-256 (what the catalog keeps).
    assert stored.size == len(data) and disk.stat(KEY) == stored
    assert disk.key_id(KEY) == "k1"


@pytest.mark.parametrize("where", ["magic", "size", "key id", "wrapped key", "ciphertext", "tag"])
def test_a_changed_byte_on_disk_is_an_integrity_failure(disk: EncryptedTier, tmp_path: Path, where: str) -> None:
    data = os.urandom(200_000)
    disk.put(KEY, data)
    path = tmp_path / "tier" / KEY
    blob = path.read_bytes()
    pos = {"magic": 2, "size": 12, "key id": 17, "wrapped key": 60, "ciphertext": envelope.HEADER_SIZE + 70_000,
           "tag": envelope.HEADER_SIZE + envelope.SEGMENT + 5}[where]
    os.chmod(path, 0o644)
    path.write_bytes(_flip(blob, pos))
    expected: Any = KeyUnavailable if where == "key id" else DecryptionFailed
    for read in (lambda: disk.get(KEY), lambda: disk.stat(KEY), lambda: disk.get_range(KEY, 65_000, 2_000)):
        with pytest.raises(expected) as err:
            read()
        assert "'safe'" in str(err.value) and KEY in str(err.value)
    assert issubclass(DecryptionFailed, IntegrityError)


class _CountingTier(FilesystemTier):
    """A plain tier that counts the bytes read through it (to check ranged reads stay ranged)."""

    read_bytes = 0

    def get(self, key: str) -> bytes:
        data = super().get(key)
        self.read_bytes += len(data)
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        data = super().get_range(key, offset, length)
        self.read_bytes += len(data)
        return data


def test_get_range_reads_and_checks_only_the_segments_it_needs(tmp_path: Path, ring: KeyRing) -> None:
    inner = _CountingTier("safe", tmp_path / "tier", fsync=False)
    tier = EncryptedTier(inner, ring)
    data = os.urandom(1_000_000)
    tier.put(KEY, data)
    cases = [(0, 1), (65_535, 2), (65_536, 65_536), (500_000, 1000), (999_999, 1), (0, 1_000_000), (77, 0)]
    for offset, length in cases:
        inner.read_bytes = 0
        assert tier.get_range(KEY, offset, length) == data[offset:offset + length]
        segments = 0 if length == 0 else (offset + length - 1) // envelope.SEGMENT - offset // envelope.SEGMENT + 1
        assert inner.read_bytes <= envelope.HEADER_SIZE + segments * (envelope.SEGMENT + 16)
    # A damaged segment outside the range does not stop the read of the range; a damaged one inside does.
    path = tmp_path / "tier" / KEY
    blob = path.read_bytes()
    path.write_bytes(_flip(blob, envelope.HEADER_SIZE + 10))  # in segment 0
    assert tier.get_range(KEY, 500_000, 1000) == data[500_000:501_000]
    with pytest.raises(DecryptionFailed, match="segment 0"):
        tier.get_range(KEY, 10, 10)


def test_ranged_reads_keep_working_across_a_rotation_elsewhere(tmp_path: Path, ring: KeyRing) -> None:
    """A server reading ranges of a pack remembers its header (one request per read
    instead of two); when another process rotates the pack to a new key and
    retires the old one, the next read notices and reads the new header."""
    inner = _CountingTier("safe", tmp_path / "tier", fsync=False)
    calls: list[tuple[int, int]] = []
    real = inner.get_range
    inner.get_range = lambda k, o, n: calls.append((o, n)) or real(k, o, n)  # type: ignore[method-assign]
    server = EncryptedTier(inner, ring)
    data = os.urandom(300_000)
    server.put(KEY, data)
    assert server.get_range(KEY, 1000, 100) == data[1000:1100]
    calls.clear()
    assert server.get_range(KEY, 200_000, 100) == data[200_000:200_100]
    assert len(calls) == 1  # the header was not read again
    other_ring = KeyRing(ring.path, env={})  # 'ilm keys rotate' + 'retire' in another process
    other = EncryptedTier(FilesystemTier("safe", tmp_path / "tier", fsync=False), other_ring)
    other.rewrap(KEY, other_ring.add("k2"))
    other_ring.retire("k1")
    assert server.get_range(KEY, 250_000, 100) == data[250_000:250_100]
    assert server.key_id(KEY) == "k2"


def test_a_plain_object_on_an_encrypted_tier_is_refused(disk: EncryptedTier, tmp_path: Path) -> None:
    """Bytes put there behind ilm's back (or before encryption was switched on) are not served as if decrypted."""
    disk.inner.put(KEY, b"DICM plain bytes" * 10)
    with pytest.raises(DecryptionFailed, match="not an encrypted object"):
        disk.get(KEY)


# -- the key ring ---------------------------------------------------------------------


def test_key_ring_file_is_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "ring.toml"
    ring = KeyRing(path, env={})
    with pytest.raises(ConfigError, match="ilm keys new"):
        ring.active()
    key = ring.add("k1")
    assert (path.stat().st_mode & 0o777) == 0o600
    assert "material" not in repr(key) and str(key.material) not in repr(key)  # never in a log line
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match=r"ring.toml: mode 0640 .*chmod 600"):
        KeyRing(path, env={})
    os.chmod(path, 0o600)
    text = path.read_text()
    path.write_text(text.replace('material = "', 'material = "!!', 1))
    with pytest.raises(ConfigError, match=r"keys.k1.material': not base64"):
        KeyRing(path, env={})


def test_keys_from_the_environment_and_a_retired_key(tmp_path: Path) -> None:
    import base64

    material = os.urandom(32)
    env = {"ILM_MASTER_KEY_ops1": base64.b64encode(material).decode(), "ILM_ACTIVE_KEY": "ops1"}
    ring = KeyRing(tmp_path / "none.toml", env=env)  # no file: keys from the environment alone
    assert ring.active().id == "ops1" and ring.material("ops1") == material
    with pytest.raises(ConfigError, match="ILM_MASTER_KEY_bad: a master key is 32 bytes"):
        KeyRing(tmp_path / "none.toml", env={"ILM_MASTER_KEY_bad": base64.b64encode(b"short").decode()})

    file_ring = KeyRing(tmp_path / "ring.toml", env={})
    file_ring.add("old")
    tier = EncryptedTier(FilesystemTier("safe", tmp_path / "t", fsync=False), file_ring)
    tier.put(KEY, b"x" * 10)
    file_ring.add("new")
    other = KeyRing(tmp_path / "ring.toml", env={})  # another process (ilm serve) holding the same file
    file_ring.retire("old")
    with pytest.raises(KeyUnavailable, match=r"tier 'safe': .*master key 'old' is retired"):
        EncryptedTier(tier.inner, other).get(KEY)  # it sees the retirement without a restart
    with pytest.raises(ConfigError, match="active key"):
        file_ring.retire("new")


def test_open_tier_needs_an_active_key_and_a_valid_setting(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home, "sqlite://", '[tiers.safe]\nkind = "filesystem"\npath = "tiers/safe"\nencryption = "envelope"\n')
    settings = load_settings(home=home, env={})
    with pytest.raises(ConfigError, match=r"keyring.toml: no active master key: run 'ilm keys new'"):
        open_tier("safe", settings)
    KeyRing(home / "keyring.toml").add("k1")
    assert isinstance(open_tier("safe", settings), EncryptedTier)
    assert not isinstance(open_tier("hot", settings), EncryptedTier)

    write_config(home, "sqlite://", '[tiers.safe]\nkind = "filesystem"\npath = "s"\nencryption = "rot13"\n')
    with pytest.raises(ConfigError, match=r"key 'tiers.safe.encryption'"):
        load_settings(home=home, env={})
    write_config(home, "sqlite://", '[tiers.c]\nkind = "s3"\nbucket = "abc"\nsse = "AES256"\nsse_kms_key_id = "k"\n')
    with pytest.raises(ConfigError, match=r"key 'tiers.c'.*sse_kms_key_id needs sse = \"aws:kms\""):
        load_settings(home=home, env={})


# -- S3 ---------------------------------------------------------------------------------


def _s3(sw: SeaweedFS, bucket: str, **kw: Any) -> S3Tier:
    return S3Tier("cloud", bucket, endpoint_url=sw.endpoint_url, access_key_id=sw.access_key,
                  secret_access_key=sw.secret_key, **kw)


@pytest.mark.s3
def test_a_changed_byte_on_s3_is_an_integrity_failure(s3_server: SeaweedFS, ring: KeyRing) -> None:
    bucket = s3_server.make_bucket()
    tier = EncryptedTier(_s3(s3_server, bucket), ring)
    data = os.urandom(150_000)
    tier.put(KEY, data)
    raw = s3_server.client().get_object(Bucket=bucket, Key=KEY)["Body"].read()
    assert data[:1000] not in raw
    assert tier.get_range(KEY, 70_000, 5_000) == data[70_000:75_000]
    # Someone with write access to the bucket changes one byte of the ciphertext.
    s3_server.client().put_object(Bucket=bucket, Key=KEY, Body=_flip(raw, envelope.HEADER_SIZE + 70_000))
    for read in (lambda: tier.get(KEY), lambda: tier.stat(KEY), lambda: tier.get_range(KEY, 70_000, 5_000)):
        with pytest.raises(DecryptionFailed, match="integrity failure: segment 1 fails authentication"):
            read()


@pytest.mark.s3
def test_verify_after_put_on_s3_uses_the_server_checksum(s3_server: SeaweedFS, ring: KeyRing,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The stat a move makes right after its put is answered from the SHA-256 the
    server recorded for the ciphertext just written: no download. A later stat,
    or one after the object changed, decrypts the whole object."""
    bucket = s3_server.make_bucket()
    tier = EncryptedTier(_s3(s3_server, bucket), ring)
    data = os.urandom(100_000)
    stored = tier.put(KEY, data)
    real_get = tier.inner.get
    monkeypatch.setattr(tier.inner, "get", lambda key: pytest.fail("stat downloaded the object"))
    assert tier.stat(KEY) == stored
    monkeypatch.setattr(tier.inner, "get", real_get)
    assert tier.stat(KEY) == stored  # decrypted this time
    tier.delete(KEY)
    tier.put(KEY, data)
    raw = s3_server.client().get_object(Bucket=bucket, Key=KEY)["Body"].read()
    s3_server.client().put_object(Bucket=bucket, Key=KEY, Body=_flip(raw, 5000))
    with pytest.raises(DecryptionFailed):
        tier.stat(KEY)


@pytest.mark.s3
def test_s3_server_side_encryption_aes256_on_seaweedfs(s3_server: SeaweedFS) -> None:
    """SeaweedFS implements SSE-S3: the object is stored encrypted and HEAD says so."""
    bucket = s3_server.make_bucket()
    tier = _s3(s3_server, bucket, sse="AES256")
    tier.put(KEY, b"sse bytes" * 100)
    head = s3_server.client().head_object(Bucket=bucket, Key=KEY)
    assert head["ServerSideEncryption"] == "AES256"
    assert tier.get(KEY) == b"sse bytes" * 100
    plain = _s3(s3_server, bucket)
    plain.put("1.2/3.dcm", b"x")
    assert "ServerSideEncryption" not in s3_server.client().head_object(Bucket=bucket, Key="1.2/3.dcm")


@pytest.mark.s3
def test_s3_kms_headers_are_sent(s3_server: SeaweedFS) -> None:
    """SSE-KMS needs a KMS, which SeaweedFS here has not (it answers InternalError):
    the request headers are checked on the wire with botocore's event hooks, and
    the answer AWS would give is stood in for (a mock of AWS itself, nothing else)."""
    from botocore.awsrequest import AWSResponse

    bucket = s3_server.make_bucket()
    tier = _s3(s3_server, bucket, sse="aws:kms", sse_kms_key_id="arn:aws:kms:eu-west-1:111122223333:key/ilm")
    sent: list[dict[str, str]] = []

    class _Raw:
        def stream(self, **_kw: Any) -> Iterator[bytes]:
            yield b""

    def capture(request: Any, **_kw: Any) -> AWSResponse:
        sent.append({k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})
        return AWSResponse(request.url, 200, {"ETag": '"x"', "x-amz-server-side-encryption": "aws:kms"}, _Raw())

    tier._s3().meta.events.register("before-send.s3.PutObject", capture)
    tier.put(KEY, b"kms bytes")
    assert sent and sent[0]["x-amz-server-side-encryption"] == "aws:kms"
    assert sent[0]["x-amz-server-side-encryption-aws-kms-key-id"] == "arn:aws:kms:eu-west-1:111122223333:key/ilm"
    assert "x-amz-checksum-sha256" in sent[0] and sent[0]["If-None-Match"] == "*"


def test_ilm_serve_refuses_to_start_without_a_usable_master_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    home = tmp_path / "home"
    write_config(home, f"sqlite:///{tmp_path / 'c.sqlite'}",
                 '[tiers.safe]\nkind = "filesystem"\npath = "tiers/safe"\nencryption = "envelope"\n')
    ilm = Path(sys.executable).parent / "ilm"
    r = subprocess.run([str(ilm), "serve", "--home", str(home), "--dicom-port", "0", "--http-port", "0"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "ILM_HOME": str(home)})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no active master key" in r.stderr and "ilm keys new" in r.stderr
    KeyRing(home / "keyring.toml").add("k1")
    os.chmod(home / "keyring.toml", 0o644)
    r = subprocess.run([str(ilm), "serve", "--home", str(home), "--dicom-port", "0", "--http-port", "0"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "ILM_HOME": str(home)})
    assert r.returncode == 2 and "chmod 600" in r.stderr
