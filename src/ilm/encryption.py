"""Master-key management for encrypted tiers: list, new, rotate, retire.

Rotation re-wraps each object's data key under the active master key: only
the object's header changes (``EncryptedTier.rewrap``), the encrypted data is
not re-encrypted. It walks the catalog's objects of every encrypted tier in
key order, a page at a time, and records the key id of each object it
handled (``object_keys``): a run that stops (crash, Ctrl-C, a tier down) is
simply run again, and skips what is recorded as done.

Retiring a key re-reads the header of every object of the tiers using that
key ring, whatever is recorded, and refuses while any object still names the
key or cannot be checked: a retired key no longer opens anything.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.object_keys import forget_missing, key_usage, known_key_ids, object_count, record_key_ids, tier_objects
from ilm.config import Settings
from ilm.errors import ConfigError, IlmError, ObjectNotFound, StorageError
from ilm.keyring import KeyRing, MasterKey
from ilm.storage import Tier
from ilm.storage.encrypted import EncryptedTier

__all__ = ["KeyInfo", "MasterKey", "RotateReport", "KeyInUse", "key_rings", "list_keys", "new_key", "rotate", "retire"]

PAGE = 500

Progress = Callable[[int, int], None]  # (objects done in this step, total objects)


class KeyInUse(IlmError):
    """A master key cannot be retired: objects still use it, or could not be checked."""


@dataclass
class KeyInfo:
    id: str
    key_file: str
    source: str  # file | env
    created: str
    active: bool
    retired: bool
    objects: dict[str, int] = field(default_factory=dict)  # tier -> objects recorded as wrapped by this key


@dataclass
class RotateReport:
    to: dict[str, str] = field(default_factory=dict)  # tier -> the key rotated to
    objects: int = 0
    rewrapped: int = 0
    already: int = 0
    gone: int = 0
    from_keys: dict[str, int] = field(default_factory=dict)  # old key id -> objects re-wrapped from it
    failed: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def encrypted_tiers(settings: Settings, tier: str | None = None) -> list[str]:
    names = [n for n, t in settings.tiers.items() if t.encryption == "envelope"]
    if tier is not None:
        if tier not in settings.tiers:
            raise ConfigError(f"no tier named {tier!r} (tiers: {', '.join(settings.tiers)})")
        if tier not in names:
            raise ConfigError(f"tier {tier!r} is not encrypted (encryption = \"envelope\" in its settings)")
        return [tier]
    return names


def key_rings(settings: Settings, tier: str | None = None, key_file: Path | None = None) -> dict[Path, list[str]]:
    """Key-ring file -> the encrypted tiers that use it. With no encrypted tier
    (encryption not switched on yet), the default file in ILM_HOME."""
    if key_file is not None:
        path = key_file.expanduser().absolute()
        return {path: [n for n in encrypted_tiers(settings) if settings.resolve(settings.tiers[n].key_file) == path]}
    rings: dict[Path, list[str]] = {}
    for n in encrypted_tiers(settings, tier):
        rings.setdefault(settings.resolve(settings.tiers[n].key_file), []).append(n)
    if not rings and tier is None:
        rings[settings.resolve("keyring.toml")] = []
    return rings


def _one_ring(settings: Settings, tier: str | None, key_file: Path | None) -> Path:
    rings = key_rings(settings, tier, key_file)
    if len(rings) > 1:
        raise ConfigError("encrypted tiers use different key files ("
                          + ", ".join(f"{p}: {', '.join(t)}" for p, t in rings.items()) + "): name one with --tier")
    return next(iter(rings))


def new_key(settings: Settings, *, key_id: str | None = None, tier: str | None = None,
            key_file: Path | None = None, catalog: Catalog | None = None, by: str = "") -> tuple[Path, MasterKey]:
    """A new random master key, added to the key ring and made active for new objects."""
    path = _one_ring(settings, tier, key_file)
    key = KeyRing(path).add(key_id)
    if catalog is not None:
        with catalog.write() as conn:
            append_audit(conn, at=_now(), actor=by, action="key-new", detail={"key_id": key.id, "key_file": str(path)})
    return path, key


def list_keys(catalog: Catalog, settings: Settings, *, tier: str | None = None) -> tuple[list[KeyInfo], dict[str, int]]:
    """Every master key of the key rings of the encrypted tiers, with the objects
    recorded per key and tier; and per tier the objects not looked at since
    written (new objects are wrapped by the key active then)."""
    infos: list[KeyInfo] = []
    unchecked: dict[str, int] = {}
    usage: dict[str, dict[str | None, int]] = {}
    with catalog.read() as conn:
        for path, tiers in key_rings(settings, tier).items():
            for t in tiers:
                usage[t] = key_usage(conn, t)
            ring = KeyRing(path)
            for k in ring.keys():
                objects = {t: usage[t].get(k.id, 0) for t in tiers}
                infos.append(KeyInfo(k.id, str(path), k.source, k.created, k.id == ring.active_id, k.retired, objects))
    for t, per_key in usage.items():
        unchecked[t] = per_key.get(None, 0)
    return infos, unchecked


def _encrypted(tiers: Callable[[str], Tier], name: str) -> EncryptedTier:
    t = tiers(name)
    if not isinstance(t, EncryptedTier):
        raise ConfigError(f"tier {name!r} is not encrypted")
    return t


def _walk(catalog: Catalog, name: str, skip: Callable[[str | None], bool], work: Callable[[str], str],
          workers: int, on_page: Callable[[dict[str, str], dict[str, BaseException], int], None]) -> None:
    """Every object of tier ``name`` (catalog order, a page at a time): ``work`` on
    those whose recorded key id ``skip`` does not accept; what it returned is recorded."""
    after = ""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while True:
            with catalog.read() as conn:
                page = tier_objects(conn, name, after=after, limit=PAGE)
                known = known_key_ids(conn, name, page)
            if not page:
                return
            after = page[-1]
            todo = [k for k in page if not skip(known.get(k))]

            def run(key: str) -> str | BaseException:
                try:
                    return work(key)
                except StorageError as exc:
                    return exc

            seen: dict[str, str] = {}
            errors: dict[str, BaseException] = {}
            for key, out in zip(todo, pool.map(run, todo)):
                if isinstance(out, BaseException):
                    errors[key] = out
                else:
                    seen[key] = out
            with catalog.write() as conn:
                record_key_ids(conn, name, seen, _now())
            on_page(seen, errors, len(page))


def rotate(catalog: Catalog, settings: Settings, tiers: Callable[[str], Tier], *, tier: str | None = None,
           full: bool = False, by: str = "", progress: Progress | None = None) -> RotateReport:
    """Re-wrap every object of the encrypted tiers under its key ring's active key.

    Objects recorded as wrapped by the active key already are skipped without
    being read (``full``: every header is read again). An object that fails
    (damaged: DecryptionFailed; its key missing; the tier down) is listed in
    ``failed`` and left as it is; run again once the cause is fixed.
    """
    report = RotateReport()
    names = encrypted_tiers(settings, tier)
    with catalog.read() as conn:
        total = sum(object_count(conn, n) for n in names)
    done = 0
    for name in names:
        worm = settings.tiers[name].worm
        if worm != "off":  # immutable copies cannot get a new header
            report.failed.append(f"tier {name!r}: worm = {worm!r}: its objects cannot be rewritten, so their data "
                                 "keys stay wrapped by the keys they have (keep those keys until the copies' "
                                 "retention ends; docs/security.md)")
            continue
        enc = _encrypted(tiers, name)
        target = enc.ring.active()
        report.to[name] = target.id
        olds: Counter[str] = Counter()
        lock = threading.Lock()

        def work(key: str) -> str:
            old = enc.rewrap(key, target)
            with lock:
                olds[old] += 1
            return target.id

        def on_page(seen: dict[str, str], errors: dict[str, BaseException], n: int) -> None:
            nonlocal done
            report.objects += n
            report.already += n - len(seen) - len(errors)
            for key, exc in errors.items():
                if isinstance(exc, ObjectNotFound):
                    report.gone += 1  # moved or purged since the page was read
                else:
                    report.failed.append(f"tier {name!r}: {key}: {exc}")
            done += n
            if progress:
                progress(done, total)

        _walk(catalog, name, lambda kid: not full and kid == target.id, work,
              settings.lifecycle.move_workers, on_page)
        moved = sum(c for k, c in olds.items() if k != target.id)
        report.rewrapped += moved
        report.already += olds.get(target.id, 0)
        for k, c in olds.items():
            if k != target.id:
                report.from_keys[k] = report.from_keys.get(k, 0) + c
        with catalog.write() as conn:
            forget_missing(conn, [name])
    with catalog.write() as conn:
        append_audit(conn, at=_now(), actor=by, action="keys-rotate", detail={
            "to": report.to, "objects": report.objects, "rewrapped": report.rewrapped, "from": report.from_keys,
            "failed": len(report.failed)})
    return report


def retire(catalog: Catalog, settings: Settings, tiers: Callable[[str], Tier], key_id: str, *, by: str = "",
           key_file: Path | None = None, progress: Progress | None = None) -> int:
    """Retire master key ``key_id`` after checking that no object of the tiers
    using its key ring names it (every header is read); return the objects checked.
    KeyInUse when some still do, or could not be checked."""
    candidates = key_rings(settings, key_file=key_file)
    rings = {p: t for p, t in candidates.items() if key_id in {k.id for k in KeyRing(p).keys()}}
    if not rings:
        raise ConfigError(f"no master key {key_id!r} in {', '.join(map(str, candidates))}")
    if len(rings) > 1:
        raise ConfigError(f"key {key_id!r} is in several key files ({', '.join(map(str, rings))}): name one with --key-file")
    path, names = next(iter(rings.items()))
    ring = KeyRing(path)
    if ring.active_id == key_id:
        raise ConfigError(f"{path}: key {key_id!r} is the active key: run 'ilm keys new' and 'ilm keys rotate' first")
    with catalog.read() as conn:
        total = sum(object_count(conn, n) for n in names)
    users: Counter[str] = Counter()
    unchecked: list[str] = []
    done = 0
    for name in names:
        enc = _encrypted(tiers, name)

        def on_page(seen: dict[str, str], errors: dict[str, BaseException], n: int) -> None:
            nonlocal done
            users[name] += sum(1 for kid in seen.values() if kid == key_id)
            unchecked.extend(f"tier {name!r}: {k}: {e}" for k, e in errors.items() if not isinstance(e, ObjectNotFound))
            done += n
            if progress:
                progress(done, total)

        _walk(catalog, name, lambda _kid: False, enc.key_id, settings.lifecycle.move_workers, on_page)
    if sum(users.values()):
        where = ", ".join(f"tier {t!r}: {n}" for t, n in users.items() if n)
        raise KeyInUse(f"key {key_id!r} still wraps {sum(users.values())} objects ({where}): "
                       "run 'ilm keys rotate' first; nothing was retired")
    if unchecked:
        raise KeyInUse(f"key {key_id!r}: {len(unchecked)} objects could not be checked, so it is kept "
                       f"(first: {unchecked[0]}); nothing was retired")
    ring.retire(key_id)
    with catalog.write() as conn:
        append_audit(conn, at=_now(), actor=by, action="key-retire",
                     detail={"key_id": key_id, "key_file": str(path), "objects_checked": done})
    return done
