"""The cost model, table-tested with cases computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from ilm.cost.model import (
    GB, TierPrice, early_deletion_cost, monthly_storage_cost, move_cost, read_cost, write_cost,
)
from ilm.cost.projection import (
    Cohort, Growth, ReadProfile, Scenario, Segment, project, read_profile,
)
from ilm.cost import shaping
from ilm.cost.simulate import monotone, path_of, reborn
from ilm.policy import PatientFacts, StudyFacts, parse_policy

HOT = TierPrice(0.10)
WARM = TierPrice(0.03, retrieval_per_gb=0.0, put_per_1000=0.0)
# S3 Glacier Instant Retrieval-like: 0.004/GB-month, 0.03/GB read, PUT 0.02/1000, GET 0.01/1000, 90 days minimum.
COLD = TierPrice(0.004, retrieval_per_gb=0.03, min_storage_days=90, put_per_1000=0.02, get_per_1000=0.01)
PACKED = TierPrice(0.004, retrieval_per_gb=0.03, min_storage_days=90, put_per_1000=0.02, get_per_1000=0.01,
                   packed=True)
PRICES = {"hot": HOT, "warm": WARM, "cold": COLD}


@pytest.mark.parametrize("nbytes_by_tier, expected", [
    # 1,000 GB hot at 0.10 = 100.00
    ({"hot": 1000 * GB}, 100.0),
    # 500 GB hot (50.00) + 2,000 GB cold at 0.004 (8.00) = 58.00
    ({"hot": 500 * GB, "cold": 2000 * GB}, 58.0),
    # a tier without a price costs nothing: 100 GB warm = 3.00, "tape" 0
    ({"warm": 100 * GB, "tape": 10**15}, 3.0),
])
def test_monthly_storage(nbytes_by_tier: dict[str, int], expected: float) -> None:
    assert monthly_storage_cost(nbytes_by_tier, PRICES) == pytest.approx(expected)


@pytest.mark.parametrize("nbytes, objects, studies, price, expected", [
    # 10 GB x 0.03 = 0.30, plus 2,000 GETs x 0.01/1000 = 0.02: 0.32
    (10 * GB, 2000, 4, COLD, 0.32),
    # packed: one GET per study, 4 x 0.01/1000 = 0.00004: 0.30004
    (10 * GB, 2000, 4, PACKED, 0.30004),
    # hot reads are free
    (10 * GB, 2000, 4, HOT, 0.0),
])
def test_read_cost(nbytes: int, objects: int, studies: int, price: TierPrice, expected: float) -> None:
    assert read_cost(nbytes, objects, price, studies) == pytest.approx(expected)


@pytest.mark.parametrize("objects, studies, price, expected", [
    (1_000_000, 10, COLD, 20.0),    # 1,000,000 PUTs x 0.02/1000 = 20.00
    (1_000_000, 10, PACKED, 0.0002),  # 10 studies = 10 PUTs x 0.02/1000
    (1_000_000, 10, HOT, 0.0),
])
def test_write_cost(objects: int, studies: int, price: TierPrice, expected: float) -> None:
    assert write_cost(objects, price, studies) == pytest.approx(expected)


@pytest.mark.parametrize("held_days, expected", [
    # 100 GB on COLD (0.004/GB-month, 90 days minimum) removed after 30 days:
    # 60 days left = 2 months of 30 days: 100 x 0.004 x 60/30 = 0.80
    (30, 0.80),
    # after 89.5 days: 0.5 day left: 100 x 0.004 x 0.5/30 = 0.006667
    (89.5, 100 * 0.004 * 0.5 / 30),
    (90, 0.0),   # the minimum served: nothing
    (400, 0.0),
])
def test_early_deletion(held_days: float, expected: float) -> None:
    assert early_deletion_cost(100 * GB, held_days, COLD) == pytest.approx(expected)


def test_move_cost_parts() -> None:
    # 100 GB in 50,000 instances of 100 studies, cold -> hot after 45 days:
    # read at cold 100 x 0.03 = 3.00 + 50,000 GETs x 0.01/1000 = 0.50 -> 3.50
    # write to hot: PUTs free -> 0
    # early deletion at cold: 45 days left x 100 GB x 0.004 / 30 = 0.60
    c = move_cost(100 * GB, 50_000, COLD, HOT, held_days=45, studies=100)
    assert (c.read, c.write, c.early_deletion) == pytest.approx((3.50, 0.0, 0.60))
    assert c.total == pytest.approx(4.10)
    # hot -> cold: read free; 50,000 PUTs x 0.02/1000 = 1.00; hot has no minimum
    c = move_cost(100 * GB, 50_000, HOT, COLD, held_days=0, studies=100)
    assert (c.read, c.write, c.early_deletion) == pytest.approx((0.0, 1.0, 0.0))


def _one(path: tuple[Segment, ...], *, nbytes: float = 1000 * GB, objects: float = 100_000, age: int = 0,
         held: float = 0.0) -> Scenario:
    return Scenario("s", [Cohort(nbytes, objects, 100, age, held, path)], first_tier="hot")


def test_projection_keep_hot_one_year() -> None:
    # 1,000 GB hot for 12 months: 12 x 100.00 = 1,200.00; nothing else
    p = project(_one((Segment(0, "hot"),)), PRICES, years=1)
    assert [y.total for y in p.years] == pytest.approx([1200.0])
    assert p.years[0].bytes_by_tier == {"hot": 1000 * GB}
    assert p.monthly_now == pytest.approx(100.0)


def test_projection_move_after_three_months() -> None:
    # 1,000 GB, 100,000 instances: hot for months 0-2 (3 x 100.00 = 300.00), then cold
    # for months 3-11 (9 x 4.00 = 36.00); the move in month 3: 100,000 PUTs x 0.02/1000 = 2.00.
    # Year 1: storage 336.00 + moves 2.00 = 338.00. Year 2: 12 x 4.00 = 48.00.
    p = project(_one((Segment(0, "hot"), Segment(3, "cold"))), PRICES, years=2)
    y1, y2 = p.years
    assert (y1.storage, y1.moves, y1.total) == pytest.approx((336.0, 2.0, 338.0))
    assert (y2.storage, y2.moves, y2.total) == pytest.approx((48.0, 0.0, 48.0))
    assert y2.bytes_by_tier == {"cold": 1000 * GB}
    assert p.total == pytest.approx(386.0)


def test_projection_move_now_then_expire_early() -> None:
    # Month 0: hot -> cold (2.00 of PUTs, the plan's one-time cost); cold months 0-1: 2 x 4.00 = 8.00;
    # expired in month 2 after 60 days on cold: 30 days left x 1,000 GB x 0.004 / 30 = 4.00.
    p = project(_one((Segment(0, "hot"), Segment(0, "cold"), Segment(2, None))), PRICES, years=1)
    y = p.years[0]
    assert (y.storage, y.moves) == pytest.approx((8.0, 6.0))
    assert y.bytes_by_tier == {}
    assert p.one_time_now == pytest.approx(2.0)
    assert p.monthly_after == pytest.approx(4.0)   # right after the move: 1,000 GB on cold
    assert p.monthly_now == pytest.approx(100.0)   # where it is today: hot
    assert p.bytes_moved_now == pytest.approx(1000 * GB)


def test_projection_retrieval_by_age() -> None:
    # Read rates: 10 % of objects a month under 1 month of age, 1 % from 1 to 3 months, then 0.
    # 1,000 GB on cold, 100,000 instances, age 0 at month 0:
    # month 0: 100 GB read x 0.03 = 3.00 + 10,000 GETs x 0.01/1000 = 0.10 -> 3.10
    # months 1, 2: 10 GB x 0.03 = 0.30 + 1,000 GETs -> 0.01 -> 0.31 each; total 3.72
    reads = ReadProfile((0.10, 0.01))
    p = project(_one((Segment(0, "cold"),)), PRICES, years=1, reads=reads)
    assert p.years[0].retrieval == pytest.approx(3.72)
    # the same on hot costs nothing to read
    p = project(_one((Segment(0, "hot"),)), PRICES, years=1, reads=reads)
    assert p.years[0].retrieval == 0.0


def test_read_profile_from_history() -> None:
    # 1,200 objects read in 12 months from 1,000 objects in the first bucket: 0.1 a month;
    # nothing held in the second bucket: rate 0
    prof = read_profile([1200, 50], [1000, 0], 12)
    assert prof.rates == pytest.approx((0.1, 0.0))
    assert prof.rate(0) == pytest.approx(0.1)
    assert prof.rate(500) == 0.0


def test_projection_growth_follows_templates() -> None:
    # No data today; 100 GB (10,000 instances) arrives every month, flat. New data follows a
    # template: hot for 2 months, then cold. Ingest PUTs on hot are free.
    # Month m holds: arrivals of months m-1..m on hot (at most 200 GB), older ones on cold.
    # Year 1 storage: hot = (1 + 2 x 11) x 100 GB x 0.10 = 23 x 10.00 = 230.00;
    # cold: arrivals of month k are on cold from month k+2: sum over m=2..11 of (m-1) x 100 GB
    #   = 100 GB x (1+...+10) = 5,500 GB-months x 0.004 = 22.00  -> storage 252.00
    # moves: 10 moves (months 2..11) of 100 GB / 10,000 instances: 10 x 0.20 of PUTs = 2.00
    tmpl = Cohort(100 * GB, 10_000, 1.0, 0, 0.0, (Segment(0, "hot"), Segment(2, "cold")))
    s = Scenario("g", [], [tmpl], first_tier="hot")
    p = project(s, PRICES, years=1, growth=Growth(100 * GB, 0.0))
    y = p.years[0]
    assert (y.storage, y.moves, y.ingest) == pytest.approx((252.0, 2.0, 0.0))
    assert y.bytes_by_tier == {"cold": 1000 * GB, "hot": 200 * GB}


def test_growth_rate() -> None:
    # 10 GB a month growing 21 % a year: month 12 (start of year 2) = 10 x 1.21 = 12.1; month 6 = 10 x 1.1
    a = Growth(10.0, 0.21).arrivals(13)
    assert (a[0], a[6], a[12]) == pytest.approx((10.0, 11.0, 12.1))


POLICY = """
name: t
rules:
  - id: ct-to-warm
    when: {modality: CT, current_tier: hot, study_age: {older_than: P2Y}}
    action: {transition: warm}
  - id: drop-old
    when: {study_age: {older_than: P5Y}}
    action: expire
