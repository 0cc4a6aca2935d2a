"""Storage by tier over time (ilm.history): snapshots recorded by ilm stats --snapshot, after a
folder import and after a move; the past reconstructed from received_at and the moves journal;
the history in ilm stats --json, the REST stats route and the cost's growth. Both catalogs."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import pydicom
import sqlalchemy as sa
from typer.testing import CliRunner

from ilm.analytics import CostOptions
from ilm.catalog.schema import received_history, tier_history
from ilm.cli import app
from ilm.lifecycle.move import move_study
from ilm.service import ArchiveService

runner = CliRunner()
NOW = datetime(2026, 6, 20, 12, 0, tzinfo=timezone.utc)


def _study(service: ArchiveService, src: Path, tmp: Path, n: int, root: str) -> tuple[str, int]:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = f"{root}.1"
    ds.SeriesInstanceUID = f"{root}.2"
    for i in range(n):
        ds.SOPInstanceUID = f"{root}.3.{i + 1}"
        p = tmp / f"{root}-{i}.dcm"
        ds.save_as(p)
        assert service.ingest_path(p).status.value == "stored"
    d = service.study(str(ds.StudyInstanceUID))
    assert d is not None
    return str(ds.StudyInstanceUID), d.summary.size_bytes


def _backdate(service: ArchiveService, uid: str, received: str, moved: str | None = None) -> None:
    with service.catalog.write() as c:
        c.execute(sa.text("UPDATE studies SET received_at = :r WHERE study_uid = :u"),
                  {"r": datetime.fromisoformat(received), "u": uid})
        if moved:
            c.execute(sa.text("UPDATE moves SET updated_at = :m WHERE instance_pk IN (SELECT i.id FROM instances i "
                              "JOIN studies s ON s.id = i.study_pk WHERE s.study_uid = :u)"),
                      {"m": datetime.fromisoformat(moved), "u": uid})


def test_first_snapshot_reconstructs_the_past_from_received_at_and_moves(
        service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    # study A arrived in January on hot and moved to warm in March; study B arrived in April and stays on hot
    a, a_bytes = _study(service, pydicom_test_files / "CT_small.dcm", tmp_path, 4, "1.2.826.0.1.3680043.10.901")
    b, b_bytes = _study(service, pydicom_test_files / "MR_small.dcm", tmp_path, 3, "1.2.826.0.1.3680043.10.902")
    assert move_study(service.catalog, service.tier, a, "warm").ok
    _backdate(service, a, "2026-01-15T08:00:00+00:00", "2026-03-10T02:00:00+00:00")
    _backdate(service, b, "2026-04-02T09:00:00+00:00")
    service.clock = lambda: NOW
    snap = service.snapshot_tiers()
    assert snap.day == date(2026, 6, 20) and snap.backfilled_months == 5  # January .. May
    hist = {m["month"]: m for m in service.tier_history()}
    assert list(hist) == ["2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06"]
    on = {m: {t: v["bytes"] for t, v in e["tiers"].items()} for m, e in hist.items()}
    assert on["2026-01"] == on["2026-02"] == {"hot": a_bytes}
    assert on["2026-03"] == {"warm": a_bytes}
    assert on["2026-04"] == on["2026-05"] == {"hot": b_bytes, "warm": a_bytes}
    assert on["2026-06"] == {"hot": b_bytes, "warm": a_bytes}  # today's snapshot, recorded
    assert hist["2026-06"]["tiers"]["warm"] == {"studies": 1, "instances": 4, "bytes": a_bytes}
    assert all(hist[m]["reconstructed"] for m in list(hist)[:5])
    assert hist["2026-06"]["day"] == "2026-06-20"
    assert hist["2026-01"]["received"]["bytes"] == a_bytes and hist["2026-04"]["received"]["studies"] == 1

    # a second snapshot the same day replaces the day's rows and reconstructs nothing again
    again = service.snapshot_tiers()
    assert again.backfilled_months == 0
    with service.catalog.read() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(tier_history)
                         .where(tier_history.c.day == date(2026, 6, 20))).scalar_one() == 2


def test_snapshot_after_import_and_in_stats_json(home: Path, service: ArchiveService, pydicom_test_files: Path,
                                                 tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    ds.save_as(src / "a.dcm")
    report = service.import_paths([src])
    assert report.stored == 1
    history = service.tier_history()  # the import recorded today's storage
    assert history and history[-1]["tiers"]["hot"]["studies"] == 1 and not history[-1]["reconstructed"]
    service.close()
    r = runner.invoke(app, ["stats", "--json", "--snapshot", "--home", str(home)])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["tier_history"][-1]["tiers"]["hot"]["bytes"] == s["totals"]["bytes"]
    r = runner.invoke(app, ["stats", "--snapshot", "--home", str(home)])
    assert r.exit_code == 0 and "recorded storage by tier" in r.output and "Storage by tier over time" in r.output


def test_recorded_arrivals_raise_the_growth_of_the_projection(service: ArchiveService, pydicom_test_files: Path,
                                                              tmp_path: Path) -> None:
    # a month whose studies were deleted since: the catalog no longer shows them, the snapshot did
    _study(service, pydicom_test_files / "CT_small.dcm", tmp_path, 2, "1.2.826.0.1.3680043.10.903")
    today = date(2026, 6, 30)
    before = service.cost([], today=today, options=CostOptions(years=1))
    with service.catalog.write() as c:
        c.execute(sa.insert(received_history), [{"day": date(2026, 2, 3), "studies": 50, "instances": 500,
                                                  "size_bytes": 12 * 10**9, "reconstructed": False,
                                                  "recorded_at": NOW}])
    after = service.cost([], today=today, options=CostOptions(years=1))
    assert after["growth"]["bytes_per_month"] == before["growth"]["bytes_per_month"] + 10**9
    assert "snapshots" in after["growth"]["source"] and "snapshots" not in before["growth"]["source"]


def test_dashboard_overview_and_rest_stats_show_the_history(service: ArchiveService, pydicom_test_files: Path,
                                                            tmp_path: Path) -> None:
    import httpx

    from support.http import serve
    from ilm.web import create_app

    a, a_bytes = _study(service, pydicom_test_files / "CT_small.dcm", tmp_path, 2, "1.2.826.0.1.3680043.10.904")
    _backdate(service, a, "2026-04-02T09:00:00+00:00")
    token = service.token_create("t-viewer", "viewer", expires=None, by="test")[1]
    with serve(create_app(service, auth=True)) as url:
        with httpx.Client(base_url=url, cookies={"ilm_token": token},
                          headers={"Accept": "text/html"}) as viewer:
            page = viewer.get("/")
            assert page.status_code == 200 and "no snapshot of storage by tier yet" in page.text
            service.snapshot_tiers()
            service._overview.invalidate()  # the page's figures are a minute old at most; here: now
            page = viewer.get("/")
            assert page.status_code == 200
            chart = page.text.split('id="chart-tier-history"')[1].split("</div>")[0]
            assert "<svg" in chart and "Storage by tier over time" in chart and "hot" in chart
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as api:
            stats = api.get("/api/stats").json()
    hist = {m["month"]: m for m in stats["tier_history"]}
    assert hist["2026-04"]["reconstructed"] and hist["2026-04"]["tiers"]["hot"]["bytes"] == a_bytes
    assert stats["tier_history"][-1]["tiers"]["hot"]["studies"] == 1


def test_rest_snapshot_needs_the_operator_role(service: ArchiveService) -> None:
    import httpx

    from support.http import serve
    from ilm.web import create_app

    viewer = service.token_create("t-viewer", "viewer", expires=None, by="test")[1]
    operator = service.token_create("t-operator", "operator", expires=None, by="test")[1]
    with serve(create_app(service, auth=True)) as url:
        r = httpx.post(f"{url}/api/stats/snapshot", headers={"Authorization": f"Bearer {viewer}"})
        assert r.status_code == 403 and service.tier_history() == []
        r = httpx.post(f"{url}/api/stats/snapshot", headers={"Authorization": f"Bearer {operator}"})
        assert r.status_code == 200 and r.json()["day"] == service.clock().date().isoformat()
    assert r.json()["tiers"] == {}  # an empty archive: nothing on any tier, today's arrivals (none) recorded
    assert service.tier_history()[-1]["month"] == r.json()["day"][:7]
