"""The query engine behind C-FIND and QIDO-RS: one meaning of a query, two front-ends.

``find(conn, level, filters, ...)`` answers a query at one of four levels
(PATIENT, STUDY, SERIES, IMAGE) with plain dicts keyed by DICOM keyword.
Only active studies are visible: a quarantined or purging study, its series
and instances are never found, and a patient is found only while at least
one of their studies is active. Queries read; they never record an access.

Matching (PS3.4 C.2.2.2), per value of ``filters`` (keyword -> DICOM string):

    ""  or "*"                      universal: no condition
    Doe^John                        single value
    Doe*  D?e                       wildcard (* any run, ? one character);
                                    SQL's own metacharacters (% _) match literally
    20200101-20201231  -20201231  20200101-
                                    range (DA, TM), bounds inclusive
    a\\b\\c                         list: matches any of the values (for UIDs this
                                    is PS3.4's List of UID Matching; ilm extends it
                                    to every attribute); UIDs may also be comma-separated

Case: Person Names (PN) match case-insensitively (PS3.4 leaves it to the
SCP; a user typing "doe*" means Doe), and a single-value PN also matches the
alphabetic group of a name with ideographic/phonetic groups. Code strings
the catalog stores upper-case (Modality, ModalitiesInStudy,
BodyPartExamined) are compared upper-case. Every other attribute matches
case-sensitively, as PS3.4 says. On SQLite, case folding covers ASCII
letters only (SQLite's lower()); PostgreSQL folds every letter.

Wildcards are refused for UIDs, dates, times and numbers (InvalidQuery);
date and time ranges are matched independently (no combined date-time
matching). A time given with fewer components covers the whole hour or
minute: "1012" matches 10:12:00 to 10:12:59.999999.

An attribute of a lower level than the query's (e.g. Modality in a STUDY
query) is refused; attributes of the levels above may match and be
returned at any level (relational-style queries). Filters are always bound
parameters; limit and offset run in SQL.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import and_, func, literal, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from ilm.catalog.schema import instances, patients, series, studies
from ilm.errors import InvalidQuery

__all__ = ["LEVELS", "find", "query_attributes", "parse_matching"]

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# Kinds of attribute: how a value is matched and how it is returned.
TEXT, PN, CS_UPPER, UID, DATE, TIME, INT, MULTI, MULTI_UID, COUNT, AVAILABILITY = (
    "text", "pn", "cs-upper", "uid", "date", "time", "int", "multi", "multi-uid", "count", "availability")
_RETURN_ONLY = (COUNT, AVAILABILITY)


@dataclass(frozen=True, slots=True)
class _Attr:
    keyword: str
    level: int
    kind: str
    column: Any  # a column of the schema, or a name resolved per query (patient counts, availability)


def _a(keyword: str, level: str, kind: str, column: Any) -> _Attr:
    return _Attr(keyword, LEVELS.index(level), kind, column)


_ATTRS: dict[str, _Attr] = {a.keyword: a for a in (
    _a("PatientID", "PATIENT", TEXT, patients.c.patient_id),
    _a("IssuerOfPatientID", "PATIENT", TEXT, patients.c.issuer),
    _a("PatientName", "PATIENT", PN, patients.c.name),
    _a("PatientBirthDate", "PATIENT", DATE, patients.c.birth_date),
    _a("PatientSex", "PATIENT", TEXT, patients.c.sex),
    _a("NumberOfPatientRelatedStudies", "PATIENT", COUNT, "n_studies"),
    _a("NumberOfPatientRelatedSeries", "PATIENT", COUNT, "n_series"),
    _a("NumberOfPatientRelatedInstances", "PATIENT", COUNT, "n_instances"),
    _a("StudyInstanceUID", "STUDY", UID, studies.c.study_uid),
    _a("StudyDate", "STUDY", DATE, studies.c.study_date),
    _a("StudyTime", "STUDY", TIME, studies.c.study_time),
    _a("AccessionNumber", "STUDY", TEXT, studies.c.accession_number),
    _a("StudyDescription", "STUDY", TEXT, studies.c.description),
    _a("StudyID", "STUDY", TEXT, studies.c.study_id),
    _a("ReferringPhysicianName", "STUDY", PN, studies.c.referring_physician),
    _a("ModalitiesInStudy", "STUDY", MULTI, studies.c.modalities),
    _a("SOPClassesInStudy", "STUDY", MULTI_UID, studies.c.sop_classes),
    _a("InstitutionName", "STUDY", TEXT, studies.c.institution_name),
    _a("PatientAge", "STUDY", TEXT, studies.c.patient_age),
    _a("NumberOfStudyRelatedSeries", "STUDY", COUNT, studies.c.series_count),
    _a("NumberOfStudyRelatedInstances", "STUDY", COUNT, studies.c.instance_count),
    _a("InstanceAvailability", "STUDY", AVAILABILITY, studies.c.tiers),
    _a("SeriesInstanceUID", "SERIES", UID, series.c.series_uid),
    _a("Modality", "SERIES", CS_UPPER, series.c.modality),
    _a("SeriesNumber", "SERIES", INT, series.c.number),
    _a("SeriesDescription", "SERIES", TEXT, series.c.description),
    _a("BodyPartExamined", "SERIES", CS_UPPER, series.c.body_part),
    _a("StationName", "SERIES", TEXT, series.c.station_name),
    _a("SeriesDate", "SERIES", DATE, series.c.series_date),
    _a("NumberOfSeriesRelatedInstances", "SERIES", COUNT, series.c.instance_count),
    _a("SOPInstanceUID", "IMAGE", UID, instances.c.sop_uid),
    _a("SOPClassUID", "IMAGE", UID, instances.c.sop_class_uid),
    _a("InstanceNumber", "IMAGE", INT, instances.c.number),
    _a("AvailableTransferSyntaxUID", "IMAGE", UID, instances.c.transfer_syntax_uid),
)}

# The unique key of each level, always returned.
_UNIQUE = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def query_attributes() -> dict[str, str]:
    """Every attribute the engine knows: keyword -> the level it belongs to."""
    return {k: LEVELS[a.level] for k, a in _ATTRS.items()}


# -- values: parsing and validation -------------------------------------------

_DA = re.compile(r"\d{8}")
_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_UID_CHARS = re.compile(r"[0-9.]{1,64}")
_INT = re.compile(r"[+-]?\d{1,10}")


def _date(keyword: str, text: str) -> date:
    if not _DA.fullmatch(text):
        raise InvalidQuery(f"{keyword}: {text!r} is not a date (YYYYMMDD) or a date range (YYYYMMDD-YYYYMMDD)")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise InvalidQuery(f"{keyword}: {text!r} is not a valid date") from None


def _time(keyword: str, text: str) -> str:
    if not _TM.fullmatch(text) or int(text[:2]) > 23 or (len(text) >= 4 and int(text[2:4]) > 59) \
            or (len(text) >= 6 and int(text[4:6]) > 60):
        raise InvalidQuery(f"{keyword}: {text!r} is not a time (HH, HHMM, HHMMSS[.FFFFFF]) or a time range")
    return text


def _elements(a: _Attr, value: str) -> list[str]:
    """The values of a list (backslash-separated; UIDs also comma-separated)."""
    sep = r"[\\,]" if a.kind in (UID, MULTI_UID) else r"\\"
    parts = [p.strip() for p in re.split(sep, value)]
    if len(parts) > 1 and any(not p for p in parts):
        raise InvalidQuery(f"{a.keyword}: {value!r} has an empty value in its list")
    return parts


def parse_matching(keyword: str, value: str) -> str:
    """The matching type PS3.4 gives ``value`` for ``keyword``: universal,
    single, wildcard, range or list (InvalidQuery when the value cannot match)."""
    a = _attr(keyword)
    text = (value or "").strip()
    if text in ("", "*"):
        return "universal"
    if a.kind in _RETURN_ONLY:
        raise InvalidQuery(f"{keyword} is a return key only: send it empty")
    parts = _elements(a, text)
    for p in parts:
        _check_element(a, p)
    if len(parts) > 1:
        return "list"
    if a.kind in (DATE, TIME) and "-" in text:
        return "range"
    return "wildcard" if ("*" in text or "?" in text) else "single"


def _check_element(a: _Attr, p: str) -> None:
    wild = "*" in p or "?" in p
    if a.kind in (UID, MULTI_UID):
        if wild:
            raise InvalidQuery(f"{a.keyword}: wildcards are not allowed in UIDs ({p!r})")
        if not _UID_CHARS.fullmatch(p):
            raise InvalidQuery(f"{a.keyword}: {p!r} is not a UID (digits and dots, at most 64 characters)")
    elif a.kind in (DATE, TIME):
        if wild:
            raise InvalidQuery(f"{a.keyword}: wildcards are not allowed in dates and times ({p!r}); use a range")
        lo, sep, hi = p.partition("-")
        if sep and not lo and not hi:
            raise InvalidQuery(f"{a.keyword}: {p!r} is a range without bounds")
        check = _date if a.kind == DATE else _time
        for bound in (lo, hi) if sep else (p,):
            if bound:
                check(a.keyword, bound)
        if sep and lo and hi and a.kind == DATE and _date(a.keyword, lo) > _date(a.keyword, hi):
            raise InvalidQuery(f"{a.keyword}: range {p!r} ends before it starts")
    elif a.kind == INT:
        if not _INT.fullmatch(p):
            raise InvalidQuery(f"{a.keyword}: {p!r} is not an integer")
    if len(p) > 1024:
        raise InvalidQuery(f"{a.keyword}: value longer than 1024 characters")


def _attr(keyword: str) -> _Attr:
    a = _ATTRS.get(keyword)
    if a is None:
        raise InvalidQuery(f"{keyword!r} is not an attribute ilm can match on "
                           f"(known: {', '.join(sorted(_ATTRS))})")
    return a


# -- matching: SQL conditions ---------------------------------------------------

_ESC = "!"


def _like_pattern(text: str, *, wild: bool) -> str:
    """``text`` as a LIKE pattern (escape '!'): * and ? become % and _ when ``wild``;
    the user's own % _ and ! match literally."""
    out = []
    for c in text:
        if wild and c == "*":
            out.append("%")
        elif wild and c == "?":
            out.append("_")
        elif c in "%_!":
            out.append(_ESC + c)
        else:
            out.append(c)
    return "".join(out)


