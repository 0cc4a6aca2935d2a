"""Access control over HTTP: API tokens, roles on every route, 401/403 that change nothing.

The app is built exactly as ``ilm serve`` builds it (``create_app(service)``,
auth from the settings: on by default), so a route someone adds later is
checked here too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pydicom
import pytest
import requests
import sqlalchemy as sa
from dicomweb_client import DICOMwebClient
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import write_config
from support.http import serve

from ilm.catalog.schema import api_tokens
from ilm.cli import app as cli_app
from ilm.config import Settings, load_settings
from ilm.errors import ConfigError, NotFound
from ilm.lifecycle.move import move_study
from ilm.policy.durations import Period
from ilm.security.roles import Role
from ilm.service import ArchiveService
from ilm.web import create_app
from ilm.web.auth import PUBLIC, RouteRole, require, route_roles

VAULT = """
[tiers.vault]
kind = "filesystem"
path = "tiers/vault"
fsync = false
archive = true
retrieval_latency_seconds = 3600
"""

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0'


@pytest.fixture
def settings(home: Path, catalog_url: str) -> Settings:
    write_config(home, catalog_url, extra=VAULT)
    return load_settings(home=home, env={})


@pytest.fixture
def app(service: ArchiveService) -> FastAPI:
    assert service.settings.http.auth is True  # the default
    return create_app(service)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def token(service: ArchiveService, role: str, name: str | None = None) -> dict[str, str]:
    _, secret = service.token_create(name or f"t-{role}", role, expires=None, by="test")
    return {"Authorization": f"Bearer {secret}"}


def stow_body(path: Path) -> bytes:
    return b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--b0--\r\n"


def instance_count(service: ArchiveService) -> int:
    with service.catalog.read() as c:
        return int(c.execute(sa.text("SELECT count(*) FROM instances")).scalar_one())


def undeclared(app: FastAPI) -> list[str]:
    """Routes that are neither public nor declare a role with ilm.web.auth.require."""
    return [f"{list(r.methods)} {r.path}" for r in route_roles(app)
            if r.path not in PUBLIC and (not r.api_route or r.role is None)]


def protected(app: FastAPI) -> list[RouteRole]:
    return [r for r in route_roles(app) if r.path not in PUBLIC]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1.2.3", path)


# -- every route declares its role ----------------------------------------------------------


def test_every_route_declares_a_role(app: FastAPI) -> None:
    assert undeclared(app) == [], "routes without require(...) (see ilm/web/app.py's docstring)"
    # the check can fail: a route added without a role is caught, a mounted app too
    app.add_api_route("/api/forgotten", lambda: {"ok": True}, methods=["DELETE"])
    app.mount("/elsewhere", FastAPI())
    assert undeclared(app) == ["['DELETE'] /api/forgotten", "[] /elsewhere"]


def test_public_routes_are_exactly_the_allow_list(app: FastAPI, client: TestClient) -> None:
    public = [r for r in route_roles(app) if r.path in PUBLIC]
    assert {r.path for r in public} == {"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc",
                                        "/login", "/static", "/health/ready"}
    assert all(r.role is None for r in public)
    assert client.get("/health").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"  # Swagger UI's Authorize


def test_roles_of_the_routes(app: FastAPI) -> None:
    roles = {(m, r.path): r.role for r in route_roles(app) for m in r.methods}
    assert roles[("POST", "/dicomweb/studies")] is Role.OPERATOR
    assert roles[("POST", "/dicomweb/studies/{study}")] is Role.OPERATOR
    assert roles[("GET", "/dicomweb/studies")] is Role.VIEWER
    assert roles[("GET", "/dicomweb/studies/{study}")] is Role.VIEWER
    assert roles[("POST", "/api/restores")] is Role.APPROVER
    assert roles[("GET", "/api/restores")] is Role.VIEWER


def test_every_protected_route_is_401_without_a_valid_token(app: FastAPI, client: TestClient,
                                                           service: ArchiveService) -> None:
    revoked = token(service, "admin", "gone")
    service.token_revoke("gone", by="test")
    checked = 0
    for route in protected(app):
        for method in route.methods:
            url = concrete(route.path)
            r = client.request(method, url)
            assert r.status_code == 401, (method, url, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer"), (method, url)
            r = client.request(method, url, headers={"Authorization": "Bearer ilm_not-a-token"})
            assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"], (method, url)
            r = client.request(method, url, headers=revoked)
            assert r.status_code == 401 and "revoked" in r.json()["detail"], (method, url)
            r = client.request(method, url, headers={"Authorization": "Basic dXNlcjpwYXNz"})
            assert r.status_code == 401, (method, url)
            checked += 1
    assert checked >= 14  # STOW x2, QIDO x6, WADO x7, restores x2 today


# -- 401/403 change nothing --------------------------------------------------------------


def test_stow_with_a_viewer_token_stores_nothing(client: TestClient, service: ArchiveService,
                                                 pydicom_test_files: Path) -> None:
    body = stow_body(pydicom_test_files / "CT_small.dcm")
    for headers in ({}, token(service, "viewer")):
        r = client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE, **headers})
        assert r.status_code == (403 if headers else 401), r.text
    assert r.json()["detail"] == "token 't-viewer' has the role viewer; this needs operator or higher"
    assert instance_count(service) == 0
    assert list(service.tier("hot").keys()) == []
    r = client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE, **token(service, "operator")})
    assert r.status_code == 200, r.text  # the control: the same request with the role it needs
    assert instance_count(service) == 1


def test_restore_post_with_an_operator_token_creates_none(client: TestClient, service: ArchiveService,
                                                          pydicom_test_files: Path) -> None:
    assert service.import_paths([pydicom_test_files / "CT_small.dcm"]).stored == 1
    uid = str(pydicom.dcmread(pydicom_test_files / "CT_small.dcm").StudyInstanceUID)
    assert move_study(service.catalog, service.tier, uid, "vault").ok
    viewer = token(service, "viewer")
    for headers, status in (({}, 401), (viewer, 403), (token(service, "operator"), 403)):
        r = client.post("/api/restores", json={"study_uids": [uid]}, headers=headers)
        assert r.status_code == status, r.text
    assert service.restores(active_only=False) == []
    assert client.get("/api/restores", headers=viewer).json() == {"restores": []}
    r = client.post("/api/restores", json={"study_uids": [uid]}, headers=token(service, "approver", "dr-who"))
    assert r.status_code == 202, r.text
    [st] = service.restores(active_only=False)
    assert st.study_uid == uid and st.requested_by == "token:dr-who"  # the token names who asked
    assert client.get("/api/restores", headers=viewer).json()["restores"][0]["study_uid"] == uid


def test_higher_roles_include_lower_ones(client: TestClient, service: ArchiveService) -> None:
    for role in ("viewer", "operator", "approver", "admin"):
        r = client.get("/dicomweb/studies", headers=token(service, role))
        assert r.status_code == 204, (role, r.text)  # an empty archive: no content


# -- tokens ---------------------------------------------------------------------------


def _rows(service: ArchiveService) -> list[sa.Row[tuple[object, ...]]]:
    with service.catalog.read() as c:
        return list(c.execute(sa.select(api_tokens).order_by(api_tokens.c.id)))


def test_only_the_hash_of_a_token_is_stored(service: ArchiveService) -> None:
    row, secret = service.token_create("pacs", "viewer", expires=None, by="alice")
    assert re.fullmatch(r"ilm_[A-Za-z0-9_-]{43}", secret)
    [stored] = _rows(service)
    assert stored.hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(tuple(stored)) and secret[4:] not in repr(tuple(stored))
    assert (stored.name, stored.role, stored.created_by, stored.revoked_at) == ("pacs", "viewer", "alice", None)
    assert [e.action for e in service.audit()] == ["token.create"]
    assert secret not in repr(service.audit())


def test_expired_and_revoked_tokens_are_refused(client: TestClient, service: ArchiveService,
                                                caplog: pytest.LogCaptureFixture) -> None:
    row, secret = service.token_create("short", "viewer", expires=Period(days=1), by="t")
    assert row.expires_at is not None
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/dicomweb/studies", headers=headers).status_code == 204
    with service.catalog.write() as c:
        c.execute(sa.update(api_tokens).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    with caplog.at_level("WARNING", logger="ilm.web.auth"):
        r = client.get("/dicomweb/studies", headers=headers)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    assert "HTTP 401 for GET /dicomweb/studies from testclient: token 'short' expired at" in caplog.text  # logged
    [stored] = _rows(service)
    assert stored.last_used_at is not None  # the first request was recorded

    other = token(service, "viewer", "other")
    assert client.get("/dicomweb/studies", headers=other).status_code == 204
    [revoked] = service.token_revoke("other", by="t")
    assert revoked.name == "other"
    assert client.get("/dicomweb/studies", headers=other).status_code == 401
    with pytest.raises(NotFound):
        service.token_revoke("other", by="t")  # nothing left to revoke
    assert [e.action for e in service.audit()] == ["token.create", "token.create", "token.revoke"]


def test_bad_token_requests_are_refused_and_change_nothing(service: ArchiveService) -> None:
    service.token_create("pacs", "viewer", expires=None, by="t")
    for name, role, problem in (("pacs", "viewer", "exists already"), ("x y", "viewer", "token name"),
                                ("123", "viewer", "all digits"), ("ok", "superuser", "unknown role")):
        with pytest.raises(ConfigError, match=problem):
            service.token_create(name, role, expires=None, by="t")
    with pytest.raises(ConfigError, match="zero"):
        service.token_create("zero", "viewer", expires=Period(), by="t")
    assert [r.name for r in _rows(service)] == ["pacs"]


def test_auth_off_only_on_loopback(home: Path, catalog_url: str) -> None:
    write_config(home, catalog_url, extra="[http]\nauth = false\n")
    assert load_settings(home=home, env={}).http.auth is False
    with pytest.raises(ConfigError, match="auth = false is only allowed when http.host is a loopback address"):
        load_settings(home=home, env={"ILM_HTTP_HOST": "0.0.0.0"})
    write_config(home, catalog_url)
    assert load_settings(home=home, env={"ILM_HTTP_HOST": "0.0.0.0"}).http.auth is True


def test_auth_off_serves_everyone(service: ArchiveService) -> None:
    with TestClient(create_app(service, auth=False)) as c:
        assert c.get("/dicomweb/studies").status_code == 204


def test_require_refuses_an_unknown_role_at_once() -> None:
    with pytest.raises(ValueError, match="unknown role 'superuser': expected one of viewer, operator, approver, admin"):
        require("superuser")


# -- the CLI ---------------------------------------------------------------------------

runner = CliRunner(env={"COLUMNS": "250"})


def test_cli_tokens(settings: Settings, service: ArchiveService) -> None:
    home = ["--home", str(settings.home)]
    r = runner.invoke(cli_app, ["tokens", "create", "--name", "ward3", "--role", "viewer", "--expires", "P90D",
                                "--by", "alice", *home])
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip()
    assert re.fullmatch(r"ilm_[A-Za-z0-9_-]{43}", secret)
    assert "shown only this once" in r.stderr and "Authorization: Bearer" in r.stderr
    assert service.authenticate(secret).name == "ward3"
    [row] = service.tokens()
    expected = (datetime.now(timezone.utc) + timedelta(days=90)).date()
    assert abs((row.expires_at.date() - expected).days) <= 1  # type: ignore[union-attr]

    listed = runner.invoke(cli_app, ["tokens", "list", "--json", *home])
    assert listed.exit_code == 0 and secret not in listed.stdout
    assert [(t["id"], t["name"], t["role"]) for t in __import__("json").loads(listed.stdout)] == [(row.id, "ward3", "viewer")]

    for args, problem in ((["--name", "a", "--role", "boss"], "unknown role 'boss'"),
                          (["--name", "b", "--role", "viewer", "--expires", "soon"], "--expires 'soon'"),
                          (["--name", "ward3", "--role", "admin"], "exists already")):
        bad = runner.invoke(cli_app, ["tokens", "create", *args, *home])
        assert bad.exit_code == 2 and problem in bad.stderr, bad.output
    assert len(service.tokens()) == 1

    r = runner.invoke(cli_app, ["tokens", "revoke", str(row.id), *home])
    assert r.exit_code == 0 and f"revoked token {row.id} 'ward3'" in r.stdout
    assert runner.invoke(cli_app, ["tokens", "revoke", "ward3", *home]).exit_code == 2
    assert service.tokens() == [] and len(service.tokens(include_revoked=True)) == 1
    table = runner.invoke(cli_app, ["tokens", "list", "--all", *home])
    assert "ward3" in table.stdout and secret not in table.stdout


# -- a real server and dicomweb-client ---------------------------------------------------


@pytest.fixture
def http_server(app: FastAPI) -> Iterator[str]:
    with serve(app) as url:
        yield url


def test_dicomweb_client_with_a_token(http_server: str, service: ArchiveService, pydicom_test_files: Path) -> None:
    ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    url = f"{http_server}/dicomweb"
    with pytest.raises(requests.HTTPError) as info:
        DICOMwebClient(url).search_for_studies()
    assert info.value.response.status_code == 401
    viewer = DICOMwebClient(url, headers=token(service, "viewer"))
    with pytest.raises(requests.HTTPError) as info:
        viewer.store_instances([ds])
    assert info.value.response.status_code == 403 and instance_count(service) == 0
    result = DICOMwebClient(url, headers=token(service, "operator")).store_instances([ds])
    assert "FailedSOPSequence" not in result and instance_count(service) == 1
    [found] = viewer.search_for_studies()
    assert found["0020000D"]["Value"] == [ds.StudyInstanceUID]
    [got] = viewer.retrieve_study(ds.StudyInstanceUID)
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert httpx.get(f"{http_server}/health").status_code == 200
