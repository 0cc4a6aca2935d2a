"""A synthetic archive for the cost and report tests: ``ilm synth --catalog-only`` rows
(300 studies on the hot tier) with the access history replayed into the access log."""

from __future__ import annotations

from datetime import date, datetime, time, timezone
from pathlib import Path

import pytest

from ilm.config import load_settings
from ilm.service import ArchiveService
from ilm.synth.plan import StudySpec, SynthConfig, generate
from ilm.synth.rows import load_catalog, replay_accesses

__all__ = ["TODAY", "NOW", "CFG", "GB", "PRICES", "CT_TO_WARM", "write_cost_config", "archive"]

TODAY = date(2026, 6, 30)
NOW = datetime.combine(TODAY, time(), tzinfo=timezone.utc)
CFG = SynthConfig(reference=TODAY, studies=300, seed=5, scale=1.0)
GB = 1e9

PRICES = """
[tiers.hot]
kind = "filesystem"
path = "tiers/hot"
cost_per_gb_month = 0.10
fsync = false

[tiers.warm]
kind = "filesystem"
path = "tiers/warm"
cost_per_gb_month = 0.03
put_cost_per_1000 = 0.05
fsync = false
"""

CT_TO_WARM = """
name: ct-to-warm
rules:
  - id: ct-to-warm
    when: {modality: CT, current_tier: hot, study_age: {older_than: P2Y}}
    action: {transition: warm}
"""


def write_cost_config(home: Path, url: str, warm_retrieval: float = 0.0) -> None:
    text = f'[catalog]\nurl = "{url}"\n' + PRICES
    if warm_retrieval:
        text = text.replace("put_cost_per_1000 = 0.05", f"put_cost_per_1000 = 0.05\nretrieval_cost_per_gb = {warm_retrieval}")
    home.mkdir(parents=True, exist_ok=True)
    (home / "ilm.toml").write_text(text, encoding="utf-8")


@pytest.fixture
def archive(tmp_path: Path, catalog_url: str) -> tuple[Path, list[StudySpec]]:
    home = tmp_path / "home"
    write_cost_config(home, catalog_url)
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        load_catalog(svc.catalog, CFG, tier="hot", workers=0)
        replay_accesses(svc.catalog, generate(CFG))
        assert replay_accesses(svc.catalog, generate(CFG)) == 0  # once per catalog
    finally:
        svc.close()
    return home, list(generate(CFG))


