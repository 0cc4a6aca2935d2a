"""The REST API over ArchiveService (ilm.web.api_*): studies, plans, holds, labels,
quarantine, purge, audit, tiers, tokens. Real catalogs (SQLite and PostgreSQL),
real files on filesystem tiers, the app in-process (httpx via TestClient).

Behaviour tests build the app with ``auth=False``; the role tests give tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from conftest import write_config

from ilm.config import Settings, load_settings
from ilm.service import ArchiveService
from ilm.web import create_app

TO_WARM = """name: to-warm
version: "1"
rules:
  - id: ct-to-warm
    when:
      modality: CT
    action: {transition: warm}
"""

EXPIRE_ALL = """name: expire-all
version: "1"
protections:
  minimum_retention: {enabled: false, reason: "test archive"}
  pediatric: {enabled: false, reason: "test archive"}
  unknown_facts: {enabled: false, reason: "test archive"}
  recently_accessed: {enabled: false, reason: "test archive"}
rules:
  - id: drop-everything
    action: expire
"""

QUARANTINE = """
[lifecycle]
quarantine_days = 0
"""


@pytest.fixture
def settings(home: Path, catalog_url: str) -> Settings:
    write_config(home, catalog_url, extra=QUARANTINE)
    return load_settings(home=home, env={})


@pytest.fixture
def client(service: ArchiveService) -> Iterator[TestClient]:
    with TestClient(create_app(service, auth=False)) as c:
        yield c


def _import(service: ArchiveService, files: Path, *names: str) -> list[str]:
    assert service.import_paths([files / n for n in names]).rejected == 0
    return [str(pydicom.dcmread(files / n, stop_before_pixels=True).StudyInstanceUID) for n in names]


def _apply(client: TestClient, service: ArchiveService, plan_id: str, **body: Any) -> dict[str, Any]:
    r = client.post(f"/api/plans/{plan_id}/apply", json=body or None)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/api/plans/{plan_id}/progress"
    service.apply_jobs.wait(plan_id, timeout=120)
    progress: dict[str, Any] = client.get(f"/api/plans/{plan_id}/progress").json()
    return progress


def _tiers(client: TestClient, uid: str) -> set[str]:
    return {loc["tier"] for loc in client.get(f"/api/studies/{uid}").json()["locations"]}


# -- studies -----------------------------------------------------------------------------


def test_studies_list_pages_filters_and_shows(client: TestClient, service: ArchiveService,
                                              pydicom_test_files: Path) -> None:
    ct, mr, rt = _import(service, pydicom_test_files, "CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
    every = client.get("/api/studies").json()
    assert {s["study_instance_uid"] for s in every} == {ct, mr, rt}
    pages = [client.get("/api/studies", params={"limit": 1, "offset": i}).json() for i in range(4)]
    assert [len(p) for p in pages] == [1, 1, 1, 0]
    assert [p[0]["study_instance_uid"] for p in pages[:3]] == [s["study_instance_uid"] for s in every]
    only_ct = client.get("/api/studies", params={"modality": "CT"}).json()
    assert [s["study_instance_uid"] for s in only_ct] == [ct] and only_ct[0]["tiers"] == ["hot"]
    shown = client.get(f"/api/studies/{ct}").json()
    assert shown["summary"]["instance_count"] == 1 and shown["series"][0]["modality"] == "CT"
    assert [(loc["tier"], loc["state"]) for loc in shown["locations"]] == [("hot", "verified")]
    assert shown["checksum_state"]
    r = client.get("/api/studies/1.2.3.4")
    assert r.status_code == 404 and r.json() == {"detail": "no study '1.2.3.4' in the catalog"}
    assert client.get("/api/studies", params={"date_from": "yesterday"}).status_code == 422
    assert client.get("/api/studies", params={"limit": 0}).status_code == 422
    summary = client.get("/api/summary").json()
    assert {r["key"]: r["studies"] for r in summary["tier"]} == {"hot": 3}


# -- plans -------------------------------------------------------------------------------


def test_plan_from_an_uploaded_policy_applies_in_the_background(client: TestClient, service: ArchiveService,
                                                                pydicom_test_files: Path) -> None:
    ct, mr = _import(service, pydicom_test_files, "CT_small.dcm", "MR_small.dcm")
    r = client.post("/api/plans", json={"policy": TO_WARM, "created_by": "dr-plan"})
    assert r.status_code == 201, r.text
    plan = r.json()
    assert plan["state"] == "planned" and plan["created_by"] == "dr-plan" and plan["policy_name"] == "to-warm"
    [line] = [a for a in plan["summary"]["actions"] if a["action"] == "transition"]
    assert (line["rule"], line["tier"], line["studies"]) == ("ct-to-warm", "warm", 1)
    assert Path(plan["policy_path"]).read_text() == TO_WARM  # kept, so that apply can check it
    detail = client.get(f"/api/plans/{plan['id']}").json()
    assert detail["plan"]["id"] == plan["id"]
    assert detail["progress"] | {"job": None} == {
        "plan_id": plan["id"], "plan_state": "planned", "approved_by": None, "total": 1, "processed": 0, "done": 0,
        "skipped": 0, "failed": 0, "bytes_total": line["bytes"], "bytes_processed": 0, "job": None}
    assert [p["id"] for p in client.get("/api/plans").json()] == [plan["id"]]
    actions = client.get(f"/api/plans/{plan['id']}/actions", params={"state": "pending"}).json()["actions"]
    assert [(a["study_uid"], a["decision"], a["target_tier"]) for a in actions] == [(ct, "transition", "warm")]

    progress = _apply(client, service, plan["id"], approved_by="dr-approve")
    assert progress["plan_state"] == "applied" and progress["approved_by"] == "dr-approve"
    assert (progress["total"], progress["processed"], progress["done"]) == (1, 1, 1)
    assert progress["bytes_processed"] == progress["bytes_total"] == line["bytes"] > 0
    assert progress["job"]["state"] == "done" and progress["job"]["bytes_moved"] == line["bytes"]
    assert _tiers(client, ct) == {"warm"} and _tiers(client, mr) == {"hot"}
    applied = [e for e in client.get("/api/audit", params={"plan_id": plan["id"]}).json() if e["action"] == "plan.apply"]
    assert [e["actor"] for e in applied] == ["dr-approve"]

    again = client.post(f"/api/plans/{plan['id']}/apply")
    assert again.status_code == 409 and "applied" in again.json()["detail"]


def test_plan_policy_path_must_be_inside_home_and_valid(client: TestClient, service: ArchiveService,
                                                        pydicom_test_files: Path, tmp_path: Path) -> None:
    _import(service, pydicom_test_files, "CT_small.dcm")
    (service.settings.home / "site.yaml").write_text(TO_WARM)
    assert client.post("/api/plans", json={"policy_path": "site.yaml"}).status_code == 201
    outside = tmp_path / "outside.yaml"
    outside.write_text(TO_WARM)
    for path in (str(outside), "../outside.yaml", "/etc/passwd"):
        r = client.post("/api/plans", json={"policy_path": path})
        assert r.status_code == 400 and "outside ILM_HOME" in r.json()["detail"], (path, r.text)
    r = client.post("/api/plans", json={"policy_path": "missing.yaml"})
    assert r.status_code == 400 and "no such file" in r.json()["detail"]
    r = client.post("/api/plans", json={"policy": TO_WARM.replace("warm}", "lukewarm}")})
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("the policy has 1 error(s)") and "lukewarm" in r.json()["issues"][0]
    assert client.post("/api/plans", json={"policy": TO_WARM, "policy_path": "site.yaml"}).status_code == 422
    assert client.post("/api/plans", json={}).status_code == 422
    assert len(client.get("/api/plans").json()) == 1  # the refused requests planned nothing
    r = client.post("/api/plans/upload", files={"policy": ("site.yaml", TO_WARM.encode())},
                    data={"as_of": "2026-01-31", "created_by": "uploader"})
    assert r.status_code == 201, r.text
    assert (r.json()["as_of"], r.json()["created_by"], r.json()["policy_name"]) == ("2026-01-31", "uploader", "to-warm")
    r = client.post("/api/plans/upload", files={"policy": ("bad.yaml", b"\xff\xfe")})
    assert r.status_code == 400 and "not UTF-8" in r.json()["detail"]
    assert client.post("/api/plans/upload", files={"policy": ("x.yaml", b"rules: 3")}).status_code == 400
    assert len(client.get("/api/plans").json()) == 2
    assert client.post("/api/policies/check", json={"policy": TO_WARM}).json()["ok"] is True
    bad = client.post("/api/policies/check", json={"policy": "rules: 3"}).json()
    assert bad["ok"] is False and bad["issues"]


def test_apply_refuses_a_plan_whose_policy_changed(client: TestClient, service: ArchiveService,
                                                   pydicom_test_files: Path) -> None:
    [ct] = _import(service, pydicom_test_files, "CT_small.dcm")
    policy = service.settings.home / "site.yaml"
    policy.write_text(TO_WARM)
    plan_id = client.post("/api/plans", json={"policy_path": "site.yaml"}).json()["id"]
    policy.write_text(TO_WARM.replace("to-warm", "edited"))
    r = client.post(f"/api/plans/{plan_id}/apply", json={"approved_by": "x"})
    assert r.status_code == 409 and "changed since the plan was made" in r.json()["detail"]
    assert client.get(f"/api/plans/{plan_id}").json()["plan"]["state"] == "planned"
    assert _tiers(client, ct) == {"hot"}
    assert client.post("/api/plans/p-nope/apply").status_code == 404
    assert client.get("/api/plans/p-nope/progress").status_code == 404


def test_export_compare_and_explain(client: TestClient, service: ArchiveService, pydicom_test_files: Path) -> None:
    ct, mr = _import(service, pydicom_test_files, "CT_small.dcm", "MR_small.dcm")
    plan_id = client.post("/api/plans", json={"policy": TO_WARM}).json()["id"]
    doc = client.get(f"/api/plans/{plan_id}/export").json()
    assert doc["plan_id"] == plan_id and {d["study_uid"] for d in doc["decisions"] if d["action"] != "keep"} == {ct}
    assert client.post(f"/api/plans/{plan_id}/compare", json=doc).json() == []
    peer = dict(doc, decisions=[d | {"action": "keep", "tier": None} for d in doc["decisions"]])
    [diff] = client.post(f"/api/plans/{plan_id}/compare", json=peer).json()
    assert (diff["study_uid"], diff["here"], diff["here_tier"], diff["peer"]) == (ct, "transition", "warm", "keep")
    r = client.post(f"/api/plans/{plan_id}/compare", json={"decisions": [{"action": "keep"}]})
    assert r.status_code == 400 and "decisions[0]" in r.json()["detail"]

    d = client.post("/api/explain", json={"study_uid": ct, "policy": TO_WARM}).json()
    assert (d["action"], d["rule_id"], d["tier"]) == ("transition", "ct-to-warm", "warm")
    assert d["trace"][0]["deciding"] is True and d["protections"]
    d = client.post("/api/explain", json={"study_uid": mr, "policy": TO_WARM}).json()
    assert d["action"] == "keep" and d["rule_id"] is None
    r = client.post("/api/explain", json={"study_uid": "1.2.3", "policy": TO_WARM})
    assert r.status_code == 404 and "1.2.3" in r.json()["detail"]


# -- holds, labels, quarantine, purge -------------------------------------------------------


def test_holds_and_labels(client: TestClient, service: ArchiveService, pydicom_test_files: Path) -> None:
    [ct] = _import(service, pydicom_test_files, "CT_small.dcm")
    r = client.post("/api/holds", json={"study_uid": ct, "reason": "case 42", "by": "counsel"})
    assert r.status_code == 201, r.text
    hold_id = r.json()["id"]
    [h] = client.get("/api/holds").json()
    assert (h["id"], h["scope"], h["target"], h["reason"], h["created_by"]) == (hold_id, "study", ct, "case 42", "counsel")
    pid = str(pydicom.dcmread(pydicom_test_files / "CT_small.dcm").PatientID)
    assert client.post("/api/holds", json={"patient_id": pid, "reason": "litigation"}).status_code == 201
    assert client.post("/api/holds", json={"study_uid": ct, "patient_id": pid, "reason": "x"}).status_code == 422
    assert client.post("/api/holds", json={"study_uid": ct}).status_code == 422  # no reason
    released = client.delete(f"/api/holds/{hold_id}", params={"by": "counsel"}).json()
    assert released["released_by"] == "counsel" and released["released_at"]
    assert [h["scope"] for h in client.get("/api/holds").json()] == ["patient"]
    assert len(client.get("/api/holds", params={"all": "true"}).json()) == 2
    r = client.delete(f"/api/holds/{hold_id}")
    assert r.status_code == 404 and str(hold_id) in r.json()["detail"]
    assert client.post("/api/holds/sync").json() == {"held": 0, "released": 0, "problems": []}

    assert client.put(f"/api/studies/{ct}/labels/teaching").status_code == 200
    teaching = "name: t\nversion: '1'\nrules:\n  - id: t\n    when: {labels: teaching}\n    action: {transition: warm}\n"
    assert client.post("/api/explain", json={"study_uid": ct, "policy": teaching}).json()["rule_id"] == "t"
    assert client.delete(f"/api/studies/{ct}/labels/teaching").status_code == 200
    assert client.post("/api/explain", json={"study_uid": ct, "policy": teaching}).json()["rule_id"] is None
    r = client.put("/api/studies/1.2.3/labels/teaching")
    assert r.status_code == 404 and "1.2.3" in r.json()["detail"]


def test_quarantine_restore_and_purge(client: TestClient, service: ArchiveService, pydicom_test_files: Path) -> None:
    ct, mr = _import(service, pydicom_test_files, "CT_small.dcm", "MR_small.dcm")
    client.post("/api/holds", json={"study_uid": mr, "reason": "keep it"})
    plan = client.post("/api/plans", json={"policy": EXPIRE_ALL}).json()
    assert plan["summary"]["vetoes"] == {"legal_hold": 1}  # per protection: the studies it kept
    progress = _apply(client, service, plan["id"])
    assert progress["done"] == 1 and progress["plan_state"] == "applied"
    [q] = client.get("/api/quarantine").json()
    assert (q["study_uid"], q["rule"], q["plan"]) == (ct, "drop-everything", plan["id"])
    assert client.get("/api/studies", params={"modality": "CT"}).json() == []
    assert client.post(f"/api/quarantine/{ct}/restore", params={"by": "dr-undo"}).json()["study_uid"] == ct
    assert client.get("/api/quarantine").json() == []
    r = client.post(f"/api/quarantine/{ct}/restore")
    assert r.status_code == 400 and "not quarantined" in r.json()["detail"]
    assert client.post("/api/quarantine/1.2.3/restore").status_code == 404

    plan = client.post("/api/plans", json={"policy": EXPIRE_ALL}).json()
    _apply(client, service, plan["id"])
    assert [q["study_uid"] for q in client.get("/api/purge").json()] == [ct]  # quarantine_days = 0: due now
    report = client.post("/api/purge", params={"by": "dr-purge"}).json()
    assert report["purged"] == [ct] and report["bytes_freed"] > 0 and report["problems"] == []
    assert list(service.tier("hot").keys()) and _tiers(client, mr) == {"hot"}
    assert client.get("/api/purge").json() == []
    assert any(e["action"] == "study.purge" and e["actor"] == "dr-purge"
               for e in client.get("/api/audit", params={"study_uid": ct}).json())


def test_audit_list_and_verify(client: TestClient, service: ArchiveService, pydicom_test_files: Path) -> None:
    [ct] = _import(service, pydicom_test_files, "CT_small.dcm")
    client.post("/api/holds", json={"study_uid": ct, "reason": "r1"})
    client.post("/api/plans", json={"policy": TO_WARM})
    entries = client.get("/api/audit").json()
    assert len(entries) >= 2 and all(e["hash"] for e in entries)
    assert client.get("/api/audit", params={"limit": 1, "offset": 1}).json() == entries[1:2]
    assert client.get("/api/audit", params={"offset": len(entries)}).json() == []
    assert client.get("/api/audit/verify").json() == {"intact": True, "breaks": []}
    # pages, newest first and counts come from SQL, and agree with the whole trail
    ids = [e["id"] for e in entries]
    assert [e.id for e in service.audit(limit=2, newest_first=True)] == ids[::-1][:2]
    assert [e.id for e in service.audit(limit=2, offset=1, newest_first=True)] == ids[::-1][1:3]
    assert service.audit_count() == len(entries)
    about_ct = [e["id"] for e in entries if e["study_uid"] == ct]
    assert about_ct and service.audit_count(study_uid=ct) == len(about_ct)
    assert [e.id for e in service.audit(study_uid=ct, limit=1, newest_first=True)] == about_ct[-1:]


# -- tiers ----------------------------------------------------------------------------------


def test_tiering_and_watermarks(client: TestClient, service: ArchiveService, pydicom_test_files: Path) -> None:
    _import(service, pydicom_test_files, "CT_small.dcm")
    shown = client.get("/api/tiering").json()
    assert [t["tier"] for t in shown["tiers"]] == ["hot", "warm"] and "promotions_per_minute" in shown
    preview = client.get("/api/tiering/preview").json()
    assert preview["summary"]["studies"] >= 0 and client.get("/api/plans").json() == []  # nothing stored
    created = client.post("/api/tiering/plans", json={"by": "ops"})
    assert created.status_code == 201 and created.json()["created_by"] == "ops"
    assert client.get("/api/watermarks").json() == []  # no tier has a high_watermark
    assert client.get("/api/watermarks/preview").json() == []
    assert client.post("/api/watermarks/run", json={}).json() == []
    assert client.get("/api/worm").json() == []  # no tier is WORM


def test_worm_status_over_http(home: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    write_config(home, catalog_url, extra='[tiers.locked]\nkind = "filesystem"\npath = "tiers/locked"\nfsync = false\n'
                                          'worm = "governance"\nretain_days = 30\n')
    service = ArchiveService.open(load_settings(home=home, env={}))
    try:
        with TestClient(create_app(service, auth=False)) as client:
            [ct] = _import(service, pydicom_test_files, "CT_small.dcm")
            plan = client.post("/api/plans", json={"policy": TO_WARM.replace("warm}", "locked}")}).json()
            assert _apply(client, service, plan["id"])["done"] == 1
            [w] = client.get("/api/worm").json()
            assert (w["tier"], w["worm"], w["retain_days"], w["locked"]) == ("locked", "governance", 30, 1)
            assert w["locked_until"].endswith(("+00:00", "Z"))  # a timestamp with its offset
            assert _tiers(client, ct) == {"locked"}
    finally:
        service.close()


# -- analytics and fixity ---------------------------------------------------------------------


def test_stats_cost_and_verify(client: TestClient, service: ArchiveService, pydicom_test_files: Path,
                               tmp_path: Path) -> None:
    ct, mr = _import(service, pydicom_test_files, "CT_small.dcm", "MR_small.dcm")
    stats = client.get("/api/stats", params={"largest": 1}).json()
    assert stats["totals"]["studies"] == 2 and len(stats["largest_studies"]) == 1
    (service.settings.home / "site.yaml").write_text(TO_WARM)
    cost = client.get("/api/cost", params={"years": 2, "policy_path": "site.yaml"}).json()
    assert cost["years"] == 2 and len(cost["scenarios"]) == 3  # first tier only, as it is, the policy
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(TO_WARM)
    r = client.get("/api/cost", params={"policy_path": str(outside)})
    assert r.status_code == 400 and "outside ILM_HOME" in r.json()["detail"]

    assert client.post("/api/verify", json={"study_uid": ct}).json()["clean"] is True
    [key] = [k for k in service.tier("hot").keys() if k.startswith(ct)]
    stored = service.settings.resolve("tiers/hot") / key
    stored.write_bytes(b"X" + stored.read_bytes()[1:])  # one changed byte
    report = client.post("/api/verify", json={"study_uid": ct, "by": "night-check"}).json()
    assert (report["bad"], report["remaining"], report["clean"]) == (1, 1, False)
    assert "never deleted" in report["problems"][0]["kept_because"]
    assert client.get("/api/fixity").json()["bad"] == 1
    assert client.post("/api/verify", json={"study_uid": mr}).json()["clean"] is True
    assert client.post("/api/verify", json={"study_uid": "not-a-uid"}).status_code == 422
