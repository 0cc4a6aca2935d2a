"""Start and stop the systems under test, run timed commands, describe the machine.

Every server runs on 127.0.0.1 with a fresh temporary folder under
``bench/work/tmp/``, is held by the pid we started and is stopped by that pid
(SIGTERM, then SIGKILL), never by name. The helpers of the test suite
(``tests/support/servers.py``: free_port, wait_port, stop_pid, PostgreSQL)
are reused, not copied.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
WORK = BENCH / "work"
RESULTS = BENCH / "results"
VENV_BIN = Path(sys.executable).parent
ORTHANC = Path("/usr/sbin/Orthanc")
GNU_TIME = Path("/usr/bin/time")

if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from support import servers  # noqa: E402  (tests/support/servers.py)
from support.servers import free_port, stop_pid, wait_port  # noqa: E402

__all__ = [
    "REPO", "WORK", "RESULTS", "VENV_BIN", "free_port", "wait_port", "stop_pid",
    "scratch", "settle", "Server", "start_server", "stop_server", "run_timed", "Timed",
    "start_orthanc", "orthanc_count", "start_storescp", "count_files",
    "ilm_bin", "make_ilm_home", "start_ilm_serve", "ilm_instance_count", "ilm_has_command",
    "start_postgres", "stop_postgres", "machine_info", "loadavg", "BenchError",
]


class BenchError(RuntimeError):
    """A step of a benchmark failed; the message says which and why."""


# -- scratch folders and process bookkeeping ------------------------------------

_live: dict[int, "Server"] = {}


def _cleanup() -> None:
    for srv in list(_live.values()):
        stop_server(srv)


atexit.register(_cleanup)


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A fresh folder on the same file system as the data set, removed afterwards."""
    (WORK / "tmp").mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=WORK / "tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_server(name: str, cmd: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, ports: dict[str, int] | None = None,
                 folder: Path | None = None, timeout: float = 60.0) -> Server:
    """Start ``cmd`` in its own session with output to ``log``; wait until every port listens."""
    fh = open(log, "wb")
    try:
        proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    finally:
        fh.close()
    srv = Server(name, proc, log, dict(ports or {}), folder)
    _live[proc.pid] = srv
    try:
        for port in srv.ports.values():
            wait_port(port, timeout=timeout, proc=proc)  # type: ignore[arg-type]
    except (RuntimeError, TimeoutError) as exc:
        stop_server(srv)
        raise BenchError(f"{name} did not start: {exc}\n{srv.log_tail()}") from None
    return srv


def stop_server(srv: Server) -> None:
    if srv.pid in _live:
        del _live[srv.pid]
        stop_pid(srv.pid)
        srv.proc.returncode = srv.proc.returncode if srv.proc.returncode is not None else -15


@dataclass
class Timed:
    rc: int | None  # None: killed at the timeout
    seconds: float
    maxrss_kb: int  # the largest single process of the command (itself or a child it waited for)
    output: str
    tree_rss_kb: int = 0  # the largest sum over all its processes at once (sampled), 0 unless asked for
    cpu_s: float = 0.0  # user + system CPU time of the command and the children it waited for

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.output.splitlines()[-n:])


