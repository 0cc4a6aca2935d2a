"""``ilm serve`` with TLS on both front-ends: HTTPS checked by httpx against the test CA,
DICOM over TLS by dcmtk's echoscu; plain clients on the TLS ports fail; bad files exit 2."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import write_config
from support.certs import Certs, make_certs
from support.servers import free_port, wait_port
from test_cli_serve import _env, _ilm

pytestmark = pytest.mark.dcmtk


def _tls_config(certs: Certs) -> str:
    return f"""
[dicom]
tls_cert = "{certs.cert}"
tls_key = "{certs.key}"

[http]
tls_cert = "{certs.cert}"
tls_key = "{certs.key}"
"""


@pytest.fixture
def served(tmp_path: Path, catalog_url: str) -> Iterator[tuple[Path, Certs, int, int]]:
    if shutil.which("echoscu") is None:
        pytest.fail("dcmtk's echoscu is missing: run 'make test', which installs the dcmtk package")
    home = tmp_path / "home"
    certs = make_certs(tmp_path / "certs")
    write_config(home, catalog_url, extra=_tls_config(certs))
    dicom, http = free_port(), free_port()
    log = home / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ilm", "serve", "--home", str(home), "--host", "127.0.0.1",
                                 "--dicom-port", str(dicom), "--http-port", str(http)],
                                stdout=out, stderr=subprocess.STDOUT, env=_env(home))
    try:
        wait_port(dicom, timeout=60, proc=proc)
        wait_port(http, timeout=60, proc=proc)
        yield home, certs, dicom, http
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_https_and_dicom_tls(served: tuple[Path, Certs, int, int]) -> None:
    home, certs, dicom, http = served
    out = (home / "serve.log").read_text(errors="replace")
    assert f"https://127.0.0.1:{http}/dicomweb" in out and f"127.0.0.1:{dicom} over TLS" in out

    verify = ssl.create_default_context(cafile=str(certs.ca))
    assert httpx.get(f"https://127.0.0.1:{http}/health", verify=verify).json() == {"status": "ok"}
    made = _ilm(home, "tokens", "create", "--name", "viewer", "--role", "viewer")
    assert made.returncode == 0, made.stderr
    assert "Authorization: Bearer <token>' https://" in made.stderr  # the hint names the scheme in use
    r = httpx.get(f"https://127.0.0.1:{http}/dicomweb/studies", verify=verify,
                  headers={"Authorization": f"Bearer {made.stdout.strip()}"})
    assert r.status_code == 204, r.text
    with pytest.raises(httpx.ConnectError):  # the server's certificate is not trusted without the test CA
        httpx.get(f"https://127.0.0.1:{http}/health", verify=ssl.create_default_context())
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the HTTPS port
        httpx.get(f"http://127.0.0.1:{http}/health")

    tls = subprocess.run(["echoscu", "+tla", "+cf", str(certs.ca), "127.0.0.1", str(dicom)],
                         capture_output=True, text=True, timeout=120)
    assert tls.returncode == 0, tls.stderr
    plain = subprocess.run(["echoscu", "-to", "60", "-ta", "60", "-td", "60", "127.0.0.1", str(dicom)],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0


def test_bad_certificate_files_exit_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    certs = make_certs(tmp_path / "certs")
    for section, cert, key, problem in (
        ("http", certs.cert, tmp_path / "missing.key", "key 'http.tls_key': "),
        ("dicom", certs.cert, tmp_path / "missing.key", "key 'dicom.tls_key': "),
        ("http", certs.cert, certs.client_key, "not a PEM certificate and its private key"),
    ):
        write_config(home, f"sqlite:///{home / 'catalog.sqlite'}",
                     extra=f'[{section}]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
        r = subprocess.run([sys.executable, "-m", "ilm", "serve", "--home", str(home), "--host", "127.0.0.1",
                            "--dicom-port", str(free_port()), "--http-port", str(free_port())],
                           capture_output=True, text=True, env=_env(home), timeout=120)
        assert r.returncode == 2, r.stderr
        assert problem in r.stderr


def test_auth_off_on_a_network_address_exits_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home, f"sqlite:///{home / 'catalog.sqlite'}", extra="[http]\nauth = false\n")
    r = subprocess.run([sys.executable, "-m", "ilm", "serve", "--home", str(home), "--host", "0.0.0.0",
                        "--dicom-port", str(free_port()), "--http-port", str(free_port())],
                       capture_output=True, text=True, env=_env(home), timeout=120)
    assert r.returncode == 2, r.stderr
    assert "HTTP settings: Value error, auth = false is only allowed when http.host is a loopback address" in r.stderr