def _glob_pattern(text: str, *, wild: bool) -> str:
    """``text`` as an SQLite GLOB pattern (case-sensitive, unlike SQLite's LIKE)."""
    out = []
    for c in text:
        if c == "[":
            out.append("[[]")
        elif c in "*?" and not wild:
            out.append(f"[{c}]")
        else:
            out.append(c)
    return "".join(out)


def _pattern_match(expr: Any, text: str, dialect: str, *, fold: bool, wild: bool,
                   prefix: str = "", suffix: str = "") -> ColumnElement[bool]:
    """``expr`` matches the pattern ``prefix + text + suffix``, where prefix and
    suffix are written in LIKE syntax with only '%' and literal backslashes."""
    if dialect == "sqlite" and not fold:
        pat = prefix.replace("%", "*") + _glob_pattern(text, wild=wild) + suffix.replace("%", "*")
        return expr.op("GLOB")(pat)  # type: ignore[no-any-return]
    pat = prefix + _like_pattern(text.lower() if fold else text, wild=wild) + suffix
    target: Any = func.lower(expr) if fold else expr
    return target.like(pat, escape=_ESC)  # type: ignore[no-any-return]


def _element_condition(a: _Attr, col: Any, p: str, dialect: str) -> ColumnElement[bool]:
    wild = "*" in p or "?" in p
    if a.kind == CS_UPPER:
        p = p.upper()
    if a.kind in (MULTI, MULTI_UID):
        wrapped = literal("\\") + col + literal("\\")
        return _pattern_match(wrapped, p.upper() if a.kind == MULTI else p, dialect, fold=False, wild=wild,
                              prefix="%\\", suffix="\\%")
    if a.kind == UID:
        return col == p  # type: ignore[no-any-return]
    if a.kind == INT:
        return col == int(p)  # type: ignore[no-any-return]
    if a.kind == DATE:
        lo, sep, hi = p.partition("-")
        if not sep:
            return col == _date(a.keyword, p)  # type: ignore[no-any-return]
        conds = [col.isnot(None)]
        if lo:
            conds.append(col >= _date(a.keyword, lo))
        if hi:
            conds.append(col <= _date(a.keyword, hi))
        return and_(*conds)
    if a.kind == TIME:
        # Stored as sent (HHMMSS.FFFFFF, maybe shorter): compared as text, where
        # a shorter bound is a prefix: the upper bound covers all its completions.
        lo, sep, hi = (p.partition("-") if "-" in p else (p, "-", p))
        conds = [col != ""]
        if lo:
            conds.append(col >= lo)
        if hi:
            conds.append(col <= hi + "~")  # '~' sorts after digits and '.'
        return and_(*conds)
    if a.kind == PN:
        if wild:
            return _pattern_match(col, p, dialect, fold=True, wild=True)
        # the whole name, or its alphabetic group when ideographic/phonetic groups follow
        return or_(func.lower(col) == p.lower(),
                   _pattern_match(col, p, dialect, fold=True, wild=False, suffix="=%"))
    if wild:
        return _pattern_match(col, p, dialect, fold=False, wild=True)
    return col == p  # type: ignore[no-any-return]


