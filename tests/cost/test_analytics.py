"""ilm stats and ilm cost on a synthetic archive, on SQLite and PostgreSQL.

The archive is ``ilm synth --catalog-only`` (300 studies on the hot tier, its
access history replayed into the access log); the expected figures are
computed in Python from the same synthetic plan, so the SQL aggregates are
checked against an independent count.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ilm.analytics import CostOptions
from ilm.catalog.analytics import DAYS_PER_MONTH, SIZE_BUCKETS
from ilm.cli import app
from cost_archive import CT_TO_WARM, GB, NOW, TODAY, archive, write_cost_config  # noqa: F401 (the fixture)
from ilm.config import load_settings
from ilm.cost.projection import AGE_BUCKETS
from ilm.service import ArchiveService
from ilm.synth.plan import StudySpec

runner = CliRunner()


def _start(s: StudySpec) -> datetime:
    if s.study_date_raw:
        return datetime.combine(s.study_date, time(), tzinfo=timezone.utc)
    return datetime.combine((s.acquired_at + timedelta(minutes=10)).date(), time(), tzinfo=timezone.utc)  # the day received


def _size(s: StudySpec) -> int:
    return sum(x.instance_count * x.instance_bytes for x in s.series)


def _instances(s: StudySpec) -> int:
    return sum(x.instance_count for x in s.series)


def _bucket(value: float, bounds: list[float]) -> int:
    return next((i for i, b in enumerate(bounds) if value < b), len(bounds))


def test_stats_match_the_synthetic_plan(archive: tuple[Path, list[StudySpec]]) -> None:
    home, specs = archive
    r = runner.invoke(app, ["stats", "--json", "--as-of", TODAY.isoformat(), "--home", str(home)])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["totals"]["studies"] == len(specs)
    assert s["totals"]["bytes"] == sum(_size(x) for x in specs)
    assert s["totals"]["patients"] == len({x.patient.patient_id for x in specs})
    # composition by study year (no date: its own row), by tier (all hot), by size bucket
    years = Counter(str(x.study_date.year) if x.study_date_raw else "(no date)" for x in specs)
    assert {r["key"]: r["studies"] for r in s["by_year"]} == dict(years)
    assert s["by_tier"] == [{"key": "hot", "studies": len(specs), "instances": sum(_instances(x) for x in specs),
                             "bytes": s["totals"]["bytes"], "share": 1.0}]
    sizes = Counter(_bucket(_size(x), list(SIZE_BUCKETS)) for x in specs)
    got = {r["key"]: r["studies"] for r in s["by_size"]}
    assert sorted(got.values()) == sorted(sizes.values()) and sum(got.values()) == len(specs)
    # modalities in study: each combination its own row ("CT", "CT+PT")
    combos = Counter("+".join(sorted({se.modality for se in x.series})) for x in specs)
    assert {r["key"]: r["studies"] for r in s["by_modality"]} == dict(combos)
    ct = [x for x in specs if {se.modality for se in x.series} == {"CT"}]
    row = next(r for r in s["by_modality"] if r["key"] == "CT")
    assert (row["studies"], row["bytes"]) == (len(ct), sum(_size(x) for x in ct))
    # growth: studies received per month
    months = Counter((x.acquired_at + timedelta(minutes=10)).strftime("%Y-%m") for x in specs)
    assert {m["month"]: m["studies"] for m in s["growth"]["by_month"]} == dict(months)
    # reads by study age, over the last 365 days: every replayed read in the window, bucketed
    bounds = [m * DAYS_PER_MONTH for m in AGE_BUCKETS]
    since = NOW - timedelta(days=365)
    reads = Counter(_bucket((at - _start(x)).total_seconds() / 86400, bounds)
                    for x in specs for at in x.accesses if at >= since)
    assert [b["reads"] for b in s["reads_by_age"]["buckets"]] == [reads.get(k, 0) for k in range(len(bounds) + 1)]
    assert sum(reads.values()) > 0
    # reads fall off with age: the first month is read far more than studies five years old
    rates = [b["monthly_read_rate"] for b in s["reads_by_age"]["buckets"]]
    assert rates[0] > 10 * rates[6]
    # never read after N days
    for row in s["never_read_after"]:
        n = row["days"]
        older = [x for x in specs if (NOW - _start(x)).total_seconds() / 86400 > n]
        unread = [x for x in older if not x.accesses or (x.accesses[-1] - _start(x)).total_seconds() / 86400 <= n]
        assert (row["studies_older"], row["never_read_after"]) == (len(older), len(unread))
    # patients with priors
    per = Counter(x.patient.patient_id for x in specs)
    assert s["patients"]["with_priors"] == sum(1 for n in per.values() if n >= 2)
    # largest studies, largest first
    big = sorted((_size(x) for x in specs), reverse=True)[:10]
    assert [r["size_bytes"] for r in s["largest_studies"]] == big


def test_cost_baseline_and_policy_by_hand(archive: tuple[Path, list[StudySpec]], tmp_path: Path) -> None:
    home, specs = archive
    policy = tmp_path / "ct.yaml"
    policy.write_text(CT_TO_WARM)
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        r = svc.cost([policy], today=TODAY, options=CostOptions(years=2, growth_gb_per_month=0.0))
    finally:
        svc.close()
    total = sum(_size(x) for x in specs)
    # everything is on hot at 0.10/GB-month, hot reads and writes are free, nothing arrives:
    # the baseline and the archive as it is cost 12 x bytes/GB x 0.10 a year
    assert r["current"]["monthly_storage"] == pytest.approx(total / GB * 0.10, abs=1e-4)
    base, as_is, ct = r["scenarios"]
    assert (base["kind"], as_is["kind"], ct["kind"], ct["policy"]) == ("baseline", "as-is", "policy", str(policy))
    for sc in (base, as_is):
        assert [y["total"] for y in sc["years"]] == pytest.approx([12 * total / GB * 0.10] * 2, abs=2e-4)
    assert r["sample"] == {"studies": len(specs), "of": len(specs), "templates": r["sample"]["templates"],
                           "scale": 1.0}
    # the policy moves, today, the CT studies older than two years (dated ones): their instances
    # cost 0.05 per 1,000 PUTs on warm; they then cost 0.03 instead of 0.10 a GB-month
    old_ct = [x for x in specs if x.study_date_raw and any(se.modality == "CT" for se in x.series)
              and x.study_date.replace(year=x.study_date.year + 2) < TODAY]
    moved = sum(_size(x) for x in old_ct)
    assert old_ct and ct["bytes_moved_now"] == moved and ct["studies_moved_now"] == len(old_ct)
    assert ct["one_time_now"] == pytest.approx(sum(_instances(x) for x in old_ct) / 1000 * 0.05, abs=1e-4)
    assert ct["monthly_after"] == pytest.approx((total - moved) / GB * 0.10 + moved / GB * 0.03, abs=1e-4)
    assert ct["savings"] > 0 and ct["total"] < base["total"]
    assert ct["years"][1]["bytes_by_tier"]["warm"] >= moved


def test_cheap_tier_read_often_costs_its_reads(archive: tuple[Path, list[StudySpec]], tmp_path: Path,
                                               catalog_url: str) -> None:
    home, _ = archive
    policy = tmp_path / "ct.yaml"
    policy.write_text(CT_TO_WARM)
    out = []
    for price in (0.0, 5.0):
        write_cost_config(home, catalog_url, warm_retrieval=price)
        r = runner.invoke(app, ["cost", "--json", "--years", "2", "--growth-gb-per-month", "0", "--as-of",
                                TODAY.isoformat(), "--policy", str(policy), "--home", str(home)])
        assert r.exit_code == 0, r.output
        out.append(json.loads(r.output)["scenarios"][2])
    free, dear = out
    # the reads of moved studies are priced on warm: more retrieval, same storage
    assert free["years"][0]["retrieval"] == 0.0 and dear["years"][0]["retrieval"] > 0.0
    assert dear["years"][0]["storage"] == free["years"][0]["storage"]


def test_cost_growth_from_history_and_given(archive: tuple[Path, list[StudySpec]]) -> None:
    home, specs = archive
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        hist = svc.cost([], today=TODAY, options=CostOptions(years=1))
        given = svc.cost([], today=TODAY, options=CostOptions(years=1, growth_gb_per_month=100, growth_percent=0))
    finally:
        svc.close()
    # the last 12 full months before June 2026: June 2025 .. May 2026
    recent = [x for x in specs if "2025-06" <= (x.acquired_at + timedelta(minutes=10)).strftime("%Y-%m") <= "2026-05"]
    assert hist["growth"]["bytes_per_month"] == int(sum(_size(x) for x in recent) / 12)
    assert given["growth"]["bytes_per_month"] == 100 * 10**9 and given["growth"]["source"] == "given"
    # 100 GB a month on hot: month m holds m+1 arrivals; year 1 adds 78 x 100 GB-months x 0.10 = 780.00
    base_no_growth = 12 * sum(_size(x) for x in specs) / GB * 0.10
    assert given["scenarios"][0]["years"][0]["total"] == pytest.approx(base_no_growth + 780.0, abs=0.02)


def test_cost_refuses_bad_input(archive: tuple[Path, list[StudySpec]], tmp_path: Path) -> None:
    home, _ = archive
    missing = runner.invoke(app, ["cost", "--policy", str(tmp_path / "nope.yaml"), "--home", str(home)])
    assert missing.exit_code == 2 and "nope.yaml" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nrules:\n  - id: x\n    when: {study_age: {older_than: P2Y}}\n"
                   "    action: {transition: nowhere}\n")
    r = runner.invoke(app, ["cost", "--policy", str(bad), "--home", str(home)])
    assert r.exit_code == 2 and "bad.yaml:5" in r.output and "nowhere" in r.output
    r = runner.invoke(app, ["cost", "--years", "0", "--home", str(home)])
    assert r.exit_code == 2


def test_held_by_age_agrees_with_the_grouped_scan(archive: tuple[Path, list[StudySpec]]) -> None:
    # ilm cost reads the age buckets with conditional sums, ilm stats from the grouped scan: same figures
    from ilm.catalog.analytics import held_by_age, received_by_month

    home, specs = archive
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        s = svc.stats(today=TODAY)
        with svc.catalog.read() as conn:
            held = held_by_age(conn, TODAY, AGE_BUCKETS)
            months = received_by_month(conn, NOW - timedelta(days=400))
    finally:
        svc.close()
    assert [(n, i, b) for _k, n, i, b in held] == [(r["studies"], r["instances"], r["bytes"])
                                                   for r in s["reads_by_age"]["buckets"]]
    assert sum(n for _k, n, _i, _b in held) == len(specs)
    recent = {m["month"]: (m["studies"], m["bytes"]) for m in s["growth"]["by_month"] if m["month"] >= "2025-06"}
    assert {m: (n, b) for m, n, b in months if m >= "2025-06"} == recent


def test_cost_groups_agree_with_the_separate_aggregates(archive: tuple[Path, list[StudySpec]]) -> None:
    # ilm cost reads the studies in one grouped pass (ilm.catalog.analytics.cost_groups); its sums
    # must be what the separate aggregates (age buckets, months received, bytes per tier) count
    import sqlalchemy as sa

    from ilm.catalog.analytics import cost_groups, held_by_age, received_by_month
    from ilm.catalog.plans import tier_bytes
    from ilm.catalog.schema import studies

    home, specs = archive
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        with svc.catalog.write() as conn:  # one study in the middle of a move, one on warm only
            ids = [i for (i,) in conn.execute(sa.select(studies.c.id).order_by(studies.c.id).limit(2))]
            conn.execute(sa.update(studies).where(studies.c.id == ids[0]).values(tiers="hot\\warm"))
            conn.execute(sa.update(studies).where(studies.c.id == ids[1]).values(tiers="warm"))
        since = datetime(TODAY.year - 3, 1, 1, tzinfo=timezone.utc)
        with svc.catalog.read() as conn:
            groups, on_tiers = cost_groups(conn, today=TODAY, bounds_months=AGE_BUCKETS, months_since=since)
            held = held_by_age(conn, TODAY, AGE_BUCKETS)
            months = received_by_month(conn, since)
            exact_tiers = tier_bytes(conn)
    finally:
        svc.close()
    assert [(k, n, i, b) for k, n, i, b in held] == [
        (k, sum(g.studies for g in groups if g.age_bucket == k), sum(g.instances for g in groups if g.age_bucket == k),
         sum(g.size_bytes for g in groups if g.age_bucket == k)) for k in range(len(AGE_BUCKETS) + 1)]
    by_month: dict[str, tuple[int, int]] = {}
    for g in groups:
        if g.month:
            n, b = by_month.get(g.month, (0, 0))
            by_month[g.month] = (n + g.studies, b + g.size_bytes)
    assert by_month == {m: (n, b) for m, n, b in months} and len(by_month) > 12
    assert on_tiers == exact_tiers and set(on_tiers) == {"hot", "warm"}
    assert sum(g.studies for g in groups) == len(specs)
