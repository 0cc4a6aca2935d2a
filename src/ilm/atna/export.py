"""``ilm audit export --format atna``: the hash-chained trail as DICOM audit messages in a file.

Each entry with a DICOM event (``ilm.atna.messages.from_audit_entry``) becomes
one RFC 5424 record, one per line, the same records ``[audit] file`` gets;
entries without one (plans, holds, labels) are counted by action. The file is
written whole or not at all (a temporary file renamed into place).
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ilm.atna import messages as m
from ilm.atna.syslog import audit_record
from ilm.catalog import Catalog
from ilm.catalog.atna import audit_entries_since, study_objects
from ilm.config import Settings

__all__ = ["ExportReport", "export_trail"]


@dataclass
class ExportReport:
    path: Path
    entries: int = 0
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # action -> entries without a DICOM event


def export_trail(catalog: Catalog, settings: Settings, out: Path, *, since: datetime | None = None,
                 batch: int = 1000) -> ExportReport:
    a = settings.audit
    source = m.AuditSource(a.source_id or settings.dicom.ae_title, a.enterprise_site_id)
    hostname = socket.gethostname()
    archive = m.Participant(a.app_name, alternative_user_id=f"AETITLES={settings.dicom.ae_title}", address=hostname)
    report = ExportReport(out)
    skipped: Counter[str] = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f, catalog.read() as conn:
            entries = list(audit_entries_since(conn, since))
            for i in range(0, len(entries), batch):
                chunk = entries[i:i + batch]
                objs = study_objects(conn, [e.study_uid for e in chunk if e.study_uid])
                for e in chunk:
                    ev = m.from_audit_entry(e, objs.get(e.study_uid or ""), archive)
                    if ev is None:
                        skipped[e.action] += 1
                        continue
                    f.write(audit_record(ev, source, hostname=hostname, app_name=a.app_name,
                                         procid=str(os.getpid())) + b"\n")
                    report.written += 1
            report.entries = len(entries)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    report.skipped = dict(sorted(skipped.items()))
    return report
