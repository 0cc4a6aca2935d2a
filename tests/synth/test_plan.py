"""The synthetic archive plan: pure, deterministic, and as realistic as RESEARCH.md says."""

from __future__ import annotations

import ast
import re
import sys
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path

import pytest

import ilm.synth.plan as plan_module
from ilm.dicom.parse import parse_da
from ilm.synth.plan import (
    DEFECTS,
    GRONINGEN,
    SOP,
    StudySpec,
    SynthConfig,
    age_string,
    generate,
    generate_blocks,
    plan,
    totals,
)
from ilm.uids import validate_uid

REF = date(2025, 6, 30)
MAMMO_CLASSES = {SOP["MG"], SOP["MG_PROCESSING"], SOP["BTO"]}


@pytest.fixture(scope="module")
def big() -> list[StudySpec]:
    return plan(SynthConfig(reference=REF, studies=8000, seed=7, scale=1.0))


def _years(a: date, b: date) -> float:
    return (b - a).days / 365.2425


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    cfg = SynthConfig(reference=REF, studies=400, seed=3)
    a, b = plan(cfg), plan(cfg)
    assert a == b
    c = plan(SynthConfig(reference=REF, studies=400, seed=4))
    assert {s.study_uid for s in a}.isdisjoint({s.study_uid for s in c})
    assert [s.study_date for s in a] != [s.study_date for s in c]
    # Another size is another archive: no UID is shared, so imports never conflict.
    d = plan(SynthConfig(reference=REF, studies=401, seed=3))
    assert {s.study_uid for s in a}.isdisjoint({s.study_uid for s in d})


def test_blocks_in_any_number_of_parts_give_the_same_plan() -> None:
    cfg = SynthConfig(reference=REF, studies=6000, seed=2)
    whole = list(generate(cfg))
    parts = [list(generate_blocks(cfg, p, 3)) for p in range(3)]
    merged: list[StudySpec] = []
    for i in range(max(len(p) for p in parts)):
        for p in parts:
            if i < len(p):
                merged.extend(p[i])
    assert merged == whole
    assert [s.position for s in whole] == list(range(6000))


def test_dates_span_fifteen_years_and_grow(big: list[StudySpec]) -> None:
    dates = [s.study_date for s in big]
    assert max(dates) < REF
    assert _years(min(dates), max(dates)) >= 14.5
    by_year = Counter(d.year for d in dates)
    full_years = range(REF.year - 14, REF.year)
    assert len([y for y in full_years if by_year[y] > 0]) == 14
    # 20 % a year: the newest full year has several times the studies of the oldest.
    assert by_year[REF.year - 1] > 5 * by_year[REF.year - 14]
    firsts = [sum(by_year[y] for y in range(y0, y0 + 3)) for y0 in range(REF.year - 14, REF.year - 2, 3)]
    assert firsts == sorted(firsts)


def test_growth_zero_is_flat() -> None:
    specs = plan(SynthConfig(reference=REF, studies=6000, growth=0.0, seed=1))
    by_year = Counter(s.study_date.year for s in specs)
    full = [by_year[y] for y in range(REF.year - 14, REF.year)]
    assert max(full) < 1.5 * min(full)


def test_modality_mix(big: list[StudySpec]) -> None:
    t = totals(big)
    assert {"CT", "MR", "CR", "DX", "US", "MG", "NM", "PT", "XA", "OT"} <= set(t.by_modality)
    share = {m: n / t.studies for m, n in t.by_modality.items()}
    assert 0.25 < share["CR"] + share["DX"] < 0.45
    assert 0.12 < share["CT"] < 0.25
    assert 0.07 < share["MG"] < 0.13
    assert 0.15 < share["US"] < 0.30
    # CT holds the most bytes (about half of storage in real archives).
    assert t.bytes_by_modality.most_common(1)[0][0] == "CT"
    assert 0.35 < t.bytes_by_modality["CT"] / t.size_bytes < 0.6
    # PET/CT studies carry both modalities.
    assert any(set(s.modalities) == {"CT", "PT"} for s in big)
    # Real-world sizes at scale 1: CT slice 512 KB, CR image about 7.5 MB.
    ct = next(se for s in big for se in s.series if se.modality == "CT")
    assert 500_000 < ct.instance_bytes < 600_000
    cr = next(se for s in big for se in s.series if se.modality == "CR")
    assert 7_000_000 < cr.instance_bytes < 8_000_000


def test_about_fifteen_percent_children_some_now_adults(big: list[StudySpec]) -> None:
    child = [s for s in big if s.is_child]
    assert 0.12 < len(child) / len(big) < 0.18
    assert all(s.age_at_study >= 0 for s in big)
    now_adult = [s for s in child if _years(s.patient.birth_date, REF) >= 18]
    assert len(now_adult) > 0.1 * len(child)
    # Children with priors, and a few who turned 18 between two studies.
    by_patient: dict[str, list[StudySpec]] = defaultdict(list)
    for s in big:
        by_patient[s.patient.patient_id].append(s)
    kids = [v for v in by_patient.values() if v[0].patient.kind == "child"]
    assert any(len(v) > 1 for v in kids)
    assert any(v[0].is_child and not v[-1].is_child for v in kids)
    # Patient ages as written are DICOM AS, in days, months or years.
    ages = {s.patient_age[-1] for s in big if not s.defects and s.patient_age}
    assert ages == {"D", "M", "Y"} or ages >= {"M", "Y"}


