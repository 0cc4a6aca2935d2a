"""Operations over HTTP: Prometheus metrics (/metrics), readiness (/health/ready), and the
roles of the REST API's routes. The app as ``ilm serve`` builds it (auth on), real
catalogs (SQLite and PostgreSQL), real files, STOW-RS, applies and restores over HTTP.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from conftest import write_config
from test_auth import STOW_TYPE, VAULT, token
from test_auth import stow_body as one_part

from ilm.config import Settings, load_settings
from ilm.service import ArchiveService
from ilm.web import create_app

POLICY = """name: by-modality
version: "1"
rules:
  - id: ct-to-warm
    when: {modality: CT}
    action: {transition: warm}
  - id: mr-to-vault
    when: {modality: MR}
    action: {transition: vault}
"""

@pytest.fixture
def settings(home: Path, catalog_url: str) -> Settings:
    write_config(home, catalog_url, extra=VAULT)
    return load_settings(home=home, env={})


@pytest.fixture
def client(service: ArchiveService) -> Iterator[TestClient]:
    assert service.settings.http.auth is True
    with TestClient(create_app(service)) as c:
        yield c


def stow_body(*paths: Path) -> bytes:
    return b"".join(one_part(p)[: -len(b"--b0--\r\n")] for p in paths) + b"--b0--\r\n"


def scrape(client: TestClient, headers: dict[str, str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_after_stow_apply_and_restore(client: TestClient, service: ArchiveService,
                                              pydicom_test_files: Path) -> None:
    files = [pydicom_test_files / "CT_small.dcm", pydicom_test_files / "MR_small.dcm"]
    ct, mr = (str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files)
    viewer, operator, approver = token(service, "viewer"), token(service, "operator"), token(service, "approver")
    assert client.get("/metrics").status_code == 401  # a scraper sends a token

    r = client.post("/dicomweb/studies", content=stow_body(*files), headers={"Content-Type": STOW_TYPE, **operator})
    assert r.status_code == 200, r.text
    plan = client.post("/api/plans", json={"policy": POLICY}, headers=operator).json()
    assert client.post(f"/api/plans/{plan['id']}/apply", headers=approver).status_code == 202
    service.apply_jobs.wait(plan["id"], timeout=120)
    assert client.get(f"/api/plans/{plan['id']}/progress", headers=viewer).json()["plan_state"] == "applied"
    assert client.post("/api/restores", json={"study_uids": [mr]}, headers=approver).status_code == 202

    m = scrape(client, viewer)
    sizes = sum(f.stat().st_size for f in files)
    assert m[("ilm_ingest_instances_total", (("interface", "stow-rs"),))] == 2
    assert m[("ilm_ingest_instances_total", (("interface", "dicom"),))] == 0
    assert m[("ilm_ingest_bytes_total", (("interface", "stow-rs"),))] >= sizes * 0.9  # the stored Part 10 bytes
    assert m[("ilm_moves_total", (("result", "done"),))] == 2
    assert m[("ilm_moves_total", (("result", "failed"),))] == 0
    moved = m[("ilm_moved_bytes_total", ())]
    assert moved == m[("ilm_ingest_bytes_total", (("interface", "stow-rs"),))]
    assert m[("ilm_tier_studies", (("tier", "hot"),))] == 0
    assert m[("ilm_tier_studies", (("tier", "warm"),))] == 1
    assert m[("ilm_tier_studies", (("tier", "vault"),))] == 1
    assert m[("ilm_tier_bytes", (("tier", "warm"),))] + m[("ilm_tier_bytes", (("tier", "vault"),))] == moved
    assert m[("ilm_restores_pending", ())] == 1
    assert m[("ilm_policy_run_seconds_count", (("kind", "plan"),))] == 1
    assert m[("ilm_policy_run_seconds_count", (("kind", "apply"),))] == 1
    assert m[("ilm_policy_run_seconds_sum", (("kind", "apply"),))] > 0
    assert m[("ilm_catalog_up", ())] == 1
    assert m[("ilm_watermark_runs_total", ())] == 0
    assert m[("ilm_promotions_total", (("result", "promoted"),))] == 0
    assert ct  # the CT study went to warm: counted in ilm_tier_studies{tier="warm"}


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_each_archive_counts_its_own(service: ArchiveService, tmp_path: Path, pydicom_test_files: Path) -> None:
    write_config(tmp_path / "other", f"sqlite:///{tmp_path / 'other.sqlite'}")
    other = ArchiveService.open(load_settings(home=tmp_path / "other", env={}))
    try:
        assert service.import_paths([pydicom_test_files / "CT_small.dcm"]).stored == 1
        assert b'ilm_ingest_instances_total{interface="import"} 1.0' in service.metrics.render()
        assert b'ilm_ingest_instances_total{interface="import"} 0.0' in other.metrics.render()
    finally:
        other.close()


def _break_catalog(service: ArchiveService, request: pytest.FixtureRequest) -> None:
    url = service.catalog.engine.url
    if url.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):  # the file is gone: a new connection finds no catalog in it
            Path(f"{url.database}{suffix}").unlink(missing_ok=True)
        service.catalog.engine.dispose()
        return
    admin = sa.create_engine(request.getfixturevalue("postgres").url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE "{url.database}" WITH (FORCE)')
    admin.dispose()


def test_ready_names_the_part_that_fails(client: TestClient, service: ArchiveService,
                                         request: pytest.FixtureRequest) -> None:
    r = client.get("/health/ready")  # public: load balancers send no token
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checked": ["catalog", "tier:hot", "tier:warm", "tier:vault"], "problems": {}}
    warm = service.settings.resolve("tiers/warm")
    shutil.move(warm, warm.with_name("warm-unmounted"))
    r = client.get("/health/ready")
    assert r.status_code == 503 and list(r.json()["problems"]) == ["tier:warm"]
    assert "missing" in r.json()["problems"]["tier:warm"]
    shutil.move(warm.with_name("warm-unmounted"), warm)
    assert client.get("/health/ready").status_code == 200
    assert client.get("/health").json() == {"status": "ok"}  # liveness does not look at the parts

    viewer = token(service, "viewer")
    _break_catalog(service, request)
    r = client.get("/health/ready")
    assert r.status_code == 503 and list(r.json()["problems"]) == ["catalog"], r.text
    with TestClient(create_app(service, auth=False), raise_server_exceptions=False) as anonymous:
        r = anonymous.get("/api/studies")
        assert r.status_code == 503 and r.json()["detail"].startswith("catalog unavailable"), r.text
        m = scrape(anonymous, {})
        assert m[("ilm_catalog_up", ())] == 0 and ("ilm_tier_studies", (("tier", "hot"),)) not in m
    with TestClient(create_app(service), raise_server_exceptions=False) as authed:
        assert authed.get("/api/studies", headers=viewer).status_code == 503  # the token cannot be looked up


def test_roles_of_the_api_routes(client: TestClient, service: ArchiveService, pydicom_test_files: Path) -> None:
    assert service.import_paths([pydicom_test_files / "CT_small.dcm"]).stored == 1
    viewer, operator = token(service, "viewer"), token(service, "operator")
    approver, admin = token(service, "approver"), token(service, "admin")
    body = {"policy": POLICY}
    assert client.get("/api/studies", headers=viewer).status_code == 200
    assert client.get("/metrics", headers=viewer).status_code == 200
    assert client.post("/api/plans", json=body, headers=viewer).status_code == 403
    assert client.get("/api/plans", headers=viewer).json() == []  # the refused request planned nothing
    plan = client.post("/api/plans", json=body, headers=operator)
    assert plan.status_code == 201 and plan.json()["created_by"] == "token:t-operator"
    plan_id = plan.json()["id"]
    assert client.post(f"/api/plans/{plan_id}/apply", headers=operator).status_code == 403
    assert client.post("/api/purge", headers=operator).status_code == 403
    assert client.get("/api/tokens", headers=approver).status_code == 403
    r = client.post(f"/api/plans/{plan_id}/apply", json={"approved_by": "dr-who"}, headers=approver)
    assert r.status_code == 202
    service.apply_jobs.wait(plan_id, timeout=120)
    assert client.get(f"/api/plans/{plan_id}", headers=viewer).json()["plan"]["approved_by"] == "dr-who (token:t-approver)"
    made = client.post("/api/tokens", json={"name": "scraper", "role": "viewer", "expires": "P90D"}, headers=admin)
    assert made.status_code == 201 and made.json()["row"]["expires_at"]
    scraper = {"Authorization": f"Bearer {made.json()['token']}"}
    assert client.get("/metrics", headers=scraper).status_code == 200
    assert [t["name"] for t in client.delete("/api/tokens/scraper", headers=admin).json()] == ["scraper"]
    assert client.get("/metrics", headers=scraper).status_code == 401
    bad = client.post("/api/tokens", json={"name": "x y", "role": "viewer"}, headers=admin)
    assert bad.status_code == 400 and "token name" in bad.json()["detail"]


def test_api_bodies_are_bounded_before_auth(client: TestClient, service: ArchiveService) -> None:
    from ilm.web.body_limit import API_BODY_LIMIT

    chunk = b" " * (1 << 20)
    too_big = API_BODY_LIMIT // len(chunk) + 1
    r = client.post("/api/plans", content=chunk * too_big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]  # no token needed to be refused
    r = client.post("/api/plans", content=(chunk for _ in range(too_big)),  # streamed: no Content-Length
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    r = client.post("/api/plans", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 401  # a small body goes on to the token check
    assert client.get("/api/plans", headers=token(service, "viewer")).json() == []
