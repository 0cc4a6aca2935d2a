"""Transition throughput (issue 3): ``ilm apply`` of a plan that moves every
study from the hot tier to another tier, with copy -> verify -> commit ->
delete, against the raw copy of the same bytes measured in the same round.

- filesystem -> filesystem, against ``cp -r`` of the hot tier's folder;
- filesystem -> S3 (SeaweedFS on loopback), against raw parallel boto3
  ``put_object`` of the same files (8 threads) into a fresh bucket.

The apply runs in-process (``ArchiveService.apply``), so the figures are the
engine's, without Python's start-up; the catalog is SQLite; no tier flushes
to disk (``fsync = false``) since neither baseline does. Concurrency is what a
user gets by default: ``move_workers = 4`` into the file-system tier, the S3
tier's ``upload_workers = 8`` into S3 (as many threads as the raw put).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.report import fmt, median, ratio_cell, spread, table

NAME = "transition"
TITLE = "Transitions between tiers (`ilm apply`) vs raw copy and raw S3 put"
SYSTEMS = ("ilm-fs", "cp", "ilm-s3", "put")
LABELS = {
    "ilm-fs": "ilm apply, filesystem -> filesystem",
    "cp": "cp -r (same bytes, same disk)",
    "ilm-s3": "ilm apply, filesystem -> S3",
    "put": "boto3 put_object, 8 threads (same files, SHA-256 sent)",
}
POLICY = """
name: bench-all-down
rules:
  - id: all-down
    when: {current_tier: hot}
    action: {transition: TARGET}
"""


def _home(folder: Path, target: str, sw: Any) -> Path:
    home = folder / "home"
    home.mkdir(parents=True)
    cloud = ""
    if target == "cloud":
        cloud = f"""
[tiers.cloud]
kind = "s3"
bucket = "{sw.new_bucket_name('move')}"
endpoint_url = "{sw.endpoint_url}"
access_key_id = "{sw.access_key}"
secret_access_key = "{sw.secret_key}"
create_bucket = true
"""
    (home / "ilm.toml").write_text(f"""
[tiers.hot]
kind = "filesystem"
path = "tiers/hot"
fsync = false