def test_repeat_patients_with_priors(big: list[StudySpec]) -> None:
    by_patient: dict[str, list[StudySpec]] = defaultdict(list)
    for s in big:
        by_patient[s.patient.patient_id].append(s)
    assert len(by_patient) == totals(big).patients == round(8000 / 2.5)
    repeat = [v for v in by_patient.values() if len(v) > 1]
    assert len(repeat) > 0.3 * len(by_patient)
    for v in repeat:
        assert [s.study_date for s in v] == sorted(s.study_date for s in v)
        assert len({(s.patient.birth_date, s.patient.sex, s.patient.name) for s in v}) == 1
    # Follow-ups repeat the protocol: priors to compare with.
    assert sum(1 for v in repeat for a, b in zip(v, v[1:]) if a.description == b.description) > 0.2 * len(repeat)
    # Priors are opened when the patient comes back.
    compared = 0
    for v in repeat:
        for prior, new in zip(v, v[1:]):
            t0 = new.acquired_at
            if any(t0 <= a <= t0 + timedelta(hours=11) for a in prior.accesses):
                compared += 1
    assert compared > 0.05 * sum(len(v) - 1 for v in repeat)


def test_mammography_screening_and_sop_classes(big: list[StudySpec]) -> None:
    mammo = [s for s in big if "MG" in s.modalities or any(se.sop_class_uid in MAMMO_CLASSES for se in s.series)]
    classes = {se.sop_class_uid for s in mammo for se in s.series}
    assert {SOP["MG"], SOP["BTO"], SOP["SC"]} <= classes
    assert SOP["MG_PROCESSING"] in classes
    sc = [se for s in big for se in s.series if se.sop_class_uid == SOP["SC"]]
    assert sc and all(se.body_part == "BREAST" for se in sc)
    assert {se.modality for se in sc} == {"MG", "OT"}
    # Secondary Capture tomosynthesis stored as modality OT is still a breast study.
    ot_only = [s for s in big if "OT" in s.modalities]
    assert ot_only and all("BREAST" in {se.body_part for se in s.series} for s in ot_only)
    # 2D views are four per exam; tomosynthesis grows over the last ten years.
    assert all(se.instance_count == 4 for s in mammo for se in s.series if se.sop_class_uid == SOP["MG"])
    tomo_years = [s.study_date.year for s in mammo if any(se.sop_class_uid in (SOP["BTO"], SOP["SC"]) for se in s.series)]
    assert min(tomo_years) >= REF.year - 11
    # Screening women come back every year: both MQSA cases (a later mammogram, and none).
    women: dict[str, list[StudySpec]] = defaultdict(list)
    for s in mammo:
        women[s.patient.patient_id].append(s)
    assert all(v[0].patient.sex == "F" for v in women.values())
    yearly = [v for v in women.values() if len(v) >= 3]
    assert yearly
    gaps = [(b.study_date - a.study_date).days for v in yearly for a, b in zip(v, v[1:])]
    assert sum(1 for g in gaps if 330 <= g <= 400) > 0.7 * len(gaps)
    assert any(len(v) == 1 for v in women.values())


def test_missing_fact_rate_is_honoured() -> None:
    n = 10000
    specs = plan(SynthConfig(reference=REF, studies=n, seed=9, missing_rate=0.05))
    bad = [s for s in specs if s.defects]
    assert abs(len(bad) / n - 0.05) < 0.012
    kinds = Counter(d for s in bad for d in s.defects)
    assert set(kinds) == set(DEFECTS)
    for s in bad:
        if "no_study_date" in s.defects:
            assert s.study_date_raw == ""
        if "bad_birth_date" in s.defects:
            assert s.patient.birth_date_raw and parse_da(s.patient.birth_date_raw) is None
        if "no_birth_date" in s.defects:
            assert s.patient.birth_date_raw == "" and s.patient_age == ""
        if "odd_patient_age" in s.defects:
            assert not re.fullmatch(r"\d{3}[DWMY]", s.patient_age) or int(s.patient_age[:3]) > 150
    garbled = {s.patient.patient_id for s in bad if {"bad_birth_date", "no_birth_date"} & set(s.defects)}
    for s in specs:
        if not s.defects:
            assert parse_da(s.study_date_raw) == s.study_date
            assert s.patient_age == age_string(s.patient.birth_date, s.study_date)
            if s.patient.patient_id not in garbled:
                assert parse_da(s.patient.birth_date_raw) == s.patient.birth_date
    assert not any(s.defects for s in plan(SynthConfig(reference=REF, studies=2000, missing_rate=0.0)))


