"""The database decides a plan range of ids by range; the plan does not depend on the cut.

On SQLite ``make_plan`` decides the studies in ranges of ids and evaluates
the studies of one range left to the pure code while the next is decided,
up to a bound, the rest after the decision (ilm.lifecycle.plan). Whatever
the number of ranges and the bound, the stored plan is the pure loop's:
same summary, hashes, rows and decisions, on both catalogs.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from ilm.catalog.plans import plan_action_rows
from ilm.lifecycle import plan as plan_module
from ilm.lifecycle.plan import PolicySource, make_plan
from ilm.policy import parse_policy
from ilm.service import ArchiveService

from .helpers import TIERS, H, P, S, load

TEXAS = Path(__file__).resolve().parents[2] / "policies" / "us-mqsa-texas.yaml"
MG = "1.2.840.10008.5.1.4.1.1.1.2"


def _archive() -> tuple[list[P], list[S], list[H]]:
    """Forty patients, three studies each: some with an undated study (the pure code decides the patient's
    studies; the first and the last patient among them), mammograms, children, a held patient."""
    pats = [P(f"P{i}", birth_date=date(2015, 1, 1) if i % 7 == 3 else date(1950, 1, 1)) for i in range(40)]
    rows: list[S] = []
    for i in range(40):
        for k in range(3):
            undated = i % 3 == 0 and k == 1
            mg = i % 5 == 0
            rows.append(S(f"1.{i}.{k}", i, study_date=None if undated else date(2004 + 2 * k + i % 4, 3, 1),
                          modalities="MG" if mg else "CT", sop_classes=MG if mg else "1.2.840.10008.5.1.4.1.1.2",
                          body_parts="BREAST" if mg else "CHEST"))
    return pats, rows, [H("patient", "P11")]


@pytest.mark.parametrize(("parts", "ahead"), [(1, 60_000), (4, 60_000), (7, 1), (500, 2)])
def test_the_plan_is_the_pure_loops_however_the_ids_are_cut(service: ArchiveService, monkeypatch: pytest.MonkeyPatch,
                                                             parts: int, ahead: int) -> None:
    monkeypatch.setattr(plan_module, "_DECIDE_PARTS", parts)
    monkeypatch.setattr(plan_module, "_AHEAD", ahead)
    load(service.catalog, *_archive())
    text = TEXAS.read_text()
    source = PolicySource(str(TEXAS), text, "0" * 64, parse_policy(text, known_tiers=list(TIERS), source=str(TEXAS)))
    as_of = date(2026, 6, 30)
    fast = make_plan(service.catalog, service.settings, source, as_of=as_of, created_by="t")
    pure = make_plan(service.catalog, service.settings, source, as_of=as_of, created_by="t", pure=True)
    assert fast.plan.summary["vetoes"].get("unknown_facts"), "the archive leaves studies to the pure code"
    assert fast.plan.summary["vetoes"].get("legal_hold")
    assert fast.plan.summary == pure.plan.summary
    assert fast.plan.plan_sha256 == pure.plan.plan_sha256
    with service.catalog.read() as c:
        a = sorted(plan_action_rows(c, fast.plan.id), key=lambda r: r.study_uid)
        b = sorted(plan_action_rows(c, pure.plan.id), key=lambda r: r.study_uid)
    assert a == b
    f = {d.study_uid: d for d in fast.decisions}; g = {d.study_uid: d for d in pure.decisions}
    assert f == g
