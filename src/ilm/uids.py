"""Validation of DICOM UIDs and the storage keys built from them.

Only validated UIDs reach a path or an object key: a UID is 1-64 characters
of digits and dots (PS3.5 9.1), so ``..``, ``/`` and NUL can never appear.
"""

from __future__ import annotations

import re

from ilm.errors import InvalidUID

__all__ = ["validate_uid", "instance_key"]

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def validate_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` as a clean UID string or raise InvalidUID naming ``what``."""
    if value is None:
        raise InvalidUID(f"{what} is missing")
    text = str(value).strip().rstrip("\x00").strip()
    if not text:
        raise InvalidUID(f"{what} is empty")
    if len(text) > 64:
        raise InvalidUID(f"{what} is longer than 64 characters")
    if not _UID.fullmatch(text):
        raise InvalidUID(f"{what} {text[:80]!r} is not digits and dots")
    return text


def instance_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The object key of one instance on any tier: ``study/series/sop.dcm``."""
    return "/".join(
        (
            validate_uid(study_uid, "StudyInstanceUID"),
            validate_uid(series_uid, "SeriesInstanceUID"),
            validate_uid(sop_uid, "SOPInstanceUID") + ".dcm",
        )
    )
