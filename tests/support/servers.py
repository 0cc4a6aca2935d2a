"""Real servers for tests, started on 127.0.0.1 with fresh data folders and
stopped by the process id we hold. Never by name, never another address."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process we started, then SIGKILL if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done == pid:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


@dataclass
class Postgres:
    port: int
    datadir: Path
    pid: int

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://ilm@127.0.0.1:{self.port}/{db}"


def postgres_available() -> bool:
    return (PG_BIN / "pg_ctl").exists()


def _as_postgres(cmd: str) -> None:
    if os.geteuid() == 0:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", cmd], check=True, capture_output=True)
    else:
        subprocess.run(["/bin/sh", "-c", cmd], check=True, capture_output=True)


def start_postgres() -> Postgres:
    """initdb + pg_ctl start as the unprivileged postgres user, on a free loopback port."""
    base = Path(tempfile.mkdtemp(prefix="ilm-pg-"))
    datadir = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    port = free_port()
    _as_postgres(f"{PG_BIN}/initdb -D {datadir} -A trust -U ilm >/dev/null")
    _as_postgres(
        f"{PG_BIN}/pg_ctl -D {datadir} -w -o \"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 "
        f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200\" -l {base}/log start >/dev/null"
    )
    pid = int((datadir / "postmaster.pid").read_text().splitlines()[0])
    wait_port(port)
    return Postgres(port=port, datadir=datadir, pid=pid)


def stop_postgres(pg: Postgres) -> None:
    try:
        _as_postgres(f"{PG_BIN}/pg_ctl -D {pg.datadir} -m fast -w stop >/dev/null")
    except subprocess.CalledProcessError:
        try:
            os.kill(pg.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    shutil.rmtree(pg.datadir.parent, ignore_errors=True)