_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def session_rss_kb(sid: int) -> int:
    """Resident memory of every process in session ``sid`` (a command we started in its own session)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid pgrp session ... rss is field 24 overall -> index 21 here
        if int(fields[3]) == sid:
            total += int(fields[21]) * _PAGE_KB
    return total


def run_timed(cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
              cwd: Path | None = None, sample_tree: bool = False) -> Timed:
    """Run ``cmd`` to completion: wall time, exit code and the peak RSS of that very command.

    The peak RSS is measured by GNU time (``/usr/bin/time -f %M``), which forks
    the command from its own small process: ru_maxrss of a child forked from
    this (large) Python process would count the pages it shared with us before
    exec. Without GNU time it falls back to wait4() on the child. At the
    timeout the command's whole session is killed (it is ours: we started it).
    """
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile(prefix="bench-rss-") as rssf:
        full = list(cmd)
        if GNU_TIME.exists():
            full = [str(GNU_TIME), "-f", "%M", "-o", rssf.name] + full
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
        rc: int | None = None
        rss = 0
        cpu = 0.0
        tree = 0
        next_sample = t0
        deadline = t0 + timeout
        while True:
            if sample_tree and time.perf_counter() >= next_sample:
                tree = max(tree, session_rss_kb(proc.pid))
                next_sample = time.perf_counter() + 0.1
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                seconds = time.perf_counter() - t0
                rc = os.waitstatus_to_exitcode(status)
                rss = int(usage.ru_maxrss)
                cpu = usage.ru_utime + usage.ru_stime
                break
            if time.perf_counter() > deadline:
                seconds = time.perf_counter() - t0
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(proc.pid, 0)
                break
            time.sleep(0.005)
        proc.returncode = rc if rc is not None else -9
        if GNU_TIME.exists():
            # GNU time exits with the command's status and writes "Command exited with non-zero status N" first.
            lines = [ln for ln in Path(rssf.name).read_text().splitlines() if ln.strip()]
            rss = int(lines[-1]) if lines and lines[-1].strip().isdigit() else 0
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return Timed(rc, seconds, rss, text, tree, cpu)


def disk_flush_cost(size: int, n: int = 150) -> dict[str, float]:
    """Mean milliseconds per file of ``size`` bytes written to the bench's file system: plain write,
    write + fsync, write + fsync + fsync of the folder (what a durable atomic put costs at least).
    The three kinds alternate file by file, so a burst of load elsewhere hits them alike."""
    import uuid

    data = os.urandom(size)
    modes = ("write", "fsync", "fsync_dir")
    spent = dict.fromkeys(modes, 0.0)
    with scratch("disk") as folder:
        settle()
        for _ in range(n):
            for mode in modes:
                t0 = time.perf_counter()
                fd = os.open(folder / uuid.uuid4().hex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, data)
                    if mode != "write":
                        os.fsync(fd)
                finally:
                    os.close(fd)
                if mode == "fsync_dir":
                    dfd = os.open(folder, os.O_RDONLY)
                    try:
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)
                spent[mode] += time.perf_counter() - t0
    return {f"{m}_ms": round(spent[m] / n * 1000, 2) for m in modes}


_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def settle() -> None:
    """Flush dirty pages left by the previous step, so it does not slow down the next one."""
    os.sync()
    time.sleep(0.5)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- Orthanc --------------------------------------------------------------------

def start_orthanc(folder: Path) -> Server:
    """Orthanc from the Debian package with the config of DESIGN.md, in ``folder``."""
    dicom, http = free_port(), free_port()
    storage = folder / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "DicomAet": "ORTHANC", "DicomPort": dicom, "HttpPort": http, "HttpBindAddress": "127.0.0.1",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
        "Plugins": [],
    }
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    srv = start_server("Orthanc", [str(ORTHANC), str(cfg)], folder / "orthanc.log",
                       ports={"dicom": dicom, "http": http}, folder=folder)
    deadline = time.monotonic() + 30
    while True:  # the HTTP port opens before the index is ready
        try:
            _get_json(http, "/system")
            return srv
        except OSError:
            if time.monotonic() > deadline:
                stop_server(srv)
                raise BenchError(f"Orthanc REST API not ready\n{srv.log_tail()}") from None
            time.sleep(0.2)


def _get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


def orthanc_count(srv: Server) -> int:
    return int(_get_json(srv.ports["http"], "/statistics")["CountInstances"])


def orthanc_version() -> str:
    try:
        out = subprocess.run([str(ORTHANC), "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.split()[1] if out else "?"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


# -- pynetdicom storescp (the floor for a Python receiver) ----------------------

def start_storescp(folder: Path) -> Server:
    """pynetdicom's bare storescp app writing every received instance to ``folder/out``."""
    port = free_port()
    out = folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pynetdicom", "storescp", str(port), "-od", str(out),
           "--max-pdu", "0", "--bind-address", "127.0.0.1", "--ae-title", "STORESCP"]
    return start_server("pynetdicom storescp", cmd, folder / "storescp.log", ports={"dicom": port}, folder=out)


