"""The end of ``ilm demo``: a recall from the archive tier, a promotion on read,
and a capacity watermark run, each through the service layer as ``ilm serve``
and the CLI do them."""

from __future__ import annotations

from pathlib import Path

from ilm.cli.app import console
from ilm.cli.archive import human_bytes
from ilm.cli.recall import _table as restore_table
from ilm.cli.recall import _wait as wait_for_restores
from ilm.cli.watermark import print_results as print_watermark
from ilm.config import Settings
from ilm.errors import IlmError
from ilm.models import StudyFilter
from ilm.service import ArchiveService

BY = "ilm-demo"


def _studies_only_on(service: ArchiveService, tiers: list[str]) -> list[str]:
    """Studies whose every copy is on one of ``tiers``, largest first."""
    found = [s for s in service.studies(StudyFilter(limit=1_000_000)) if s.tiers and set(s.tiers) <= set(tiers)]
    return [s.study_instance_uid for s in sorted(found, key=lambda s: -s.size_bytes)]


def demo_recall(service: ArchiveService) -> None:
    """Recall one study that is on an archive tier only, and wait for its restore."""
    archives = [n for n, t in service.settings.tiers.items() if t.archive]
    uids = _studies_only_on(service, archives) if archives else []
    console.rule("access: recall from the archive tier")
    if not uids:
        console.print("no study is on an archive tier: nothing to recall "
                      "(add an archive tier, docs/tiers.md)")
        return
    uid = uids[0]
    try:
        service.prepare_read(uid)
    except IlmError as exc:
        console.print(f"a read of {uid} now: {exc}", highlight=False)
    statuses = service.recall([uid], by=BY)
    console.print(f"ilm recall {uid}: the restore takes the tier's latency "
                  f"({service.settings.tiers[archives[0]].retrieval_latency_seconds:g} s here)", highlight=False)
    statuses, timed_out = wait_for_restores(service, statuses, timeout=120.0, show=True)
    console.print(restore_table(statuses))
    if timed_out:
        console.print("the restore is still under way (ilm restores)")
        return
    n = len(service.instances_to_read(uid))
    service.prepare_read(uid)  # raises if it did not work
    console.print(f"{uid}: {n} instances readable again from the restored copy; the archive copy stays",
                  highlight=False)


def demo_promotion(service: ArchiveService) -> None:
    """Read one study the plan moved to the warm tier: with retrieval_policy on_read it comes back to hot."""
    roles = list(service.settings.tiers)
    promoting = [n for n in roles[1:] if service.settings.tiers[n].retrieval_policy in ("on_read", "prefetch_priors")
                 and not service.settings.tiers[n].archive]
    console.rule("access: promotion on read")
    uids = _studies_only_on(service, promoting) if promoting else []
    if not uids:
        console.print("no study is on a tier with retrieval_policy = \"on_read\": nothing to promote")
        return
    uid = uids[0]
    refs = service.instances_to_read(uid)
    before = sorted({r.tier for r in refs})
    size = sum(len(service.read(r)) for r in refs)
    service.promotions.start(background=False)
    try:
        service.note_access(uid, "wado-rs", BY, len(refs))  # what the WADO-RS front-end notes for a read
        service.promotions.drain()
    finally:
        service.promotions.stop()
    after = sorted({r.tier for r in service.instances_to_read(uid)})
    console.print(f"read {uid} ({len(refs)} instances, {human_bytes(size)}) from {', '.join(before)} "
                  "as a WADO-RS request does; "
                  f"retrieval_policy on_read moved it to {', '.join(after)}", highlight=False)


def demo_watermark(settings: Settings, ingest_tier: str) -> None:
    """A watermark run on the ingest tier, as if its disk were just too small for what it holds now."""
    console.rule("capacity: watermark run")
    probe = ArchiveService.open(settings)
    try:
        held = next((r.size_bytes for r in probe.summary()["tier"] if r.key == ingest_tier), 0)
    finally:
        probe.close()
    if held == 0:
        console.print(f"tier {ingest_tier} holds nothing: no watermark run")
        return
    high, low = int(held * 0.9), int(held * 0.7)
    console.print(f"the demo sets tier {ingest_tier}'s high watermark to {human_bytes(high)} (90% of what it holds) "
                  f"and its low one to {human_bytes(low)}, as \\[tiers.{ingest_tier}] high_watermark/low_watermark "
                  "would; ilm serve checks them every 5 minutes", highlight=False)
    tier = settings.tiers[ingest_tier].model_copy(update={"high_watermark": f"{high}B", "low_watermark": f"{low}B"})
    tight = settings.model_copy(update={"tiers": {**settings.tiers, ingest_tier: tier}})
    service = ArchiveService.open(tight)
    try:
        results = service.watermark_run(by=BY, tier=ingest_tier)
        print_watermark(results, stored=True, max_rows=5)
    finally:
        service.close()


def demo_access(service: ArchiveService, home: Path) -> None:
    """Recall, promotion; the caller runs the watermark after closing its service."""
    demo_recall(service)
    demo_promotion(service)
    console.print(f"restores: ilm restores --home {home}; promotions and recalls are in ilm audit", highlight=False)
