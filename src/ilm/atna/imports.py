"""One Import audit message per study per batch, not one per instance.

A batch is what arrived together: the instances of one DICOM association,
one STOW-RS request, one ``ilm import`` run. ``note`` is called for every
instance (a dictionary update); ``close`` hands one message per study to
``emit``: its patient, its SOP classes with their instance counts, and a
minor failure (outcome 4) when some of its instances were refused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType

from ilm.atna import messages as m
from ilm.models import InstanceFacts

__all__ = ["ImportBatch"]


@dataclass
class _Study:
    patient_id: str
    issuer: str
    patient_name: str
    accession: str
    sop_classes: dict[str, int] = field(default_factory=dict)
    failed: int = 0


class ImportBatch:
    def __init__(self, emit: Callable[[list[m.AuditEvent]], None], archive: m.Participant, sender: m.Participant,
                 *, clock: Callable[[], datetime]) -> None:
        self._emit = emit
        self._archive = archive
        self._sender = sender
        self._clock = clock
        self._studies: dict[str, _Study] = {}
        self._lock = threading.Lock()
        self._closed = False

    def note(self, facts: InstanceFacts, stored: bool) -> None:
        """One instance of the batch: stored (or already held), or refused."""
        with self._lock:
            s = self._studies.get(facts.study_instance_uid)
            if s is None:
                s = self._studies[facts.study_instance_uid] = _Study(
                    facts.patient_id, facts.issuer_of_patient_id, facts.patient_name, facts.accession_number)
            if stored:
                s.sop_classes[facts.sop_class_uid] = s.sop_classes.get(facts.sop_class_uid, 0) + 1
            else:
                s.failed += 1

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            studies, self._studies = self._studies, {}
        at = self._clock()
        self._emit([
            m.instances_imported(at, self._archive, self._sender, m.StudyObject(
                uid, s.patient_id, s.issuer, s.patient_name, s.accession, tuple(sorted(s.sop_classes.items()))),
                failed=s.failed)
            for uid, s in studies.items()
        ])

    def __enter__(self) -> "ImportBatch":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