protections: {}
"""


def test_path_of_places_changes_to_the_month() -> None:
    policy = parse_policy(POLICY, known_tiers=["hot", "warm"], source="t.yaml")
    # A CT of 2025-01-15 seen on 2026-01-15 (age 12 months): to warm when older than 2 years,
    # i.e. after 2027-01-15: month 12 is day round(12 x 30.4375) = 365 = 2027-01-15 itself (not older),
    # month 13 is day 396 = 2027-02-15: moved then. Expired when older than 5 years, after 2030-01-15:
    # month 48 is day 1461 = 2030-01-15 (not older), month 49 (2030-02-14). The default protections
    # hold: an adult (born 1970), no hold, 5-year minimum served.
    study = StudyFacts("1.2.3", patient_key="p", study_date=date(2025, 1, 15), study_date_raw="20250115",
                       birth_date=date(1970, 1, 1), birth_date_raw="19700101",
                       modalities=("CT",), size_bytes=GB, instance_count=10, tiers=("hot",),
                       received_at=datetime(2025, 1, 15))
    path = path_of(policy, study, PatientFacts("p", date(2025, 1, 15)), "hot", date(2026, 1, 15), 120)
    assert path == (Segment(0, "hot"), Segment(13, "warm"), Segment(49, None))
    # the same with the first probe at the horizon (the policy only ever starts to act)
    assert monotone(policy)
    assert path_of(policy, study, PatientFacts("p", date(2025, 1, 15)), "hot", date(2026, 1, 15), 120,
                   grows=True) == path
    # A study 3 years old today moves in month 0 (the plan's move)
    old = StudyFacts("1.2.4", patient_key="p", study_date=date(2023, 1, 1), modalities=("CT",), tiers=("hot",))
    assert path_of(policy, old, None, "hot", date(2026, 1, 15), 120)[:2] == (Segment(0, "hot"), Segment(0, "warm"))


def test_reborn_moves_every_date() -> None:
    s = StudyFacts("1", patient_key="p", study_date=date(2025, 3, 1), birth_date=date(1980, 3, 1),
                   received_at=datetime(2025, 3, 1, 10), last_accessed_at=datetime(2025, 9, 1))
    pat = PatientFacts("p", newest_study_date=date(2025, 3, 1), mammogram_dates=(date(2024, 3, 1),))
    s2, p2 = reborn(s, pat, date(2026, 3, 1))
    # 365 days later; the read of 2025-09-01 would be after arrival: capped at the arrival day
    assert s2.study_date == date(2026, 3, 1) and s2.birth_date == date(1981, 3, 1)
    assert s2.last_accessed_at == datetime(2026, 3, 1)
    assert p2 is not None and p2.newest_study_date == date(2026, 3, 1)
    assert p2.mammogram_dates == (date(2025, 3, 1),)


@pytest.mark.parametrize("when, action, grows", [
    ("{study_age: {older_than: P2Y}}", "{transition: warm}", True),
    ("{since_last_access: {older_than: P1Y}, modality: CT}", "expire", True),
    # an upper bound stops matching as the study ages: probe every year instead
    ("{study_age: {younger_than: P5Y}}", "{transition: warm}", False),
    ("{not: {modality: CT}}", "expire", False),
    # a keep rule on age could start to match later and stop a move
    ("{study_age: {older_than: P20Y}}", "keep", False),
    ("{labels: teaching}", "keep", True),
])
def test_monotone_policies(when: str, action: str, grows: bool) -> None:
    text = f"name: m\nrules:\n  - id: r\n    when: {when}\n    action: {action}\n"
    assert monotone(parse_policy(text, known_tiers=["hot", "warm"], source="m.yaml")) is grows


def test_worked_example_of_docs_cost_md() -> None:
    # docs/cost.md, "Worked example": 1,000 GB in 100,000 instances on hot, to cold at 3 months;
    # reads 1 % a month at 3-12 months. Keep on hot: 2 x 1,200.00. Policy: 336.00 + 2.00 + 2.79 + 48.00.
    reads = ReadProfile((0.0, 0.0, 0.01, 0.01))
    keep = project(_one((Segment(0, "hot"),)), PRICES, years=2, reads=reads)
    policy = project(_one((Segment(0, "hot"), Segment(3, "cold"))), PRICES, years=2, reads=reads)
    assert keep.total == pytest.approx(2400.0)
    assert policy.years[0].retrieval == pytest.approx(2.79)
    assert policy.total == pytest.approx(388.79)
    assert keep.total - policy.total == pytest.approx(2011.21)


def _months(first: str, n: int, studies: int, nbytes: int) -> list[tuple[str, int, int]]:
    y, m = map(int, first.split("-"))
    out = []
    for i in range(n):
        k = y * 12 + m - 1 + i
        out.append((f"{k // 12:04d}-{k % 12 + 1:02d}", studies, nbytes))
    return out


def test_growth_from_history() -> None:
    today = date(2026, 6, 30)
    # last 12 full months (2025-06 .. 2026-05): 120 studies, 12 x 1.21 GB; two years before
    # (2023-06 .. 2024-05): 120 studies, 12 x 1 GB. Rate: (14.52 / 12) ** 0.5 - 1 = 1.1 - 1 = 10 %.
    # June 2026 (not a full month yet) is left out.
    months = _months("2023-06", 12, 10, 10**9) + _months("2025-06", 12, 10, 121 * 10**7) + [("2026-06", 99, 10**12)]
    g = shaping.growth_from_history(months, today)
    assert g["bytes_per_month"] == pytest.approx(1.21e9) and g["yearly_rate"] == pytest.approx(0.1)
    # 5 studies a month (60 a year): too little history for a rate
    g = shaping.growth_from_history(_months("2023-06", 12, 5, 10**9) + _months("2025-06", 12, 5, 4 * 10**9), today)
    assert g["yearly_rate"] == 0.0 and "too little" in g["source"]
    # a tenfold year is held at +100 %
    g = shaping.growth_from_history(_months("2023-06", 12, 10, 10**9) + _months("2025-06", 12, 10, 10**11), today)
    assert g["yearly_rate"] == 1.0
