"""The scheduler applies only auto_apply policies without expiry; ilm serve
plans on start and recovers interrupted moves before serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import pydicom
import pytest

from conftest import write_config
from support.servers import free_port, wait_port

from ilm.catalog.copies import start_moves, study_copies
from ilm.config import load_settings
from ilm.service import ArchiveService

TIERING = """
name: nightly-tiering
auto_apply: true
rules:
  - id: to-warm
    when: {current_tier: hot, study_age: {older_than: P2Y}}
    action: {transition: warm}
"""
WITH_EXPIRY = TIERING + """
  - id: old
    when: {study_age: {older_than: P1Y}}
    action: expire
"""


def _service(tmp_path: Path, catalog_url: str, policy: str) -> ArchiveService:
    home = tmp_path / "home"
    write_config(home, catalog_url, extra='\n[lifecycle]\nschedule_policy = "policy.yaml"\n')
    (home / "policy.yaml").write_text(policy)
    return ArchiveService.open(load_settings(home=home, env={}))


def _old_study(service: ArchiveService, src: Path, tmp: Path) -> str:
    ds = pydicom.dcmread(src)
    ds.StudyDate = "20150101"
    ds.PatientBirthDate = "19500101"
    p = tmp / "old.dcm"
    ds.save_as(p)
    service.ingest_path(p)
    return str(ds.StudyInstanceUID)


def test_auto_apply_tiering_policy_is_applied(tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    service = _service(tmp_path, catalog_url, TIERING)
    try:
        uid = _old_study(service, pydicom_test_files / "CT_small.dcm", tmp_path)
        plan, report = service.scheduled_run()
        assert report is not None and report.done == 1
        assert service.study(uid).summary.tiers == ("warm",)  # type: ignore[union-attr]
        assert service.plan_get(plan.id).approved_by == "auto_apply (nightly-tiering)"  # type: ignore[union-attr]
    finally:
        service.close()


@pytest.mark.parametrize("policy", [WITH_EXPIRY, TIERING.replace("auto_apply: true", "auto_apply: false")],
                         ids=["has-expiry", "not-auto"])
def test_other_policies_wait_for_approval(tmp_path: Path, catalog_url: str, pydicom_test_files: Path, policy: str) -> None:
    service = _service(tmp_path, catalog_url, policy)
    try:
        uid = _old_study(service, pydicom_test_files / "CT_small.dcm", tmp_path)
        plan, report = service.scheduled_run(today=date.today() + timedelta(days=60))
        assert report is None
        assert service.plan_get(plan.id).state == "planned"  # type: ignore[union-attr]
        assert service.study(uid).summary.tiers == ("hot",)  # type: ignore[union-attr]
        assert service.study(uid).extra["state"] == "active"  # type: ignore[union-attr]
    finally:
        service.close()


@pytest.mark.dcmtk
def test_serve_recovers_moves_and_runs_schedule(tmp_path: Path, pydicom_test_files: Path) -> None:
    url = f"sqlite:///{tmp_path / 'home' / 'catalog.sqlite'}"
    service = _service(tmp_path, url, TIERING.replace("auto_apply: true", "auto_apply: false"))
    uid = _old_study(service, pydicom_test_files / "CT_small.dcm", tmp_path)
    with service.catalog.read() as c:
        copies = study_copies(c, uid)
    with service.catalog.write() as c:  # a crashed move: journaled and copied, never committed
        start_moves(c, copies, "warm", None, datetime.now())
    service.tier("warm").put(copies[0].key, service.tier("hot").get(copies[0].key))
    service.close()
    home = tmp_path / "home"
    dicom, http = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ILM_")} | {"ILM_HOME": str(home)}
    log = home / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ilm", "serve", "--dicom-port", str(dicom), "--http-port",
                                 str(http)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(http, timeout=60, proc=proc)
        deadline = time.monotonic() + 30
        while "waiting for approval" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert "1 rolled back" in text
        assert "waiting for approval" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert not (home / "tiers" / "warm" / copies[0].key).exists()
    plans = json.loads(subprocess.run([sys.executable, "-m", "ilm", "plan", "list", "--json"], env=env,
                                      capture_output=True, text=True, check=True).stdout)
    assert [p["created_by"] for p in plans] == ["ilm-scheduler"]
