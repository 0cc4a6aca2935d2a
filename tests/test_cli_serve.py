"""``ilm serve`` as a real process: DICOM and DICOMweb clients against it, then a clean stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from conftest import write_config
from support.servers import free_port, wait_port

pytestmark = pytest.mark.dcmtk


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    home: Path
    dicom_port: int
    http_port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ILM_")}
    env["ILM_HOME"] = str(home)
    return env


def _ilm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ilm", *args, "--home", str(home)],
                          capture_output=True, text=True, env=_env(home), timeout=120)


def _start(home: Path, *args: str) -> Served:
    dicom, http = free_port(), free_port()
    log = home / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ilm", "serve", "--home", str(home), "--host", "127.0.0.1",
             "--dicom-port", str(dicom), "--http-port", str(http), *args],
            stdout=out, stderr=subprocess.STDOUT, env=_env(home),
        )
    return Served(proc, home, dicom, http, log)


@pytest.fixture
def served(tmp_path: Path, catalog_url: str) -> Iterator[Served]:
    if shutil.which("storescu") is None or shutil.which("echoscu") is None:
        pytest.fail("dcmtk's echoscu/storescu are missing: run 'make test', which installs the dcmtk package")
    home = tmp_path / "home"
    write_config(home, catalog_url)
    s = _start(home, "--ae-title", "ILMCLI")
    try:
        wait_port(s.dicom_port, timeout=60, proc=s.proc)
        wait_port(s.http_port, timeout=60, proc=s.proc)
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(timeout=30)


def _stop(s: Served, sig: int = signal.SIGTERM) -> int:
    os.kill(s.proc.pid, sig)
    return s.proc.wait(timeout=60)


def test_serve_receives_dicom_and_stow_then_stops_cleanly(served: Served, pydicom_test_files: Path) -> None:
    out = served.output()
    assert f"AE ILMCLI on 127.0.0.1:{served.dicom_port}" in out
    assert f"http://127.0.0.1:{served.http_port}/dicomweb" in out

    echo = subprocess.run(["echoscu", "-aec", "ILMCLI", "127.0.0.1", str(served.dicom_port)],
                          capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0, echo.stderr
    ct, mr = pydicom_test_files / "CT_small.dcm", pydicom_test_files / "MR_small.dcm"
    store = subprocess.run(["storescu", "-aec", "ILMCLI", "127.0.0.1", str(served.dicom_port), str(ct), str(mr)],
                           capture_output=True, text=True, timeout=120)
    assert store.returncode == 0, store.stderr

    jpeg = pydicom_test_files / "JPEG2000.dcm"
    body = b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + jpeg.read_bytes() + b"\r\n--b0--\r\n"
    stow = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0'}
    r = httpx.post(f"http://127.0.0.1:{served.http_port}/dicomweb/studies", content=body, headers=stow, timeout=60)
    assert r.status_code == 401, r.text  # auth is on by default, also on loopback
    made = _ilm(served.home, "tokens", "create", "--name", "modality", "--role", "operator")
    assert made.returncode == 0, made.stderr
    stow["Authorization"] = f"Bearer {made.stdout.strip()}"
    r = httpx.post(f"http://127.0.0.1:{served.http_port}/dicomweb/studies", content=body, headers=stow, timeout=60)
    assert r.status_code == 200, r.text
    assert httpx.get(f"http://127.0.0.1:{served.http_port}/health").json() == {"status": "ok"}

    listed = _ilm(served.home, "studies", "--json")
    assert listed.returncode == 0, listed.stderr
    studies = {s["study_instance_uid"]: s for s in json.loads(listed.stdout)}
    for path in (ct, mr, jpeg):
        ds = pydicom.dcmread(path)
        assert studies[ds.StudyInstanceUID]["instance_count"] == 1

    assert _stop(served) == 0, served.output()
    assert "stopped" in served.output()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", served.dicom_port), timeout=1).close()


def test_sigint_stops_cleanly_too(served: Served) -> None:
    assert _stop(served, signal.SIGINT) == 0, served.output()


def test_port_in_use_is_a_clear_error(tmp_path: Path, catalog_url: str) -> None:
    home = tmp_path / "home"
    write_config(home, catalog_url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "ilm", "serve", "--home", str(home), "--host", "127.0.0.1",
             "--dicom-port", str(port), "--http-port", str(free_port())],
            capture_output=True, text=True, env=_env(home), timeout=120,
        )
    assert r.returncode == 2
    assert f"cannot listen for DICOM on 127.0.0.1:{port}" in r.stderr


def test_bad_ae_title_is_a_usage_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home, f"sqlite:///{home / 'catalog.sqlite'}")
    r = subprocess.run([sys.executable, "-m", "ilm", "serve", "--home", str(home), "--ae-title", "X" * 17],
                       capture_output=True, text=True, env=_env(home), timeout=120)
    assert r.returncode == 2
    assert "ae_title" in r.stderr
