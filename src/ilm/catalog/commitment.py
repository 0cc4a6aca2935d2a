"""Storage Commitment: which instances the archive holds a verified copy of."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ilm.catalog.schema import instances, locations, studies
from ilm.models import CopyState

__all__ = ["verified_sop_classes"]

_CHUNK = 500  # bound the IN list (SQLite's variable limit, PostgreSQL's plan size)


def verified_sop_classes(conn: Connection, sop_uids: Sequence[str]) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of each of ``sop_uids`` that belongs to
    an active study and has at least one VERIFIED copy on some tier."""
    out: dict[str, str] = {}
    uids = list(dict.fromkeys(sop_uids))
    for i in range(0, len(uids), _CHUNK):
        chunk = uids[i:i + _CHUNK]
        q = (
            select(instances.c.sop_uid, instances.c.sop_class_uid)
            .join(studies, studies.c.id == instances.c.study_pk)
            .where(instances.c.sop_uid.in_(chunk), studies.c.state == "active")
            .where(select(locations.c.id)
                   .where(locations.c.instance_pk == instances.c.id,
                          locations.c.state == CopyState.VERIFIED.value)
                   .exists())
        )
        for uid, cls in conn.execute(q):
            out[uid] = cls
    return out
