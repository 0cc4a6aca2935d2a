"""One contract for every storage tier, run against each backend.

Backends: a filesystem tier in tmp_path, and S3 tiers on a real SeaweedFS
server (a fresh bucket each, with and without a key prefix). Each backend also
gives a raw view of everything it holds (temp files, every object in the
bucket), so "nothing left behind" is checked underneath the tier, not
through it. S3-only behaviour (server-side checksum refusal, dead endpoint,
credentials, bucket creation) is tested at the end.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import botocore.exceptions as bx
import pytest

from support.seaweed import SeaweedFS
from support.servers import free_port

from ilm.config import S3TierSettings, load_settings
from ilm.errors import IntegrityError, ObjectNotFound, StorageError, TierUnavailable
from ilm.models import StoredObject
from ilm.storage import FilesystemTier, ObjectExists, Tier, open_tier
from ilm.storage import s3 as s3mod
from ilm.storage.s3 import S3Tier
from ilm.keyring import KeyRing
from ilm.storage.encrypted import EncryptedTier

KEY = "1.2.840.1/1.2.840.2/1.2.840.3.dcm"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Backend:
    kind: str
    tier: Tier
    raw: Callable[[], list[str]]  # every name the backend stores, seen from underneath


def _s3_tier(sw: SeaweedFS, bucket: str, name: str = "cloud", **kw: object) -> S3Tier:
    return S3Tier(
        name,
        bucket,
        endpoint_url=sw.endpoint_url,
        access_key_id=sw.access_key,
        secret_access_key=sw.secret_key,
        **kw,  # type: ignore[arg-type]
    )


def _bucket_keys(sw: SeaweedFS, bucket: str) -> list[str]:
    out: list[str] = []
    for page in sw.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.s3), pytest.param("s3-prefixed", marks=pytest.mark.s3),
                        "filesystem-encrypted", pytest.param("s3-encrypted", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = str(request.param)
    if kind.endswith("-encrypted"):  # envelope encryption over the plain backend (ilm.storage.encrypted)
        ring = KeyRing(tmp_path / "keyring.toml", env={})
        ring.add("k1")
        plain = _plain_backend(kind.removesuffix("-encrypted"), request, tmp_path)
        yield Backend(kind, EncryptedTier(plain.tier, ring), plain.raw)  # type: ignore[arg-type]
        return
    yield _plain_backend(kind, request, tmp_path)


def _plain_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if kind == "filesystem":
        root = tmp_path / "tier"

        def files() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []

        return Backend("filesystem", FilesystemTier("disk", root, fsync=False), files)
    sw: SeaweedFS = request.getfixturevalue("s3_server")
    bucket = sw.make_bucket()
    prefix = "archive/ilm/" if kind == "s3-prefixed" else ""
    return Backend(kind, _s3_tier(sw, bucket, prefix=prefix), lambda: _bucket_keys(sw, bucket))


# -- the contract --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, 3 * 1024 * 1024 + 7])
def test_put_get_round_trip(backend: Backend, size: int) -> None:
    data = os.urandom(size)
    t = backend.tier
    stored = t.put(KEY, data, sha(data))
    assert stored == StoredObject(key=KEY, size=size, sha256=sha(data))
    assert t.get(KEY) == data
    assert t.exists(KEY)
    assert t.stat(KEY) == stored
    assert len(backend.raw()) == 1


def test_put_never_overwrites(backend: Backend) -> None:
    t = backend.tier
    first, other = b"first version", b"second version"
    t.put(KEY, first, sha(first))
    with pytest.raises(ObjectExists, match=KEY):
        t.put(KEY, other, sha(other))
    with pytest.raises(ObjectExists):  # even the same bytes: a put is a create, never a replace
        t.put(KEY, first, sha(first))
    assert t.get(KEY) == first
    assert t.stat(KEY).sha256 == sha(first)
    assert len(backend.raw()) == 1


def test_put_after_the_last_object_of_a_folder_was_deleted(backend: Backend) -> None:
    """A file-system tier removes emptied series and study folders and makes a folder only when a
    put finds it missing (not checked on every put): a put into a removed or new folder works."""
    t = backend.tier
    first, second, deep = b"first", b"second", b"deep"
    t.put("1.2.1/1.2.1.1/1.2.1.1.1.dcm", first, sha(first))
    t.delete("1.2.1/1.2.1.1/1.2.1.1.1.dcm")
    t.put("1.2.1/1.2.1.1/1.2.1.1.2.dcm", second, sha(second))
    t.put("1.2.2/1.2.2.9/1.2.2.9.1.dcm", deep, sha(deep))
    assert t.get("1.2.1/1.2.1.1/1.2.1.1.2.dcm") == second and t.get("1.2.2/1.2.2.9/1.2.2.9.1.dcm") == deep
    assert not t.exists("1.2.1/1.2.1.1/1.2.1.1.1.dcm")
    assert len(backend.raw()) == 2


def test_concurrent_puts_of_one_key_store_exactly_one(backend: Backend) -> None:
    t = backend.tier
    won: list[bytes] = []
    refused: list[BaseException] = []
    start = threading.Barrier(5)

    def put(i: int) -> None:
        data = f"writer {i}".encode() * 1000
        start.wait()
        try:
            t.put(KEY, data, sha(data))
            won.append(data)
        except BaseException as exc:  # noqa: BLE001 - collected and checked below
            refused.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(won) == 1, refused
    assert len(refused) == 4 and all(isinstance(e, ObjectExists) for e in refused), refused
    assert t.get(KEY) == won[0]


def test_put_with_wrong_sha256_is_refused_and_leaves_nothing(backend: Backend) -> None:
    t = backend.tier
    data = b"the real bytes"
    with pytest.raises(IntegrityError, match="SHA-256"):
        t.put(KEY, data, sha(b"other bytes"))
    assert not t.exists(KEY)
    assert backend.raw() == []
    assert list(t.keys()) == []


def test_get_range_reads_part_of_an_object(backend: Backend) -> None:
    t = backend.tier
    data = os.urandom(300_000)
    t.put(KEY, data, sha(data))
    for offset, length in [(0, 1), (0, 300_000), (123_457, 1000), (299_999, 1), (5, 0), (300_000, 0)]:
        assert t.get_range(KEY, offset, length) == data[offset:offset + length]


def test_get_range_outside_the_object_is_an_error(backend: Backend) -> None:
    t = backend.tier
    t.put(KEY, b"0123456789", sha(b"0123456789"))
    for offset, length in [(5, 6), (10, 1), (11, 0), (-1, 2), (0, -1)]:
        with pytest.raises(StorageError) as err:
            t.get_range(KEY, offset, length)
        assert not isinstance(err.value, ObjectNotFound)
    with pytest.raises(ObjectNotFound, match="1.2.3.dcm"):
        t.get_range("1.2.3.dcm", 0, 1)
    with pytest.raises(StorageError, match="refused object key"):
        t.get_range("../x", 0, 1)


def test_missing_key(backend: Backend) -> None:
    t = backend.tier
    with pytest.raises(ObjectNotFound, match=KEY):
        t.get(KEY)
    with pytest.raises(ObjectNotFound, match=KEY):
        t.stat(KEY)
    assert not t.exists(KEY)


def test_delete_is_idempotent(backend: Backend) -> None:
    t = backend.tier
    t.delete(KEY)  # never existed
    t.put(KEY, b"x", sha(b"x"))
    t.delete(KEY)
    assert not t.exists(KEY)
    t.delete(KEY)
    assert backend.raw() == []
    t.put(KEY, b"y", sha(b"y"))  # the key is free again
    assert t.get(KEY) == b"y"


def test_keys_lists_exactly_what_was_put(backend: Backend) -> None:
    t = backend.tier
    keys = ["1.2/3.4/5.dcm", "1.2/3.4/6.dcm", "1.2/3.5/7.dcm", "1.23/1/1.dcm", "9/9/9.pack", "9/9/9.idx"]
    for k in keys:
        t.put(k, k.encode(), sha(k.encode()))
    assert sorted(t.keys()) == sorted(keys)
    # A prefix is a folder: "1.2" is not a prefix of "1.23".
    assert sorted(t.keys("1.2")) == keys[:3]
    assert sorted(t.keys("1.2/")) == keys[:3]
    assert sorted(t.keys("1.2/3.4")) == keys[:2]
    assert list(t.keys("7")) == []
    t.delete(keys[0])
    assert sorted(t.keys()) == sorted(keys[1:])


HOSTILE = [
    "../x",
    "1.2/../../etc",
    "a\x00b",
    "1.2\x00/3.dcm",
    "/etc/passwd",
    "/1.2/3.dcm",
    "1.2//3.dcm",
    "1.2/./3.dcm",
    "..",
    ".",
    "",
    "1.2/3.dcm/",
    "..\\..\\x",
    "1.2/3.dcm?x=1",
    "1" * 300,
]


@pytest.mark.parametrize("key", HOSTILE, ids=repr)
def test_hostile_keys_are_refused(backend: Backend, key: str) -> None:
    t = backend.tier
    with pytest.raises(StorageError, match="refused object key"):
        t.put(key, b"evil", sha(b"evil"))
    for op in (t.get, t.stat, t.exists, t.delete, lambda k: t.get_range(k, 0, 1)):
        with pytest.raises(StorageError, match="refused object key"):
            op(key)
    assert backend.raw() == []


@pytest.mark.parametrize("prefix", ["../", "..", "/etc", "1.2/../..", "a\x00b"], ids=repr)
def test_hostile_keys_prefix_is_refused(backend: Backend, prefix: str) -> None:
    with pytest.raises(StorageError, match="refused object key"):
        list(backend.tier.keys(prefix))


# -- S3 only -------------------------------------------------------------------

needs_s3 = pytest.mark.s3


@pytest.fixture
def bucket(s3_server: SeaweedFS) -> str:
    return s3_server.make_bucket()


@needs_s3
def test_s3_put_is_conditional_and_checksummed_on_the_wire(s3_server: SeaweedFS, bucket: str) -> None:
    """What the server holds carries the SHA-256 we computed (no read-back needed)."""
    t = _s3_tier(s3_server, bucket)
    data = b"dicom bytes" * 100
    t.put(KEY, data, sha(data))
    head = s3_server.client().head_object(Bucket=bucket, Key=KEY, ChecksumMode="ENABLED")
    assert base64.b64decode(head["ChecksumSHA256"]).hex() == sha(data)
    assert head["ContentType"] == "application/dicom"


@needs_s3
def test_s3_corrupted_upload_is_refused_by_the_server(
    s3_server: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that change between our hash and the server: the server's own
    SHA-256 check refuses them (BadDigest) and nothing is stored."""
    t = _s3_tier(s3_server, bucket)
    data = b"what the server receives"
    claimed = sha(b"what we hashed before the bytes were damaged")
    monkeypatch.setattr(s3mod, "sha256_hex", lambda _d: claimed)  # get past our own pre-check
    with pytest.raises(IntegrityError, match=rf"tier 'cloud': put {KEY}: .*corrupted"):
        t.put(KEY, data, claimed)
    assert _bucket_keys(s3_server, bucket) == []