[tiers.warm]
kind = "filesystem"
path = "tiers/warm"
fsync = false
{cloud}
[lifecycle]
move_workers = 4
""")
    return home


def _ilm(data: Any, folder: Path, target: str, sw: Any) -> dict[str, Any]:
    from ilm.config import load_settings
    from ilm.service import ArchiveService

    home = _home(folder, target, sw)
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        rep = svc.import_paths([data.root])
        if rep.stored != data.count:
            raise h.BenchError(f"import stored {rep.stored} of {data.count}")
        policy = home / "policy.yaml"
        policy.write_text(POLICY.replace("TARGET", target))
        plan = svc.plan(policy, as_of=date.today(), by="bench").plan
        h.settle()
        t0 = time.perf_counter()
        report = svc.apply(plan.id, approved_by="bench")
        seconds = time.perf_counter() - t0
        if report.failed:
            raise h.BenchError(f"apply failed: {report.failed[:2]}")
        moved = sum(1 for _ in svc.tier(target).keys())
        left = sum(1 for _ in svc.tier("hot").keys())
        ok = moved == data.count and left == 0
        return {"seconds": seconds, "ok": ok, "moved": moved, "left_on_hot": left, "bytes": report.bytes_moved}
    finally:
        svc.close()


def _cp(data: Any, folder: Path) -> dict[str, Any]:
    src = folder / "src"
    shutil.copytree(data.root, src)  # the same bytes, on the same file system as the copy
    h.settle()
    t = h.run_timed(["cp", "-r", str(src), str(folder / "dst")], timeout=600)
    return {"seconds": t.seconds, "ok": t.rc == 0 and h.count_files(folder / "dst") == data.count}


def _put(data: Any, sw: Any) -> dict[str, Any]:
    import base64

    client = sw.client()
    bucket = sw.make_bucket("raw")
    files = [p for p in Path(data.root).rglob("*") if p.is_file()]
    h.settle()

    def put(p: Path) -> None:
        body = p.read_bytes()
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        client.put_object(Bucket=bucket, Key=str(p.relative_to(data.root)), Body=body, ChecksumSHA256=digest)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, files))
    seconds = time.perf_counter() - t0
    n = sum(len(page.get("Contents", [])) for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket))
    return {"seconds": seconds, "ok": n == data.count}


def run(ctx: Any) -> dict[str, Any]:
    from support.seaweed import start_seaweedfs

    data = ctx.dataset()
    sw = start_seaweedfs()
    rounds = []
    try:
        for r in range(ctx.rounds):
            res: dict[str, Any] = {}
            for s in SYSTEMS:
                ctx.log(f"transition round {r + 1}/{ctx.rounds}: {s} ...")
                with h.scratch(f"transition-{s}") as folder:
                    try:
                        if s == "ilm-fs":
                            row = _ilm(data, folder, "warm", sw)
                        elif s == "ilm-s3":
                            row = _ilm(data, folder, "cloud", sw)
                        elif s == "cp":
                            row = _cp(data, folder)
                        else:
                            row = _put(data, sw)
                    except Exception as exc:  # noqa: BLE001 - reported in the table
                        row = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                if row.get("ok"):
                    row["instances_per_s"] = data.count / row["seconds"]
                    row["mb_per_s"] = data.total_bytes / 1e6 / row["seconds"]
                    ctx.log(f"  {s}: {row['instances_per_s']:.0f} inst/s, {row['mb_per_s']:.0f} MB/s")
                else:
                    ctx.log(f"  {s}: FAILED {row.get('error', row)}")
                res[s] = row
            rounds.append(res)
    finally:
        sw.close()
    return {"instances": data.count, "bytes": data.total_bytes, "rounds": rounds}


def _ratios(res: dict[str, Any], a: str, b: str) -> list[float | None]:
    out: list[float | None] = []
    for rd in res["rounds"]:
        x, y = rd.get(a, {}).get("mb_per_s"), rd.get(b, {}).get("mb_per_s")
        out.append(x / y if x and y else None)
    return out


def _met(ratios: list[float | None], target: float) -> str:
    m = median(ratios)
    return "n/a" if m is None else ("met" if m >= target else "**not met**")


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    fs, s3 = _ratios(res, "ilm-fs", "cp"), _ratios(res, "ilm-s3", "put")
    return [
        ("transition fs->fs: ilm apply / cp -r (MB/s)", ratio_cell(fs), ">= 0.5x", _met(fs, 0.5)),
        ("transition fs->S3: ilm apply / raw parallel put (MB/s)", ratio_cell(s3), ">= 0.8x", _met(s3, 0.8)),
    ]


def render(res: dict[str, Any]) -> str:
    n, mb = res["instances"], res["bytes"] / 1e6
    rows = []
    for s in SYSTEMS:
        rates = [rd.get(s, {}).get("mb_per_s") for rd in res["rounds"]]
        inst = [rd.get(s, {}).get("instances_per_s") for rd in res["rounds"]]
        secs = [rd.get(s, {}).get("seconds") for rd in res["rounds"] if rd.get(s, {}).get("ok")]
        fails = sum(1 for rd in res["rounds"] if s in rd and not rd[s].get("ok"))
        rows.append((LABELS[s], fmt(median(rates)), spread(rates), fmt(median(inst), 0), fmt(median(secs), 2),
                     f"{fails} failed" if fails else "all"))
    out = [f"{n:,} CT instances ({mb:,.0f} MB) moved from the hot tier by a plan (every instance copied, the "
           "destination's SHA-256 checked against the catalog, the new copy committed, the source deleted), "
           "and the same bytes copied raw, in the same round. Each ilm run is checked afterwards: every object "
           "on the target tier, none left on the hot tier."]
    out.append(table(["", "MB/s", "range", "instances/s", "seconds", "verified"], rows))
    out.append(table(["same-round ratio (MB/s)", "value", "target (issue 3)"], [
        ("ilm apply fs->fs / cp -r", ratio_cell(_ratios(res, "ilm-fs", "cp")), ">= 0.5x"),
        ("ilm apply fs->S3 / raw parallel put", ratio_cell(_ratios(res, "ilm-s3", "put")), ">= 0.8x"),
    ]))
    errors = [f"- {s} round {i + 1}: {rd[s].get('error', '')[:300]}" for i, rd in enumerate(res["rounds"])
              for s in rd if not rd[s].get("ok")]
    if errors:
        out.append("Failures:\n\n" + "\n".join(errors))
    return "\n\n".join(out)
