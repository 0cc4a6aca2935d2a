"""Catalog side of key management: the objects of encrypted tiers and their master key ids.

``locations`` says which objects exist (a packed study's instances share one
object); ``object_keys`` remembers which master key wrapped each of them when
ilm last looked (the object header stays the truth: retiring a key re-reads
every header).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import and_, delete, func, insert, select
from sqlalchemy.engine import Connection

from ilm.catalog.schema import locations, object_keys

__all__ = ["tier_objects", "known_key_ids", "record_key_ids", "key_usage", "forget_missing", "object_count"]


def object_count(conn: Connection, tier: str) -> int:
    """Distinct objects the catalog has on ``tier``."""
    q = select(func.count()).select_from(
        select(locations.c.object_key).where(locations.c.tier == tier).distinct().subquery())
    return int(conn.execute(q).scalar_one())


def tier_objects(conn: Connection, tier: str, *, after: str = "", limit: int = 500) -> list[str]:
    """The next ``limit`` object keys of ``tier`` in key order after ``after`` (keyset paging)."""
    q = (select(locations.c.object_key).where(locations.c.tier == tier, locations.c.object_key > after)
         .distinct().order_by(locations.c.object_key).limit(limit))
    return [r[0] for r in conn.execute(q)]


def known_key_ids(conn: Connection, tier: str, keys: list[str]) -> dict[str, str]:
    """object key -> master key id recorded for it, for those of ``keys`` that have one."""
    if not keys:
        return {}
    q = select(object_keys.c.object_key, object_keys.c.key_id).where(
        object_keys.c.tier == tier, object_keys.c.object_key.in_(keys))
    return {r[0]: r[1] for r in conn.execute(q)}


def record_key_ids(conn: Connection, tier: str, seen: dict[str, str], now: datetime) -> None:
    """Remember the master key id of each object in ``seen`` (replacing what was recorded)."""
    if not seen:
        return
    conn.execute(delete(object_keys).where(object_keys.c.tier == tier, object_keys.c.object_key.in_(list(seen))))
    conn.execute(insert(object_keys), [
        {"tier": tier, "object_key": k, "key_id": kid, "checked_at": now} for k, kid in seen.items()
    ])


def forget_missing(conn: Connection, tiers: Iterable[str]) -> int:
    """Drop the records of objects the catalog no longer has (moved away, purged)."""
    gone = ~select(locations.c.id).where(
        and_(locations.c.tier == object_keys.c.tier, locations.c.object_key == object_keys.c.object_key)
    ).exists()
    result = conn.execute(delete(object_keys).where(object_keys.c.tier.in_(list(tiers)), gone))
    return int(result.rowcount or 0)


def key_usage(conn: Connection, tier: str) -> dict[str | None, int]:
    """Objects of ``tier`` per recorded master key id (None: not looked at since written)."""
    objs = select(locations.c.tier, locations.c.object_key).where(locations.c.tier == tier).distinct().subquery()
    q = (select(object_keys.c.key_id, func.count())
         .select_from(objs.outerjoin(object_keys, and_(object_keys.c.tier == objs.c.tier,
                                                   object_keys.c.object_key == objs.c.object_key)))
         .group_by(object_keys.c.key_id))
    return {r[0]: int(r[1]) for r in conn.execute(q)}