def _condition(a: _Attr, col: Any, value: str, dialect: str) -> ColumnElement[bool] | None:
    """The SQL condition for one filter, None for universal matching."""
    if parse_matching(a.keyword, value) == "universal":
        return None
    parts = _elements(a, value.strip())
    if a.kind == UID and len(parts) > 1:
        return col.in_(parts)  # type: ignore[no-any-return]
    conds = [_element_condition(a, col, p, dialect) for p in parts]
    return conds[0] if len(conds) == 1 else or_(*conds)


# -- the query --------------------------------------------------------------------


def _check_level(level: str) -> int:
    name = (level or "").strip().upper()
    if name not in LEVELS:
        raise InvalidQuery(f"query level {level!r} is not one of {', '.join(LEVELS)}")
    return LEVELS.index(name)


def _check_paging(limit: int | None, offset: int) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidQuery(f"limit must be a non-negative integer, not {limit!r}")
    if not isinstance(offset, int) or offset < 0:
        raise InvalidQuery(f"offset must be a non-negative integer, not {offset!r}")


def _availability(tiers: str, archive_tiers: Collection[str]) -> str:
    held = [t for t in (tiers or "").split("\\") if t]
    if not held:
        return "UNAVAILABLE"
    return "ONLINE" if any(t not in archive_tiers for t in held) else "NEARLINE"