def test_uids_valid_and_unique(big: list[StudySpec]) -> None:
    uids: list[str] = []
    for s in big:
        uids.append(validate_uid(s.study_uid))
        for se in s.series:
            uids.append(validate_uid(se.series_uid))
            uids.append(validate_uid(se.sop_instance_uid(1)))
            last = validate_uid(se.sop_instance_uid(se.instance_count))
            if se.instance_count > 1:
                uids.append(last)
    assert all(len(u) <= 64 and not re.search(r"\.0\d", u) for u in uids)
    assert len(uids) == len(set(uids))
    assert len({s.accession_number for s in big}) == len(big)
    assert all(len(s.accession_number) <= 16 and len(s.study_id) <= 16 for s in big)
    assert all(len(s.patient.patient_id) <= 64 for s in big)


def test_access_history_falls_off_with_age(big: list[StudySpec]) -> None:
    now = SynthConfig(reference=REF).now
    for s in big:
        assert list(s.accesses) == sorted(s.accesses)
        assert all(s.acquired_at < a < now for a in s.accesses)
        assert s.last_accessed_at == (max(s.accesses) if s.accesses else None)
    # Studies old enough for every age bucket: about half are never read after
    # their first month; reads of studies over a year old follow Groningen.
    old = [s for s in big if _years(s.study_date, REF) > 7.5]
    assert len(old) > 500
    never = sum(1 for s in old if not any((a - s.acquired_at).days > 31 for a in s.accesses))
    assert 0.4 < never / len(old) < 0.6
    buckets: Counter[int] = Counter()
    for s in old:
        for a in s.accesses:
            y = (a - s.acquired_at).days / 365.2425
            if y >= 1:
                buckets[int(y) - 1] += 1
    total = sum(buckets.values())
    shares = [buckets[b] / total for b in range(len(GRONINGEN))]
    assert abs(shares[0] - GRONINGEN[0]) < 0.06
    assert shares[0] > shares[1] > shares[2] > shares[4]
    assert sum(buckets[b] for b in buckets if b >= 7) == 0
    # Most studies are read in their first days.
    early = sum(1 for s in big if any((a - s.acquired_at).days <= 30 for a in s.accesses))
    assert early > 0.9 * len(big)


def test_scale_shrinks_counts_and_images_not_views() -> None:
    real = plan(SynthConfig(reference=REF, studies=300, seed=5, scale=1.0))
    small = plan(SynthConfig(reference=REF, studies=300, seed=5, scale=0.05))
    tr, ts = totals(real), totals(small)
    assert ts.studies == tr.studies and ts.series == tr.series
    assert ts.instances < 0.25 * tr.instances
    assert ts.size_bytes < 0.01 * tr.size_bytes
    mg = [se for s in small for se in s.series if se.sop_class_uid == SOP["MG"]]
    assert mg and all(se.instance_count == 4 for se in mg)
    assert all(se.rows < 1000 for s in small for se in s.series)


def test_patients_option_and_edge_sizes() -> None:
    assert plan(SynthConfig(reference=REF, studies=0)) == []
    one = plan(SynthConfig(reference=REF, studies=5, patients=1))
    assert len(one) == 5 and len({s.patient.patient_id for s in one}) == 1
    exact = plan(SynthConfig(reference=REF, studies=1000, patients=900))
    assert len(exact) == 1000 and len({s.patient.patient_id for s in exact}) == 900
    tiny = plan(SynthConfig(reference=REF, studies=1))
    assert len(tiny) == 1
    many = plan(SynthConfig(reference=REF, studies=50, patients=500))
    assert len({s.patient.patient_id for s in many}) == 50
    short = plan(SynthConfig(reference=REF, studies=500, years=2, growth=0.5))
    assert all(REF - timedelta(days=732) <= s.study_date < REF for s in short)


@pytest.mark.parametrize(
    "kw",
    [dict(studies=-1), dict(years=0), dict(scale=0), dict(missing_rate=1.5), dict(patients=0), dict(growth=-1),
     dict(child_share=0.9, mammography_share=0.2)],
)
def test_config_is_validated(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SynthConfig(reference=REF, **kw)  # type: ignore[arg-type]


def test_age_string() -> None:
    b = date(2020, 1, 15)
    assert age_string(b, date(2020, 1, 20)) == "005D"
    assert age_string(b, date(2021, 3, 14)) == "013M"
    assert age_string(b, date(2025, 1, 14)) == "004Y"
    assert age_string(b, date(2025, 1, 15)) == "005Y"


def test_plan_module_is_pure() -> None:
    tree = ast.parse(Path(plan_module.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    allowed = {"__future__", "hashlib", "math", "random", "bisect", "collections", "dataclasses", "datetime", "typing"}
    assert imported <= allowed, imported - allowed
    assert all(m in sys.stdlib_module_names or m == "__future__" for m in imported)