# -- ilm ------------------------------------------------------------------------

def ilm_bin() -> str:
    exe = VENV_BIN / "ilm"
    return str(exe) if exe.exists() else "ilm"


def have_py_spy() -> bool:
    return (VENV_BIN / "py-spy").exists()


def ilm_command_problem(name: str) -> str | None:
    """None when this checkout's CLI has a working command ``name`` (serve, synth ...), else why not.

    Tried twice, a few seconds apart: in a working tree others edit, a module
    may be half-written for a moment."""
    why = ""
    for attempt in range(2):
        r = subprocess.run([ilm_bin(), name, "--help"], capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            return None
        why = "\n".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        time.sleep(5)
    return f"`ilm {name} --help` failed: {why}"


def ilm_has_command(name: str) -> bool:
    return ilm_command_problem(name) is None


def ilm_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ILM_")}
    env["ILM_HOME"] = str(home)
    env.update(extra)
    return env


def make_ilm_home(home: Path, *, fsync: bool = True, catalog_url: str = "") -> Path:
    """A fresh ILM_HOME from ``ilm init`` (the commented default), with the hot tier's fsync set (and,
    with fsync off, the SQLite catalog's commits not flushed either: sqlite_synchronous = "normal")."""
    r = subprocess.run([ilm_bin(), "init", "--home", str(home)], capture_output=True, text=True,
                       env=ilm_env(home), timeout=60)
    if r.returncode != 0:
        raise BenchError(f"ilm init failed: {r.stderr or r.stdout}")
    cfg = home / "ilm.toml"
    text = cfg.read_text()
    # Set fsync in the hot tier's section (the ingest tier), adding the key if absent.
    m = re.search(r"^\[tiers\.hot\]\s*$(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    if not m:
        raise BenchError(f"{cfg}: no [tiers.hot] section to configure")
    section = m.group(1)
    value = "true" if fsync else "false"
    if re.search(r"^fsync\s*=", section, flags=re.M):
        section = re.sub(r"^fsync\s*=\s*\w+", f"fsync = {value}", section, flags=re.M)
    else:
        section = f"\nfsync = {value}" + section
    text = text[: m.start(1)] + section + text[m.end(1):]
    if catalog_url:
        text = re.sub(r'^url\s*=\s*".*"', f'url = "{catalog_url}"', text, count=1, flags=re.M)
    if not fsync:  # no flushes at all, like storescp: the SQLite catalog's commits are not flushed either
        text = re.sub(r'^sqlite_synchronous\s*=\s*".*"', 'sqlite_synchronous = "normal"', text, count=1, flags=re.M)
    cfg.write_text(text)
    from ilm.config import load_settings  # the same validation ilm itself applies

    settings = load_settings(home=home, env={})
    hot = settings.tiers[settings.ingest_tier]
    if settings.catalog.sqlite_synchronous != ("full" if fsync else "normal"):
        raise BenchError(f"{cfg}: catalog.sqlite_synchronous is {settings.catalog.sqlite_synchronous!r}")
    if getattr(hot, "fsync", None) is not fsync:
        raise BenchError(f"{cfg}: ingest tier {settings.ingest_tier!r} fsync is {getattr(hot, 'fsync', None)}, wanted {fsync}")
    return home


def start_ilm_serve(home: Path, *, ae_title: str = "ILM") -> Server:
    """``ilm serve`` (DICOM C-STORE SCP and DICOMweb) on free loopback ports."""
    dicom, http = free_port(), free_port()
    env = ilm_env(home, ILM_DICOM_PORT=str(dicom), ILM_HTTP_PORT=str(http), ILM_DICOM_HOST="127.0.0.1",
                  ILM_HTTP_HOST="127.0.0.1", ILM_DICOM_AE_TITLE=ae_title)
    return start_server("ilm serve", [ilm_bin(), "serve", "--home", str(home)], home / "serve.log", env=env,
                        ports={"dicom": dicom, "http": http}, folder=home)


def ilm_token(home: Path, role: str) -> str:
    """An API token of ``role`` for ``home`` (``ilm tokens create``): the HTTP benchmarks run with
    auth on, as ``ilm serve`` does by default, so each figure includes the token check."""
    name = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    r = subprocess.run([ilm_bin(), "tokens", "create", "--name", name, "--role", role, "--home", str(home)],
                       env=ilm_env(home), capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise BenchError(f"ilm tokens create failed: {r.stderr.strip()}")
    return r.stdout.strip()


def ilm_instance_count(home: Path) -> int:
    """Instances ``home`` really holds: the smaller of its catalog's instance rows and the objects on its ingest tier.

    Catalog rows are counted with SQL (not through ilm), objects as files in
    the ingest tier's folder (temporary files of unfinished writes left out).
    """
    import sqlalchemy as sa

    from ilm.config import load_settings

    settings = load_settings(home=home, env={})
    eng = sa.create_engine(settings.catalog_url)
    try:
        with eng.connect() as conn:
            rows = int(conn.execute(sa.text("SELECT count(*) FROM instances")).scalar_one())
    finally:
        eng.dispose()
    tier = settings.tiers[settings.ingest_tier]
    files = rows
    if getattr(tier, "kind", "") == "filesystem":
        root = settings.resolve(tier.path)  # type: ignore[union-attr]
        files = sum(1 for _, _, names in os.walk(root) for n in names if not n.startswith(".tmp"))
    return min(rows, files)


# -- PostgreSQL -------------------------------------------------------------------

def start_postgres(durable: bool = True) -> servers.Postgres:
    """A PostgreSQL server on a free loopback port in a fresh folder.

    ``durable=False`` is the test suite's server (fsync off). The benchmark
    uses ``durable=True``: PostgreSQL's defaults (fsync, synchronous_commit,
    full_page_writes on), so it is compared with SQLite on equal terms.
    """
    if not durable:
        return servers.start_postgres()
    base = Path(tempfile.mkdtemp(prefix="ilm-bench-pg-"))
    datadir = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    port = free_port()
    servers._as_postgres(f"{servers.PG_BIN}/initdb -D {datadir} -A trust -U ilm >/dev/null")
    servers._as_postgres(
        f"{servers.PG_BIN}/pg_ctl -D {datadir} -w -o \"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 "
        f"-c max_wal_size=4GB -c shared_buffers=256MB\" -l {base}/log start >/dev/null"
    )
    pid = int((datadir / "postmaster.pid").read_text().splitlines()[0])
    wait_port(port)
    return servers.Postgres(port=port, datadir=datadir, pid=pid)


def stop_postgres(pg: servers.Postgres) -> None:
    servers.stop_postgres(pg)


def postgres_version() -> str:
    try:
        out = subprocess.run([str(servers.PG_BIN / "postgres"), "--version"], capture_output=True, text=True,
                             timeout=10).stdout
        m = re.search(r"\(PostgreSQL\)\s+(\S+)", out)
        return m.group(1) if m else out.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# -- the machine ----------------------------------------------------------------

def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def _pkg_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dcmtk = _first_line(["storescu", "--version"])
    m = re.search(r"v(\d+\.\d+\.\d+)", dcmtk)
    fs = _first_line(["findmnt", "-no", "FSTYPE", "-T", str(REPO)])
    git = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    try:
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        dirty = ""
    if dirty:
        git += f" + uncommitted changes in {len(dirty.splitlines())} file(s) under src/"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "filesystem": fs,
        "python": platform.python_version(),
        "orthanc": orthanc_version(),
        "dcmtk": m.group(1) if m else dcmtk,
        "pynetdicom": _pkg_version("pynetdicom"),
        "pydicom": _pkg_version("pydicom"),
        "sqlalchemy": _pkg_version("sqlalchemy"),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": postgres_version(),
        "ilm_commit": git,
        "loadavg": loadavg(),
    }
