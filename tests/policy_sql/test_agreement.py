"""The SQL path decides exactly as the pure evaluate(), on SQLite and PostgreSQL.

Random archives (tests/policy_sql/strategies.py) and random policies; then
synthetic archives from ilm.synth with the bundled templates. Agreement is
on the whole Decision: action, proposed action, rule, tier, reason, every
veto with its protection and reason, the missing facts.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilm.catalog import Catalog
from ilm.catalog.schema import studies
from ilm.policy import Policy, parse_policy
from ilm.service import ArchiveService
from ilm.synth.plan import SynthConfig
from ilm.synth.rows import load_catalog

from .helpers import TIERS, decide_both, has_regex, load
from .strategies import archives, as_of_dates, dates, policies

TEMPLATES = sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))
HYPOTHESIS = settings(max_examples=25, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                             HealthCheck.data_too_large])


def _assert_agree(catalog: Catalog, policy: Policy, as_of: date) -> None:
    both = decide_both(catalog, policy, as_of)
    dialect = catalog.engine.dialect.name
    if both.fast is None:
        # Only a regex on PostgreSQL, patients sharing a key, or a statement
        # SQLite's parser refuses (deeply nested any / not) may fall back.
        assert ((dialect == "postgresql" and has_regex(policy)) or _shared_keys(catalog)
                or (dialect == "sqlite" and _too_deep(catalog, policy, as_of))), policy
        return
    assert set(both.fast) == set(both.pure)
    wrong = {uid: (both.pure[uid], both.fast[uid]) for uid in both.pure if both.pure[uid] != both.fast[uid]}
    assert not wrong, f"{len(wrong)} disagreements on {as_of}: {next(iter(wrong.values()))}"


def _too_deep(catalog: Catalog, policy: Policy, as_of: date) -> bool:
    from ilm.catalog.policy_sql import NotCompilable, plan_in_sql

    with catalog.write() as c:
        sql = plan_in_sql(c, policy, as_of)
        assert sql is not None
        try:
            sql.decide()
        except NotCompilable:
            return True
        sql.close()
    return False


def _shared_keys(catalog: Catalog) -> bool:
    with catalog.read() as c:
        keys = [f"{i}:{p}" if i else p for p, i in c.execute(sa.text("SELECT patient_id, issuer FROM patients"))]
    return len(keys) != len(set(keys))


@pytest.fixture
def catalog(catalog_url: str) -> Catalog:
    cat = Catalog.open(catalog_url)
    yield cat
    cat.close()


@HYPOTHESIS
@given(archive=archives(), policy=policies(), data=st.data())
def test_random_policies_on_random_archives(catalog: Catalog, archive, policy: Policy, data) -> None:  # type: ignore[no-untyped-def]
    load(catalog, *archive)
    as_of = data.draw(as_of_dates(archive))
    _assert_agree(catalog, policy, as_of)


@HYPOTHESIS
@given(archive=archives(), name=st.sampled_from([p.name for p in TEMPLATES]), data=st.data())
def test_templates_on_random_archives(catalog: Catalog, archive, name: str, data) -> None:  # type: ignore[no-untyped-def]
    load(catalog, *archive)
    path = next(p for p in TEMPLATES if p.name == name)
    policy = parse_policy(path.read_text(), known_tiers=TIERS, source=str(path))
    _assert_agree(catalog, policy, data.draw(as_of_dates(archive)))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(1, 10_000), as_of=dates, data=st.data())
def test_synthetic_archives(catalog: Catalog, seed: int, as_of: date, data) -> None:  # type: ignore[no-untyped-def]
    """ilm.synth's archives (children, screening mammograms, missing facts), with tiers and labels added."""
    with catalog.write() as c:
        for t in ("plan_actions", "plans", "holds", "series", "studies", "patients"):
            c.execute(sa.text(f"DELETE FROM {t}"))
    cfg = SynthConfig(reference=date(2025, 6, 30), studies=150, seed=seed, missing_rate=0.15, child_share=0.3,
                      mammography_share=0.3, years=20)
    load_catalog(catalog, cfg, workers=0)
    with catalog.write() as c:
        c.execute(sa.update(studies).where(studies.c.id % 3 == 0).values(tiers="hot"))
        c.execute(sa.update(studies).where(studies.c.id % 3 == 1).values(tiers="hot\\warm"))
        c.execute(sa.update(studies).where(studies.c.id % 7 == 0).values(labels="teaching"))
        c.execute(sa.update(studies).where(studies.c.id % 11 == 0).values(state="quarantined"))
    for path in TEMPLATES:
        policy = parse_policy(path.read_text(), known_tiers=TIERS, source=str(path))
        _assert_agree(catalog, policy, as_of)
    for _ in range(3):
        _assert_agree(catalog, data.draw(policies()), as_of)


def test_most_studies_are_decided_by_the_database(catalog: Catalog) -> None:
    """The fast path is fast because the pure code sees only a few studies."""
    load_catalog(catalog, SynthConfig(reference=date(2025, 6, 30), studies=2000, seed=3), workers=0)
    with catalog.write() as c:
        c.execute(sa.update(studies).values(tiers="hot"))
    for path in TEMPLATES:
        policy = parse_policy(path.read_text(), known_tiers=TIERS, source=str(path))
        if catalog.engine.dialect.name == "postgresql" and has_regex(policy):
            continue
        both = decide_both(catalog, policy, date(2025, 6, 30))
        assert both.sql is not None and both.fast is not None
        assert both.fast == both.pure
        assert both.sql.pure_evaluated < 0.1 * len(both.pure), (path.name, both.sql.pure_evaluated)


@HYPOTHESIS
@given(archive=archives(), policy=policies(allow_regex=False), data=st.data())
def test_stored_plans_are_the_same_whichever_path_ran(service: ArchiveService, archive, policy: Policy,
                                                       data) -> None:  # type: ignore[no-untyped-def]
    from ilm.catalog.plans import plan_action_rows
    from ilm.lifecycle.plan import PolicySource, make_plan

    load(service.catalog, *archive)
    as_of = data.draw(as_of_dates(archive))
    source = PolicySource("p.yaml", "text", "0" * 64, policy)
    fast = make_plan(service.catalog, service.settings, source, as_of=as_of, created_by="t")
    pure = make_plan(service.catalog, service.settings, source, as_of=as_of, created_by="t", pure=True)
    assert fast.plan.summary == pure.plan.summary
    assert fast.plan.catalog_sha256 == pure.plan.catalog_sha256
    assert fast.plan.plan_sha256 == pure.plan.plan_sha256
    with service.catalog.read() as c:  # the same rows (inserted in another order: apply does not depend on it)
        a = sorted(plan_action_rows(c, fast.plan.id), key=lambda r: r.study_uid)
        b = sorted(plan_action_rows(c, pure.plan.id), key=lambda r: r.study_uid)
    assert a == b
    assert len(fast.decisions) == len(pure.decisions)
    assert {d.study_uid: d for d in fast.decisions} == {d.study_uid: d for d in pure.decisions}