def _output(a: _Attr, value: Any, archive_tiers: Collection[str]) -> Any:
    if a.kind == DATE:
        return value.strftime("%Y%m%d") if value is not None else ""
    if a.kind in (INT, COUNT):
        return None if value is None else int(value)
    if a.kind in (MULTI, MULTI_UID):
        return [v for v in (value or "").split("\\") if v]
    if a.kind == AVAILABILITY:
        return _availability(value, archive_tiers)
    return value or ""


def find(
    conn: Connection,
    level: str,
    filters: Mapping[str, str],
    *,
    fields: Iterable[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
    archive_tiers: Collection[str] = (),
) -> list[dict[str, Any]]:
    """The entities of ``level`` matching every filter, as dicts keyword -> value.

    ``fields`` names the attributes to return (None: every attribute known at
    this level and above); keywords the engine does not know, or of a lower
    level, are left out. The unique keys of the level and the levels above are
    always returned. Values: str ('' when empty; dates as YYYYMMDD), int or
    None for numbers, list[str] for multi-valued attributes.
    InstanceAvailability is NEARLINE when every tier holding the study is an
    ``archive_tiers`` tier, ONLINE otherwise.

    Raises InvalidQuery for an unknown level, an unknown attribute in
    ``filters``, a lower-level attribute with a value, or a malformed value.
    """
    lv = _check_level(level)
    _check_paging(limit, offset)
    matching: list[tuple[_Attr, str]] = []
    for keyword, value in filters.items():
        a = _attr(keyword)
        if parse_matching(keyword, value) == "universal":
            continue
        if a.level > lv:
            raise InvalidQuery(f"{keyword} is a {LEVELS[a.level]}-level attribute: it cannot match at the "
                               f"{LEVELS[lv]} level" + (" (use ModalitiesInStudy)" if keyword == "Modality" else ""))
        matching.append((a, value))

    wanted = [a for a in _ATTRS.values() if a.level <= lv] if fields is None else \
        [_ATTRS[k] for k in dict.fromkeys(fields) if k in _ATTRS and _ATTRS[k].level <= lv]
    for k in _UNIQUE[: lv + 1]:
        if _ATTRS[k] not in wanted:
            wanted.append(_ATTRS[k])

    active = studies.c.state == "active"
    counts = None
    if lv == 0 or any(isinstance(a.column, str) for a in wanted):
        counts = (
            select(studies.c.patient_pk.label("patient_pk"), func.count().label("n_studies"),
                   func.coalesce(func.sum(studies.c.series_count), 0).label("n_series"),
                   func.coalesce(func.sum(studies.c.instance_count), 0).label("n_instances"))
            .where(active).group_by(studies.c.patient_pk).subquery("patient_counts")
        )

    def column(a: _Attr) -> Any:
        if isinstance(a.column, str):
            assert counts is not None
            return counts.c[a.column]
        return a.column

    q = select(*(column(a).label(a.keyword) for a in wanted))
    if lv == 0:
        assert counts is not None
        q = q.select_from(patients.join(counts, counts.c.patient_pk == patients.c.id))
        order: list[Any] = [patients.c.patient_id, patients.c.issuer, patients.c.id]
    else:
        src: Any = studies.join(patients, patients.c.id == studies.c.patient_pk)
        if counts is not None:
            src = src.join(counts, counts.c.patient_pk == patients.c.id)
        if lv >= 2:
            src = src.join(series, series.c.study_pk == studies.c.id)
        if lv >= 3:
            src = src.join(instances, instances.c.series_pk == series.c.id)
        q = q.select_from(src).where(active)
        order = [studies.c.study_date.desc().nulls_last(), studies.c.study_time.desc(), studies.c.id.desc()]
        if lv >= 2:
            order += [series.c.number.asc().nulls_last(), series.c.id]
        if lv >= 3:
            order += [instances.c.number.asc().nulls_last(), instances.c.id]

    dialect = conn.dialect.name
    for a, value in matching:
        cond = _condition(a, column(a), value, dialect)
        if cond is not None:
            q = q.where(cond)
    q = q.order_by(*order).offset(offset)
    if limit is not None:
        q = q.limit(limit)
    out = []
    for row in conn.execute(q):
        m = row._mapping
        out.append({a.keyword: _output(a, m[a.keyword], archive_tiers) for a in wanted})
    return out