@needs_s3
def test_s3_stat_uses_the_server_checksum_without_reading(
    s3_server: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = _s3_tier(s3_server, bucket)
    data = os.urandom(5000)
    t.put(KEY, data, sha(data))

    def no_get(key: str) -> bytes:
        raise AssertionError("stat read the object although the server has its SHA-256")

    monkeypatch.setattr(t, "get", no_get)
    assert t.stat(KEY) == StoredObject(KEY, 5000, sha(data))


@needs_s3
def test_s3_stat_hashes_objects_written_without_sha256(s3_server: SeaweedFS, bucket: str) -> None:
    """An object put by another tool (boto3 adds only a CRC32) is read and hashed."""
    data = os.urandom(2000)
    s3_server.client().put_object(Bucket=bucket, Key=KEY, Body=data)
    t = _s3_tier(s3_server, bucket)
    assert t.stat(KEY) == StoredObject(KEY, 2000, sha(data))


@needs_s3
def test_s3_keys_paginates(s3_server: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3mod, "PAGE_SIZE", 3)
    t = _s3_tier(s3_server, bucket, prefix="p")
    keys = [f"1.2/3/{i}.dcm" for i in range(10)]
    for k in keys:
        t.put(k, k.encode(), sha(k.encode()))
    s3_server.client().put_object(Bucket=bucket, Key="p/README.txt", Body=b"not ours")
    s3_server.client().put_object(Bucket=bucket, Key="elsewhere/1/2/3.dcm", Body=b"outside the prefix")
    assert sorted(t.keys()) == sorted(keys)
    assert all(k.startswith("p/") for k in _bucket_keys(s3_server, bucket) if k != "elsewhere/1/2/3.dcm")


@needs_s3
def test_s3_dead_endpoint_is_unavailable_quickly() -> None:
    port = free_port()  # nobody listens here
    t = S3Tier("cloud", "some-bucket", endpoint_url=f"http://127.0.0.1:{port}",
               access_key_id="k", secret_access_key="s", connect_timeout=1, max_attempts=2)
    assert t._client is None  # constructing did not contact anything
    ops: list[Callable[[], object]] = [
        lambda: t.put(KEY, b"x", sha(b"x")),
        lambda: t.get(KEY),
        lambda: t.stat(KEY),
        lambda: t.exists(KEY),
        lambda: t.delete(KEY),
        lambda: list(t.keys()),
        lambda: t.get_range(KEY, 0, 1),
    ]
    for op in ops:
        began = time.monotonic()
        with pytest.raises(TierUnavailable) as err:
            op()
        assert time.monotonic() - began < 5
        msg = str(err.value)
        assert f"tier 'cloud': S3 endpoint http://127.0.0.1:{port} unreachable" in msg
        assert err.value.__cause__ is None and err.value.__suppress_context__


@needs_s3
def test_s3_missing_bucket(s3_server: SeaweedFS) -> None:
    name = s3_server.new_bucket_name()
    t = _s3_tier(s3_server, name)
    with pytest.raises(TierUnavailable, match=rf"tier 'cloud': put {KEY}: bucket '{name}' does not exist"):
        t.put(KEY, b"x", sha(b"x"))
    made = _s3_tier(s3_server, name, create_bucket=True)
    made.put(KEY, b"x", sha(b"x"))
    assert _bucket_keys(s3_server, name) == [KEY]
    assert _s3_tier(s3_server, name, create_bucket=True).get(KEY) == b"x"  # existing bucket: fine


@needs_s3
def test_s3_wrong_credentials(s3_server: SeaweedFS, bucket: str) -> None:
    t = S3Tier("cloud", bucket, endpoint_url=s3_server.endpoint_url,
               access_key_id=s3_server.access_key, secret_access_key="wrong-secret")
    with pytest.raises(StorageError, match="tier 'cloud': put .*access denied.*credentials") as err:
        t.put(KEY, b"x", sha(b"x"))
    assert not isinstance(err.value, TierUnavailable)
    assert _bucket_keys(s3_server, bucket) == []


@needs_s3
def test_s3_tier_from_settings(tmp_path: Path, s3_server: SeaweedFS, bucket: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "ilm.toml").write_text(
        f"""
[tiers.cloud]
kind = "s3"
bucket = "{bucket}"
prefix = "ilm/"
endpoint_url = "{s3_server.endpoint_url}"
access_key_id = "{s3_server.access_key}"
secret_access_key = "{s3_server.secret_key}"
connect_timeout_seconds = 2
max_attempts = 1
""",
        encoding="utf-8",
    )
    settings = load_settings(home=home, env={})
    assert isinstance(settings.tiers["cloud"], S3TierSettings)
    t = open_tier("cloud", settings)
    assert isinstance(t, S3Tier) and isinstance(t, Tier)
    assert (t.name, t.bucket, t.prefix, t.max_attempts, t.connect_timeout) == ("cloud", bucket, "ilm/", 1, 2.0)
    t.put(KEY, b"x", sha(b"x"))
    assert _bucket_keys(s3_server, bucket) == [f"ilm/{KEY}"]


@needs_s3
def test_s3_hung_server_is_unavailable_after_the_read_timeout() -> None:
    """A server that accepts connections but never answers (stopped, overloaded)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        t = S3Tier("cloud", "some-bucket", endpoint_url=f"http://127.0.0.1:{port}",
                   access_key_id="k", secret_access_key="s", read_timeout=0.5, max_attempts=1)
        began = time.monotonic()
        with pytest.raises(TierUnavailable, match=f"tier 'cloud': S3 endpoint http://127.0.0.1:{port} unreachable"):
            t.stat(KEY)
        assert time.monotonic() - began < 5


@needs_s3
@pytest.mark.parametrize(
    "raised, expected",
    [
        (lambda: bx.FlexibleChecksumError(error_msg="sha256 mismatch"), IntegrityError),
        (lambda: bx.ResponseStreamingError(error="connection reset"), TierUnavailable),
        (lambda: bx.NoCredentialsError(), StorageError),
        (lambda: ConnectionResetError(104, "reset"), TierUnavailable),
    ],
    ids=["checksum", "stream", "credentials", "reset"],
)
def test_s3_get_translates_client_errors(
    s3_server: SeaweedFS, bucket: str, raised: Callable[[], BaseException], expected: type[StorageError]
) -> None:
    """Failures botocore reports while reading a body never escape as botocore errors."""
    t = _s3_tier(s3_server, bucket)

    def failing_get_object(**_kw: object) -> object:
        raise raised()

    t._s3().get_object = failing_get_object
    with pytest.raises(expected, match=f"tier 'cloud'.*{KEY}") as err:
        t.get(KEY)
    assert type(err.value).__module__ == "ilm.errors" or isinstance(err.value, ObjectExists)
