"""Encryption at rest: put/get throughput of 512 KB objects through an encrypted
filesystem tier (envelope encryption, AES-256-GCM in 64 KiB segments) vs the
same plain filesystem tier, in the same round; and ingest, transition and key
rotation of the benchmark data set through the service layer, encrypted vs plain.

In-process, through the Tier interface the service uses: each round writes N
objects of 512 KB (random bytes: DICOM pixel data compresses no better) to a
fresh folder on each tier, reads them all back, then reads 4 KiB at random
offsets of each (what a ranged read of an instance inside a packed study
costs). The tiers run with fsync off and the reads come from the page cache:
the figures are the CPU cost of the encryption, not of the disk. Systems
alternate their order from round to round.

The archive part runs the service in-process (SQLite catalog, two filesystem
tiers hot and warm, fsync off), once with both tiers plain and once with both
encrypted: import of the data set onto hot (what C-STORE/STOW do after the
network: parse, write the object, catalog it), then every study moved hot ->
warm through the journaled move (read and decrypt, verify, encrypt, write,
verify what the target holds), then, encrypted only, ``ilm keys rotate`` of
every object to a new master key (header re-wrap, each object authenticated).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.report import fmt, median, ratio_cell, spread, table

from ilm.config import load_settings
from ilm.keyring import KeyRing
from ilm.lifecycle.move import move_study
from ilm.models import StudyFilter
from ilm.service import ArchiveService
from ilm.storage import FilesystemTier
from ilm.storage.base import Tier
from ilm.storage.encrypted import EncryptedTier

NAME = "encryption"
TITLE = "Encryption at rest: encrypted vs plain tiers (512 KB put/get, ingest, transition, key rotation)"
SYSTEMS = ("plain", "encrypted")
LABELS = {"plain": "filesystem tier", "encrypted": "filesystem tier, encryption = \"envelope\""}
SIZE = 512 * 1024
RANGE = 4096
OPS = ("put", "get", "range")


def _tier(kind: str, folder: Path) -> Tier:
    plain = FilesystemTier(kind, folder / kind, fsync=False)
    if kind == "plain":
        return plain
    ring = KeyRing(folder / "keyring.toml", env={})
    if ring.active_id is None:
        ring.add("bench")
    return EncryptedTier(plain, ring)


def _round(tier: Tier, blobs: list[bytes], offsets: list[int], tag: int) -> dict[str, Any]:
    keys = [f"1.2.{tag}/1.{i}/1.{i}.dcm" for i in range(len(blobs))]
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for k, b in zip(keys, blobs):
        tier.put(k, b)
    out["put"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k, b in zip(keys, blobs):
        if tier.get(k) != b:
            raise h.BenchError(f"{k}: read back other bytes")
    out["get"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k, off in zip(keys, offsets):
        tier.get_range(k, off, RANGE)
    out["range"] = time.perf_counter() - t0
    total = SIZE * len(blobs)
    out["put_mb_s"] = total / 1e6 / out["put"]
    out["get_mb_s"] = total / 1e6 / out["get"]
    out["range_per_s"] = len(blobs) / out["range"]
    for k in keys:
        tier.delete(k)
    return out


def _archive(folder: Path, encrypted: bool) -> ArchiveService:
    folder.mkdir(parents=True)
    enc = 'encryption = "envelope"\n' if encrypted else ""
    (folder / "ilm.toml").write_text(
        f'[catalog]\nurl = "sqlite:///{folder / "catalog.sqlite"}"\n\n'
        f'[tiers.hot]\nkind = "filesystem"\npath = "hot"\nfsync = false\n{enc}\n'
        f'[tiers.warm]\nkind = "filesystem"\npath = "warm"\nfsync = false\n{enc}')
    if encrypted:
        KeyRing(folder / "keyring.toml", env={}).add("k1")
    return ArchiveService.open(load_settings(home=folder, env={}))


def _archive_round(folder: Path, files: list[Path], total: int, encrypted: bool) -> dict[str, Any]:
    svc = _archive(folder, encrypted)
    out: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        report = svc.import_paths(files)
        out["ingest"] = time.perf_counter() - t0
        if report.stored != len(files):
            raise h.BenchError(f"import stored {report.stored} of {len(files)}: {report.problems[:3]}")
        studies = [s.study_instance_uid for s in svc.studies(StudyFilter(limit=100_000))]
        t0 = time.perf_counter()
        for uid in studies:
            res = move_study(svc.catalog, svc.tier, uid, "warm", workers=svc.settings.lifecycle.move_workers)
            if not res.ok:
                raise h.BenchError(f"move of {uid} failed: {res.failed[:3]}")
        out["transition"] = time.perf_counter() - t0
        if encrypted:
            svc.keys_new(key_id="k2")
            t0 = time.perf_counter()
            rot = svc.keys_rotate()
            out["rotate"] = time.perf_counter() - t0
            if rot.rewrapped != len(files) or rot.failed:
                raise h.BenchError(f"rotation re-wrapped {rot.rewrapped} of {len(files)}: {rot.failed[:3]}")
            out["rotate_per_s"] = len(files) / out["rotate"]
    finally:
        svc.close()
    out["ingest_per_s"] = len(files) / out["ingest"]
    out["ingest_mb_s"] = total / 1e6 / out["ingest"]
    out["transition_mb_s"] = total / 1e6 / out["transition"]
    return out


def run(ctx: Any) -> dict[str, Any]:
    n = 100 if ctx.quick else 400
    rng = random.Random(5)
    blobs = [os.urandom(SIZE) for _ in range(n)]
    offsets = [rng.randrange(0, SIZE - RANGE) for _ in range(n)]
    rounds = []
    with h.scratch("encryption") as folder:
        tiers = {s: _tier(s, folder) for s in SYSTEMS}
        for r in range(ctx.rounds + 1):  # round 0 warms up and is not counted
            order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
            res: dict[str, Any] = {}
            for s in order:
                h.settle()
                res[s] = _round(tiers[s], blobs, offsets, r * 10 + SYSTEMS.index(s))
                res[s]["load_before"] = h.loadavg()
                if r:
                    ctx.log(f"encryption round {r}/{ctx.rounds}: {s}: put {res[s]['put_mb_s']:.0f} MB/s, "
                            f"get {res[s]['get_mb_s']:.0f} MB/s, 4 KiB ranges {res[s]['range_per_s']:.0f}/s")
            if r:
                rounds.append(res)
        data = ctx.dataset()
        files = list(data.files)
        total = sum(p.stat().st_size for p in files)
        archive_rounds = []
        for r in range(ctx.rounds + 1):  # round 0 warms up (page cache, imports) and is not counted
            order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
            res = {}
            for s in order:
                h.settle()
                res[s] = _archive_round(folder / f"archive-{r}-{s}", files, total, s == "encrypted")
                if r:
                    ctx.log(f"encryption archive round {r}/{ctx.rounds}: {s}: ingest {res[s]['ingest_per_s']:.0f}/s, "
                            f"transition {res[s]['transition_mb_s']:.0f} MB/s"
                            + (f", rotation {res[s]['rotate_per_s']:.0f} objects/s" if "rotate" in res[s] else ""))
            if r:
                archive_rounds.append(res)
    return {"objects": n, "object_bytes": SIZE, "rounds": rounds, "instances": len(files), "bytes": total,
            "archive_rounds": archive_rounds}


def _ratios(res: dict[str, Any], metric: str, key: str = "rounds") -> list[float | None]:
    out: list[float | None] = []
    for rd in res.get(key, []):
        e, p = rd.get("encrypted", {}).get(metric), rd.get("plain", {}).get(metric)
        out.append(e / p if e and p else None)
    return out


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [("encryption: put 512 KB encrypted / plain (MB/s)", ratio_cell(_ratios(res, "put_mb_s")),
             "(none; reported)", "-"),
            ("encryption: get 512 KB encrypted / plain (MB/s)", ratio_cell(_ratios(res, "get_mb_s")),
             "(none; reported)", "-"),
            ("encryption: ingest encrypted / plain (instances/s)",
             ratio_cell(_ratios(res, "ingest_per_s", "archive_rounds")), "(none; reported)", "-"),
            ("encryption: transition encrypted / plain (MB/s)",
             ratio_cell(_ratios(res, "transition_mb_s", "archive_rounds")), "(none; reported)", "-")]


def render(res: dict[str, Any]) -> str:
    n = res["objects"]
    rows = []
    for s in SYSTEMS:
        vals = {m: [rd.get(s, {}).get(m) for rd in res["rounds"]] for m in ("put_mb_s", "get_mb_s", "range_per_s")}
        rows.append((LABELS[s], fmt(median(vals["put_mb_s"]), 0), spread(vals["put_mb_s"], 0),
                     fmt(median(vals["get_mb_s"]), 0), spread(vals["get_mb_s"], 0),
                     fmt(median(vals["range_per_s"]), 0)))
    out = [f"{n} objects of 512 KB (random bytes) per tier and round, written, read back whole and read by one "
           "4 KiB range each; fsync off, reads from the page cache: the cost of the encryption on the CPU."]
    out.append(table(["", "put MB/s", "range", "get MB/s", "range", "4 KiB ranged reads/s"], rows))
    out.append(table(["same-round ratio, encrypted / plain", "value"], [
        ("put (MB/s)", ratio_cell(_ratios(res, "put_mb_s"))),
        ("get (MB/s)", ratio_cell(_ratios(res, "get_mb_s"))),
        ("4 KiB ranged reads per second", ratio_cell(_ratios(res, "range_per_s"))),
    ]))
    if res.get("archive_rounds"):
        ar = res["archive_rounds"]
        arows = []
        for s in SYSTEMS:
            ing = [rd.get(s, {}).get("ingest_per_s") for rd in ar]
            tr = [rd.get(s, {}).get("transition_mb_s") for rd in ar]
            rot = [rd.get(s, {}).get("rotate_per_s") for rd in ar]
            arows.append((LABELS[s].replace("filesystem tier", "archive, hot and warm"), fmt(median(ing), 0),
                          spread(ing, 0), fmt(median(tr), 0), spread(tr, 0),
                          fmt(median(rot), 0) if median(rot) is not None else "-"))
        out.append(f"The data set ({res['instances']:,} instances, {res['bytes'] / 1e6:,.0f} MB) through the service "
                   "in-process (SQLite catalog, fsync off): import onto hot, every study moved hot -> warm, then (encrypted "
                   "only) `ilm keys rotate` of every object to a new master key.")
        out.append(table(["", "ingest instances/s", "range", "transition MB/s", "range", "rotation objects/s"], arows))
        out.append(table(["same-round ratio, encrypted / plain", "value"], [
            ("ingest (instances/s)", ratio_cell(_ratios(res, "ingest_per_s", "archive_rounds"))),
            ("transition hot -> warm (MB/s)", ratio_cell(_ratios(res, "transition_mb_s", "archive_rounds"))),
        ]))
    out.append("A put of an encrypted object hashes the plaintext (the catalog's SHA-256), encrypts it and hashes "
               "the ciphertext the plain tier writes; a get decrypts and checks every 64 KiB segment's tag; a "
               "ranged read fetches the 88-byte header and the one or two segments holding the range, and unwraps "
               "the object's data key. See docs/security.md.")
    return "\n\n".join(out)
