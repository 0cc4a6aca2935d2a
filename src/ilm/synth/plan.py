"""Deterministic plans of synthetic DICOM archives. Pure: no I/O, no clock.

``generate(config)`` yields one :class:`StudySpec` per study: the patient,
the study's DICOM facts, its series (modality, SOP class, body part, instance
count, image geometry, bytes per instance) and an access history (the
datetimes at which the study was read). The same config gives the same
plan, bit for bit; the UIDs depend on every field of the config, so two
different configs never share a UID and the same config always repeats its
own (importing it twice yields duplicates, never conflicts).

What the plan models, and where the numbers come from (RESEARCH.md):

- Study dates spread over ``years`` years before ``reference``, the number
  of studies growing by ``growth`` per year (20-50 % is commonly reported).
- A modality mix by study count of roughly CR/DX 33 %, US 20 %, CT 16 %,
  MG 10 %, MR 10 %, NM/PT 4 %, XA 2 %, in which CT holds about half of the
  bytes. Sizes at ``scale=1``: CT slice 512 KB and hundreds of slices, CR
  image about 7.5 MB, MR about 19 MB per 50 slices, FFDM 4-view about 70 MB,
  tomosynthesis (DBT) about 1.2 GB per study, US small 8-bit frames.
- Mammography: screening women with yearly exams (so MQSA's "later
  mammogram" clause has both cases), 2D views as Digital Mammography X-Ray
  For Presentation (some with For Processing), tomosynthesis growing over
  the last ten years, stored as Breast Tomosynthesis Image or, as some
  vendors do, as Secondary Capture with BodyPartExamined BREAST and modality
  MG or OT.
- About ``child_share`` (15 %) of studies are of children (< 18 at the
  study); children have priors within a few years, and many are adults now.
- Repeat patients with priors (about 2.5 studies per patient by default;
  adults often repeat the same protocol, a follow-up).
- Access: most studies are read in their first month; about half are never
  read again; the others are read later with the age distribution of the
  Groningen study (of requests for studies older than a year: 48 % 1-2
  years old, 22 % 2-3, 13 % 3-4, 9 % 4-5, 6 % 5-6, 2 % 6-7), and when a
  patient comes back, the prior is read for comparison (38.7 % of reports).
- ``missing_rate`` of studies carry a deliberately missing or unparsable
  fact (no StudyDate, PatientBirthDate "19XX0101" or empty, odd PatientAge)
  so that fail-closed safety nets can be exercised; ``StudySpec.defects``
  names them.

``scale`` shrinks (or grows) the archive: it multiplies the number of
instances of image stacks (CT, MR, PET slices, US images, tomosynthesis
slices and frames) and the pixel area of every image (rows and columns by
its square root), so bytes per study go roughly with ``scale ** 2``; the
number of views (mammography, radiographs) is kept. ``scale=1`` is the real
world; ``0.05`` gives small files for a demo.

UIDs are ``2.25.<integer>`` (PS3.5 B.2), the integer a 128-bit digest of the
config with a counter in its low bits; an instance's UID is its series' UID
plus ``.<instance number>``. All are at most 64 characters.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import NamedTuple

__all__ = [
    "SynthConfig",
    "PatientSpec",
    "SeriesSpec",
    "StudySpec",
    "PlanTotals",
    "generate",
    "generate_blocks",
    "plan",
    "totals",
    "age_string",
    "HEADER_BYTES",
    "ISSUER",
    "DEFECTS",
    "GRONINGEN",
    "SOP",
]

# SOP classes (PS3.4 B.5).
SOP = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "MG_PROCESSING": "1.2.840.10008.5.1.4.1.1.1.2.1",
    "BTO": "1.2.840.10008.5.1.4.1.1.13.1.3",
    "SC": "1.2.840.10008.5.1.4.1.1.7",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "US_MF": "1.2.840.10008.5.1.4.1.1.3.1",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
}

ISSUER = "ILM-SYNTH"
# What files.py adds around the pixel data (file meta and header), on average.
HEADER_BYTES = 1200
# Deliberate defects, each on about missing_rate / 4 of the studies.
DEFECTS = ("no_study_date", "bad_birth_date", "no_birth_date", "odd_patient_age")
# Ages of reads of studies older than a year (Groningen): 1-2 y, 2-3 y, ... 6-7 y.
GRONINGEN = (0.48, 0.22, 0.13, 0.09, 0.06, 0.02)
PRIOR_COMPARISON = 0.387   # share of reports compared against a prior
NEVER_REREAD = 0.5         # share of studies never read after their first month
FIRST_YEAR_REREAD = 0.45   # of the later reads, the share within the first year
STUDIES_PER_PATIENT = 2.5  # default when --patients is not given
_DAY = timedelta(days=1)
_YEAR_DAYS = 365.2425


@dataclass(frozen=True, slots=True)
class SynthConfig:
    """Everything a plan depends on. Same config, same plan."""

    reference: date                 # "today" of the plan: studies and reads are before it
    studies: int = 300
    patients: int | None = None     # default: studies / 2.5
    years: int = 15
    growth: float = 0.2             # yearly growth of the study count
    scale: float = 0.05
    seed: int = 1
    missing_rate: float = 0.01
    child_share: float = 0.15
    mammography_share: float = 0.10

    def __post_init__(self) -> None:
        if self.studies < 0:
            raise ValueError("studies must be >= 0")
        if self.patients is not None and self.patients < 1:
            raise ValueError("patients must be >= 1")
        if not 1 <= self.years <= 100:
            raise ValueError("years must be between 1 and 100")
        if not -0.9 < self.growth <= 10:
            raise ValueError("growth must be between -0.9 and 10")
        if not 0 < self.scale <= 10:
            raise ValueError("scale must be > 0 and <= 10")
        for name in ("missing_rate", "child_share", "mammography_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.child_share + self.mammography_share > 1:
            raise ValueError("child_share + mammography_share must be <= 1")

    @property
    def patient_count(self) -> int:
        if self.studies == 0:
            return 0
        n = self.patients if self.patients is not None else round(self.studies / STUDIES_PER_PATIENT)
        return max(1, min(n, self.studies))

    @property
    def now(self) -> datetime:
        """The plan's present: midnight UTC at the start of ``reference``."""
        return datetime.combine(self.reference, time(0, 0), tzinfo=timezone.utc)

    @property
    def start(self) -> date:
        """The first day studies can have."""
        return self.reference - timedelta(days=round(self.years * _YEAR_DAYS))

    def key(self, *, with_scale: bool = True) -> bytes:
        """A digest of the config. UIDs and identifiers use all of it; the random
        streams leave ``scale`` out, so that another scale gives the same patients,
        studies, dates and series, only with other instance counts and sizes (and
        other UIDs, since the files differ)."""
        text = "|".join(
            str(v)
            for v in (
                "ilm-synth-1", self.reference.isoformat(), self.studies, self.patient_count, self.years,
                repr(float(self.growth)), repr(float(self.scale)) if with_scale else "-", self.seed,
                repr(float(self.missing_rate)), repr(float(self.child_share)), repr(float(self.mammography_share)),
            )
        )
        return hashlib.sha256(text.encode()).digest()


class PatientSpec(NamedTuple):
    patient_id: str
    issuer: str
    name: str
    sex: str
    birth_date: date        # the truth
    birth_date_raw: str     # as written: YYYYMMDD, or "" / "19XX0101" for a defect
    kind: str               # "adult", "child" or "screening"


class SeriesSpec(NamedTuple):
    series_uid: str
    number: int
    modality: str
    sop_class_uid: str
    body_part: str
    description: str
    instance_count: int
    frames: int                 # frames per instance (1 = single-frame)
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    samples_per_pixel: int
    photometric: str
    station_name: str
    manufacturer: str
    image_type: str             # backslash-joined ImageType
    instance_bytes: int         # approximate Part 10 size of one instance

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * self.frames * self.samples_per_pixel * (self.bits_allocated // 8)

    @property
    def size_bytes(self) -> int:
        return self.instance_count * self.instance_bytes

    def sop_instance_uid(self, number: int) -> str:
        """The SOP Instance UID of instance ``number`` (1-based)."""
        return f"{self.series_uid}.{number}"


class StudySpec(NamedTuple):
    position: int               # 0-based place in the plan
    study_uid: str
    accession_number: str
    study_id: str
    patient: PatientSpec
    study_date: date            # the truth, also when StudyDate is left out
    study_time: str             # HHMMSS
    study_date_raw: str         # as written: YYYYMMDD, or "" when StudyDate is left out
    description: str
    institution: str
    referring_physician: str
    patient_age: str            # PatientAge as written (AS, or odd for a defect)
    age_at_study: float         # years, from the true dates
    series: tuple[SeriesSpec, ...]
    accesses: tuple[datetime, ...]  # reads, oldest first, all before the reference date
    defects: tuple[str, ...]
    acquired_at: datetime       # study date and time, UTC

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted({s.modality for s in self.series}))

    @property
    def instance_count(self) -> int:
        return sum(s.instance_count for s in self.series)

    @property
    def size_bytes(self) -> int:
        return sum(s.instance_count * s.instance_bytes for s in self.series)

    @property
    def last_accessed_at(self) -> datetime | None:
        return self.accesses[-1] if self.accesses else None

    @property
    def is_child(self) -> bool:
        return self.age_at_study < 18


# -- templates ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _S:
    """A series template at scale 1."""

    modality: str
    sop: str
    description: str
    count: tuple[int, int]          # instances (inclusive range)
    rows: int
    columns: int
    bits: int = 16
    stored: int = 12
    frames: tuple[int, int] = (1, 1)
    stack: bool = True              # the instance count scales (slices), or not (views)
    spp: int = 1
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL"


@dataclass(frozen=True, slots=True)
class _P:
    """A study protocol: what a study of this kind contains."""

    group: str
    description: str
    body_part: str
    series: tuple[_S, ...]
    adult: float                    # weight among adult studies
    child: float                    # weight among child studies
    pick: tuple[int, int] | None = None   # choose this many of ``series`` (MR sequences)


def _ct(desc: str, n: tuple[int, int], image_type: str = "ORIGINAL\\PRIMARY\\AXIAL") -> _S:
    return _S("CT", SOP["CT"], desc, n, 512, 512, image_type=image_type)


_SCOUT = _S("CT", SOP["CT"], "SCOUT", (1, 2), 512, 512, stack=False, image_type="ORIGINAL\\PRIMARY\\LOCALIZER")


def _mr(desc: str, n: tuple[int, int], size: int) -> _S:
    return _S("MR", SOP["MR"], desc, n, size, size)


def _xr(desc: str, body: str, views: tuple[int, int], adult: float, child: float) -> _P:
    # The modality (CR or DX) is chosen by date: DX replaces CR over the years.
    return _P("XR", desc, body, (_S("CR", SOP["CR"], desc, views, 2140, 1760, stack=False, stored=12,
                                    image_type="ORIGINAL\\PRIMARY"),), adult, child)


def _us(desc: str, body: str, n: tuple[int, int], adult: float, child: float) -> _P:
    return _P("US", desc, body, (
        _S("US", SOP["US"], desc, n, 480, 640, bits=8, stored=8, image_type="ORIGINAL\\PRIMARY\\ABDOMINAL"),
    ), adult, child)


_MR_BRAIN = (_mr("SAG T1", (20, 30), 256), _mr("AX T2", (24, 36), 512), _mr("AX FLAIR", (24, 36), 256),
             _mr("AX DWI", (48, 90), 256), _mr("AX SWI", (60, 120), 256), _mr("AX T1 POST", (24, 36), 512),
             _mr("COR T1 POST", (24, 36), 512), _mr("3D T1 MPRAGE", (160, 192), 256))
_MR_KNEE = (_mr("SAG PD FS", (24, 34), 512), _mr("COR PD FS", (24, 34), 512), _mr("AX PD FS", (28, 40), 512),
            _mr("SAG T1", (24, 34), 512), _mr("COR T1", (24, 34), 512))
_MR_SPINE = (_mr("SAG T1", (13, 17), 512), _mr("SAG T2", (13, 17), 512), _mr("SAG STIR", (13, 17), 512),
             _mr("AX T2", (30, 48), 256), _mr("AX T1", (30, 48), 256))
_MR_ABD = (_mr("COR HASTE", (25, 35), 256), _mr("AX T2 FS", (30, 40), 256), _mr("AX DWI", (90, 150), 256),
           _mr("AX T1 IN OPP", (60, 80), 256), _mr("AX VIBE DYN", (300, 400), 256))

PROTOCOLS: tuple[_P, ...] = (
    _P("CT", "CT HEAD WO CONTRAST", "HEAD",
       (_SCOUT, _ct("AXIAL 5MM", (28, 40)), _ct("AXIAL 0.625MM BONE", (200, 260))), 4.0, 2.0),
    _P("CT", "CT CHEST W CONTRAST", "CHEST",
       (_SCOUT, _ct("AXIAL 5MM", (60, 80)), _ct("AXIAL 1MM", (300, 420)), _ct("AXIAL 1MM LUNG", (300, 420))), 5.0, 1.5),
    _P("CT", "CT ABDOMEN PELVIS W CONTRAST", "ABDOMEN",
       (_SCOUT, _ct("AXIAL 5MM", (80, 110)), _ct("AXIAL 1.25MM", (400, 560)),
        _ct("CORONAL 3MM", (100, 150), "DERIVED\\SECONDARY\\REFORMATTED")), 5.0, 1.5),
    _P("CT", "CTA CORONARY", "HEART",
       (_SCOUT, _ct("CTA 0.6MM 75%", (250, 350)), _ct("CTA 0.6MM 40%", (250, 350)),
        _ct("CALCIUM SCORE 3MM", (40, 60))), 1.5, 0.0),
    _P("MR", "MR BRAIN WO W CONTRAST", "HEAD", _MR_BRAIN, 4.0, 5.0, pick=(5, 8)),
    _P("MR", "MR KNEE WO CONTRAST", "KNEE", _MR_KNEE, 2.5, 3.0, pick=(4, 5)),
    _P("MR", "MR LUMBAR SPINE WO CONTRAST", "LSPINE", _MR_SPINE, 2.5, 1.5, pick=(4, 5)),
    _P("MR", "MR ABDOMEN W CONTRAST", "ABDOMEN", _MR_ABD, 1.0, 1.0, pick=(4, 5)),
    _xr("XR CHEST 2 VIEWS", "CHEST", (2, 2), 14.0, 18.0),
    _xr("XR HAND 3 VIEWS", "HAND", (3, 3), 3.0, 6.0),
    _xr("XR KNEE 2 VIEWS", "KNEE", (2, 3), 4.0, 4.0),
    _xr("XR FOOT 3 VIEWS", "FOOT", (3, 3), 2.0, 4.0),
    _xr("XR LUMBAR SPINE", "LSPINE", (2, 3), 3.0, 1.0),
    _xr("XR SHOULDER", "SHOULDER", (2, 3), 2.5, 1.5),
    _xr("XR PELVIS", "PELVIS", (1, 1), 2.5, 2.0),
    _xr("XR ABDOMEN", "ABDOMEN", (1, 2), 1.5, 3.5),
    _us("US ABDOMEN COMPLETE", "ABDOMEN", (24, 48), 8.0, 9.0),
    _us("US PELVIS", "PELVIS", (16, 32), 4.0, 3.0),
    _us("US THYROID", "NECK", (14, 26), 2.5, 1.0),
    _us("US BREAST", "BREAST", (10, 20), 2.0, 0.0),
    _us("US HIP NEONATAL", "HIP", (8, 14), 0.0, 3.0),
    _P("US", "ECHOCARDIOGRAM", "HEART",
       (_S("US", SOP["US_MF"], "ECHO CINE", (10, 25), 480, 640, bits=8, stored=8, frames=(20, 40), stack=False,
           image_type="ORIGINAL\\PRIMARY\\CARDIAC"),), 3.0, 2.0),
    _P("NM", "NM BONE SCAN WHOLE BODY", "WHOLEBODY",
       (_S("NM", SOP["NM"], "WB ANT POST", (1, 1), 1024, 256, frames=(2, 2), stack=False,
           image_type="ORIGINAL\\PRIMARY\\WHOLE BODY\\EMISSION"),
        _S("NM", SOP["NM"], "SPECT", (1, 1), 128, 128, frames=(64, 128), stack=False,
           image_type="ORIGINAL\\PRIMARY\\TOMO\\EMISSION")), 1.5, 0.8),
    _P("NM", "NM MYOCARDIAL PERFUSION", "HEART",
       (_S("NM", SOP["NM"], "STRESS", (1, 1), 64, 64, frames=(60, 64), stack=False,
           image_type="ORIGINAL\\PRIMARY\\TOMO\\EMISSION"),
        _S("NM", SOP["NM"], "REST", (1, 1), 64, 64, frames=(60, 64), stack=False,
           image_type="ORIGINAL\\PRIMARY\\TOMO\\EMISSION")), 1.0, 0.0),
    _P("PT", "PET CT WHOLE BODY FDG", "WHOLEBODY",
       (_SCOUT, _ct("CT ATTENUATION CORRECTION", (250, 330)), _ct("CT DIAGNOSTIC 3MM", (250, 330)),
        _S("PT", SOP["PT"], "PET AC", (250, 330), 200, 200, stored=16),
        _S("PT", SOP["PT"], "PET NAC", (250, 330), 200, 200, stored=16)), 1.5, 0.2),
    _P("XA", "XA CORONARY ANGIOGRAPHY", "HEART",
       (_S("XA", SOP["XA"], "LCA", (3, 7), 512, 512, bits=8, stored=8, frames=(60, 120),
           image_type="ORIGINAL\\PRIMARY\\SINGLE PLANE"),
        _S("XA", SOP["XA"], "RCA", (2, 4), 512, 512, bits=8, stored=8, frames=(60, 120),
           image_type="ORIGINAL\\PRIMARY\\SINGLE PLANE")), 1.5, 0.1),
    _P("XA", "XA PERIPHERAL ANGIOGRAPHY", "LEG",
       (_S("XA", SOP["XA"], "RUNOFF", (4, 8), 1024, 1024, bits=8, stored=8, frames=(10, 20),
           image_type="ORIGINAL\\PRIMARY\\SINGLE PLANE"),), 0.5, 0.0),
)

_MG_VIEWS = _S("MG", SOP["MG"], "SCREENING 2D", (4, 4), 3328, 2560, stored=14, stack=False,
               image_type="ORIGINAL\\PRIMARY")
_MG_PROC = _S("MG", SOP["MG_PROCESSING"], "SCREENING 2D FOR PROCESSING", (4, 4), 3328, 2560, stored=14,
              stack=False, image_type="ORIGINAL\\PRIMARY")
_MG_TOMO = _S("MG", SOP["BTO"], "TOMOSYNTHESIS", (4, 4), 1920, 1536, stored=12, frames=(40, 60), stack=False,
              image_type="ORIGINAL\\PRIMARY\\TOMOSYNTHESIS\\NONE")
_MG_TOMO_SC = _S("MG", SOP["SC"], "TOMOSYNTHESIS SLICES", (160, 240), 1920, 1536, stored=12,
                 image_type="DERIVED\\SECONDARY")

_STATIONS = {
    "CT": (("CT01", "SIEMENS"), ("CT02", "GE MEDICAL SYSTEMS"), ("CT03", "CANON MEDICAL SYSTEMS")),
    "MR": (("MR01", "SIEMENS"), ("MR02", "PHILIPS")),
    "CR": (("CR01", "FUJIFILM Corporation"), ("CR02", "CARESTREAM HEALTH")),
    "DX": (("DX01", "PHILIPS"), ("DX02", "AGFA"), ("DX03", "SIEMENS")),
    "US": (("US01", "GE HEALTHCARE"), ("US02", "PHILIPS"), ("US03", "SAMSUNG MEDISON")),
    "MG": (("MG01", "HOLOGIC, Inc."), ("MG02", "GE MEDICAL SYSTEMS")),
    "NM": (("NM01", "SIEMENS"),),
    "PT": (("PETCT01", "GE MEDICAL SYSTEMS"),),
    "XA": (("XA01", "PHILIPS"), ("XA02", "SIEMENS")),
}
_INSTITUTIONS = {
    "adult": (("ILM GENERAL HOSPITAL", 6.0), ("ILM OUTPATIENT IMAGING", 4.0)),
    "child": (("ILM CHILDRENS HOSPITAL", 7.0), ("ILM GENERAL HOSPITAL", 3.0)),
    "screening": (("ILM BREAST CENTER", 8.0), ("ILM GENERAL HOSPITAL", 2.0)),
}
_FAMILY = ("SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "RODRIGUEZ",
           "MARTINEZ", "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON", "THOMAS", "TAYLOR", "MOORE",
           "JACKSON", "MARTIN", "LEE", "PEREZ", "THOMPSON", "WHITE", "HARRIS", "SANCHEZ", "CLARK", "RAMIREZ",
           "LEWIS", "ROBINSON", "WALKER", "YOUNG", "ALLEN", "KING", "WRIGHT", "SCOTT", "TORRES", "NGUYEN",
           "HILL", "FLORES", "GREEN", "ADAMS", "NELSON", "BAKER", "HALL", "RIVERA", "CAMPBELL", "MITCHELL",
           "MULLER", "SCHMIDT", "DUBOIS", "ROSSI", "JANSEN", "NOVAK", "KOWALSKI", "SILVA", "TANAKA", "KIM")
_GIVEN = {
    "F": ("MARY", "PATRICIA", "JENNIFER", "LINDA", "ELIZABETH", "BARBARA", "SUSAN", "JESSICA", "SARAH",
          "KAREN", "NANCY", "LISA", "EMMA", "OLIVIA", "AVA", "SOPHIA", "MIA", "CHARLOTTE", "AMELIA", "ANNA",
          "CLAIRE", "INGRID", "YUKI", "FATIMA", "MARIA", "ELENA"),
    "M": ("JAMES", "ROBERT", "JOHN", "MICHAEL", "DAVID", "WILLIAM", "RICHARD", "JOSEPH", "THOMAS",
          "CHARLES", "DANIEL", "MATTHEW", "LIAM", "NOAH", "OLIVER", "ELIJAH", "LUCAS", "HENRY", "PIERRE",
          "HANS", "KENJI", "OMAR", "JOSE", "IVAN"),
}
_GIVEN["O"] = _GIVEN["F"] + _GIVEN["M"]
_PHYSICIANS = ("HOUSE^GREGORY", "GREY^MEREDITH", "ROSS^DOUGLAS", "CARTER^JOHN", "QUINN^MICHAELA",
               "KILDARE^JAMES", "WELBY^MARCUS", "ZHIVAGO^YURI", "")
_ODD_AGES = ("45", "045X", "Y045", "-01Y", "999Y", "ABCY", "4 5Y")
# Hour of day of acquisitions: mostly working hours, some nights (emergencies).
_HOUR_WEIGHTS = (1, 1, 1, 1, 1, 1, 2, 5, 9, 10, 10, 9, 7, 9, 10, 9, 8, 6, 4, 3, 2, 2, 1, 1)


# -- public API -----------------------------------------------------------------


def age_string(birth: date, at: date) -> str:
    """PatientAge (AS) at ``at``: days under a month, months under two years, then years."""
    days = (at - birth).days
    if days < 0:
        return ""
    if days < 31:
        return f"{days:03d}D"
    months = (at.year - birth.year) * 12 + at.month - birth.month - (at.day < birth.day)
    if months < 24:
        return f"{months:03d}M"
    years = at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))
    return f"{min(years, 999):03d}Y"


def plan(config: SynthConfig) -> list[StudySpec]:
    """The whole plan as a list (for small archives; ``generate`` streams)."""
    return list(generate(config))


def generate(config: SynthConfig) -> Iterator[StudySpec]:
    """Yield the studies of the plan, patient by patient, each patient's studies oldest first."""
    for block in _Planner(config).blocks():
        yield from block


def generate_blocks(config: SynthConfig, part: int = 0, parts: int = 1) -> Iterator[list[StudySpec]]:
    """The plan in blocks (about 2,500 studies each), only blocks ``part``, ``part + parts``, ...

    ``parts`` processes calling this with ``part`` = 0 .. parts-1 plan the
    whole archive between them; concatenating the blocks in block order
    gives exactly ``generate(config)``.
    """
    if not 0 <= part < parts:
        raise ValueError("need 0 <= part < parts")
    return _Planner(config).blocks(part, parts)


@dataclass
class PlanTotals:
    studies: int = 0
    series: int = 0
    instances: int = 0
    size_bytes: int = 0
    patients: int = 0
    by_modality: Counter[str] = field(default_factory=Counter)       # studies with a series of this modality
    bytes_by_modality: Counter[str] = field(default_factory=Counter)
    by_year: Counter[int] = field(default_factory=Counter)


def totals(specs: Iterable[StudySpec]) -> PlanTotals:
    t = PlanTotals()
    patients: set[str] = set()
    for s in specs:
        t.studies += 1
        t.series += len(s.series)
        patients.add(s.patient.patient_id)
        t.by_year[s.study_date.year] += 1
        for m in s.modalities:
            t.by_modality[m] += 1
        for se in s.series:
            t.instances += se.instance_count
            t.size_bytes += se.size_bytes
            t.bytes_by_modality[se.modality] += se.size_bytes
    t.patients = len(patients)
    return t


# -- the planner ----------------------------------------------------------------

_BLOCK = 1024  # patients per block; each block has its own random stream


class _Planner:
    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = cfg
        key = cfg.key()
        self.key_hex = cfg.key(with_scale=False).hex()   # seeds the random streams
        self.tag = key.hex()[:6].upper()
        # 2.25.<int>: a 128-bit digest with its low 48 bits for kind and counters.
        self.uid_base = int.from_bytes(key[:16], "big") & ~((1 << 48) - 1)
        self.now = cfg.now
        self.start = cfg.start
        self.span_days = (cfg.reference - self.start).days
        g = cfg.growth
        self._log_g = math.log1p(g) if abs(g) > 1e-9 else 0.0
        self._g_total = math.expm1(self._log_g * cfg.years) if self._log_g else 0.0
        adult = [p.adult for p in PROTOCOLS]
        child = [p.child for p in PROTOCOLS]
        self._adult_cum = _cumulative(adult)
        self._child_cum = _cumulative(child)
        self._hour_cum = _cumulative(_HOUR_WEIGHTS)
        self._inst_cum = {k: (tuple(n for n, _ in v), _cumulative([w for _, w in v])) for k, v in _INSTITUTIONS.items()}
        self._groningen_cum = _cumulative(GRONINGEN)
        self._geo: dict[int, tuple[int, int, int, str]] = {}

    # UIDs: kind 1 = study, 2 = series (study counter << 8 | series number).
    def _study_uid(self, k: int) -> str:
        return f"2.25.{self.uid_base | (1 << 44) | k}"

    def _series_uid(self, k: int, n: int) -> str:
        return f"2.25.{self.uid_base | (2 << 44) | (k << 8) | n}"

    # -- allocation of studies to patients ------------------------------------

    def _patients(self) -> list[tuple[str, int]]:
        """(kind, number of studies) per patient, in a shuffled order."""
        cfg = self.cfg
        rng = random.Random(self.key_hex + ":patients")
        n = cfg.studies
        p = cfg.patient_count
        if n == 0:
            return []
        n_mg = round(n * cfg.mammography_share)
        n_child = round(n * cfg.child_share)
        n_adult = n - n_mg - n_child
        studies = {"screening": n_mg, "child": n_child, "adult": n_adult}
        # Fewer patients than kinds: fold the smallest kinds into adults.
        while sum(1 for v in studies.values() if v) > p:
            k = min((k for k in ("screening", "child") if studies[k]), key=lambda k: studies[k])
            studies["adult"] += studies[k]
            studies[k] = 0
        per = {"screening": 3.0, "child": 1.4}
        count = {k: (min(studies[k], max(1, round(studies[k] / per[k]))) if studies[k] else 0) for k in per}
        count["adult"] = p - count["screening"] - count["child"]
        lo = {k: 1 if studies[k] else 0 for k in studies}
        # Bring every kind within [1, its studies], moving patients between kinds.
        for _ in range(3):
            for k in ("adult", "child", "screening"):
                if count[k] < lo[k] or count[k] > studies[k]:
                    want = min(max(count[k], lo[k]), studies[k])
                    diff = want - count[k]
                    count[k] = want
                    for o in ("adult", "child", "screening"):
                        if o == k or diff == 0:
                            continue
                        room = (count[o] - lo[o]) if diff > 0 else (studies[o] - count[o])
                        move = min(abs(diff), max(room, 0))
                        count[o] += -move if diff > 0 else move
                        diff += -move if diff > 0 else move
        out: list[tuple[str, int]] = []
        for kind in ("adult", "child", "screening"):
            pk, nk = count[kind], studies[kind]
            if not pk:
                continue
            sigma = 0.5 if kind == "screening" else 1.0
            weights = [rng.lognormvariate(0.0, sigma) for _ in range(pk)]
            per_patient = [1] * pk
            extra = nk - pk
            if extra > 0:
                for i in rng.choices(range(pk), weights=weights, k=extra):
                    per_patient[i] += 1
            out.extend((kind, c) for c in per_patient)
        rng.shuffle(out)
        return out

    # -- dates ------------------------------------------------------------------

    def _years_offset(self, u: float, t_max: float | None = None) -> float:
        """Years after ``start`` with density growing by ``growth`` a year (inverse CDF)."""
        years = self.cfg.years if t_max is None else t_max
        if not self._log_g:
            return u * years
        total = math.expm1(self._log_g * years)
        return math.log1p(u * total) / self._log_g

    def _date_at(self, years: float) -> date:
        d = self.start + timedelta(days=int(years * _YEAR_DAYS))
        return min(d, self.cfg.reference - _DAY)

    def _study_dates(self, rng: random.Random, kind: str, n: int) -> list[date]:
        cfg = self.cfg
        if kind == "screening":
            # Yearly (every 11-13 months), or closer together when they cannot fit.
            interval = min(365.0, self.span_days / n)
            room = max(0.0, (self.span_days - interval * (n - 1) - 1) / _YEAR_DAYS)
            first = self._years_offset(rng.random(), room) if room > 0 else 0.0
            out = []
            day = self.start + timedelta(days=int(first * _YEAR_DAYS))
            for _ in range(n):
                out.append(min(day, cfg.reference - _DAY))
                step = interval * (1 + rng.uniform(-0.08, 0.08)) if interval >= 300 else interval
                day = day + timedelta(days=max(1, int(step)))
            return out
        if kind == "child":
            first_day = self._date_at(self._years_offset(rng.random()))
            days = [first_day]
            limit = min((cfg.reference - first_day).days - 1, 3 * 365)
            for _ in range(n - 1):
                days.append(first_day + timedelta(days=_between(rng, 0, max(0, limit))))
            return sorted(days)
        return sorted(self._date_at(self._years_offset(rng.random())) for _ in range(n))

    def _time(self, rng: random.Random) -> str:
        r = rng.random
        cum = self._hour_cum
        return f"{bisect_right(cum, r() * cum[-1]):02d}{int(r() * 60):02d}{int(r() * 60):02d}"

    # -- access history ---------------------------------------------------------

    def _first_month_reads(self, rng: random.Random, t0: datetime) -> list[datetime]:
        if rng.random() < 0.05:   # imported, never opened
            return []
        n = 1
        while n < 5 and rng.random() < 0.45:
            n += 1
        out = []
        for _ in range(n):
            delay = min(rng.expovariate(1 / 36.0), 30 * 24.0 - 1)   # hours, mean 1.5 days
            out.append(t0 + timedelta(hours=0.25 + delay))
        return out

    def _later_reads(self, rng: random.Random, t0: datetime) -> list[datetime]:
        n = 1
        while n < 8 and rng.random() < 0.5:
            n += 1
        out = []
        for _ in range(n):
            if rng.random() < FIRST_YEAR_REREAD:
                days = rng.uniform(31, 365)
            else:
                b = _pick(rng, self._groningen_cum)
                days = (1 + b + rng.random()) * _YEAR_DAYS
            out.append(t0 + timedelta(days=days, hours=rng.uniform(-4, 4)))
        return out

    @staticmethod
    def _comparison_weight(gap_days: float) -> float:
        """Chance a prior ``gap_days`` old is opened for comparison, falling off like GRONINGEN."""
        if gap_days < 31:
            return 0.0
        years = gap_days / _YEAR_DAYS
        if years < 1:
            return PRIOR_COMPARISON
        b = int(years) - 1
        return PRIOR_COMPARISON * GRONINGEN[b] / GRONINGEN[0] if b < len(GRONINGEN) else 0.0

    # -- series -----------------------------------------------------------------

    def _geometry(self, t: _S) -> tuple[int, int, int, str]:
        """Rows, columns, bytes per frame and photometric of template ``t`` at this scale."""
        g = self._geo.get(id(t))
        if g is None:
            f = math.sqrt(self.cfg.scale)
            rows = max(8, round(t.rows * f))
            cols = max(8, round(t.columns * f))
            cols += cols % 2   # an even pixel data length needs no padding
            g = self._geo[id(t)] = (rows, cols, rows * cols * t.spp * (t.bits // 8),
                                    "MONOCHROME2" if t.spp == 1 else "RGB")
        return g

    def _series(self, rng: random.Random, k: int, number: int, t: _S, modality: str, sop: str,
                body: str, station: tuple[str, str]) -> SeriesSpec:
        s = self.cfg.scale
        lo, hi = t.count
        count = lo + int(rng.random() * (hi - lo + 1)) if hi > lo else lo
        lo, hi = t.frames
        frames = lo + int(rng.random() * (hi - lo + 1)) if hi > lo else lo
        if t.stack:
            count = max(1, round(count * s))
        if frames > 1:
            frames = max(1, round(frames * s))
        rows, cols, frame_bytes, photometric = self._geometry(t)
        return SeriesSpec(
            f"2.25.{self.uid_base | (2 << 44) | (k << 8) | number}", number, modality, sop, body, t.description,
            count, frames, rows, cols, t.bits, t.stored, t.spp, photometric, station[0], station[1], t.image_type,
            frame_bytes * frames + HEADER_BYTES,
        )

    @staticmethod
    def _station(rng: random.Random, modality: str) -> tuple[str, str]:
        options = _STATIONS[modality]
        return options[int(rng.random() * len(options))]

    def _protocol_series(self, rng: random.Random, k: int, proto: _P, when: float) -> tuple[SeriesSpec, ...]:
        templates = proto.series
        if proto.pick:
            n = _between(rng, *proto.pick)
            chosen = sorted(rng.sample(range(len(templates)), min(n, len(templates))))
            templates = tuple(templates[i] for i in chosen)
        out = []
        stations: dict[str, tuple[str, str]] = {}
        xr_modality = "DX" if rng.random() < 0.15 + 0.8 * when else "CR"
        for i, t in enumerate(templates, start=1):
            modality, sop = t.modality, t.sop
            if proto.group == "XR":
                modality, sop = xr_modality, SOP[xr_modality]
            # A PET/CT scanner is one station for both of its modalities.
            st_mod = "PT" if proto.group == "PT" else modality
            station = stations.get(st_mod)
            if station is None:
                station = stations[st_mod] = self._station(rng, st_mod)
            out.append(self._series(rng, k, i, t, modality, sop, proto.body_part, station))
        return tuple(out)

    def _mammo_series(self, rng: random.Random, k: int, when: float) -> tuple[SeriesSpec, ...]:
        station = self._station(rng, "MG")
        out = [self._series(rng, k, 1, _MG_VIEWS, "MG", SOP["MG"], "BREAST", station)]
        if rng.random() < 0.1:
            out.append(self._series(rng, k, len(out) + 1, _MG_PROC, "MG", SOP["MG_PROCESSING"], "BREAST", station))
        # Tomosynthesis from about ten years ago, most of recent exams.
        years = self.cfg.years
        p_tomo = 0.5 * min(1.0, max(0.0, (when * years - (years - 10)) / 10))
        if rng.random() < p_tomo:
            if rng.random() < 0.3:
                # Some vendors store the slices as Secondary Capture, body part BREAST.
                modality = "MG" if rng.random() < 0.7 else "OT"
                out.append(self._series(rng, k, len(out) + 1, _MG_TOMO_SC, modality, SOP["SC"], "BREAST", station))
            else:
                out.append(self._series(rng, k, len(out) + 1, _MG_TOMO, "MG", SOP["BTO"], "BREAST", station))
        return tuple(out)

    # -- patients and studies ---------------------------------------------------

    def _person(self, rng: random.Random, kind: str, first: date) -> tuple[str, date, str]:
        if kind == "screening":
            sex = "F"
            age = rng.uniform(40, 70)
        elif kind == "child":
            sex = "F" if rng.random() < 0.5 else "M"
            age = rng.uniform(0, 1) if rng.random() < 0.12 else rng.uniform(1, 17.9)
        else:
            r = rng.random()
            sex = "F" if r < 0.5 else ("M" if r < 0.997 else "O")
            age = rng.triangular(18, 95, 62)
        birth = first - timedelta(days=int(age * _YEAR_DAYS) + 1)
        given = _GIVEN[sex]
        name = f"{_FAMILY[_below(rng, len(_FAMILY))]}^{given[_below(rng, len(given))]}"
        return sex, birth, name

    def blocks(self, part: int = 0, parts: int = 1) -> Iterator[list[StudySpec]]:
        """The studies of every ``parts``-th block of patients, starting at block ``part``.

        Each block has its own random stream and knows its first study number,
        so blocks can be planned in any order, by any process, with the same result.
        """
        patients = self._patients()
        k = 0   # number of the block's first study
        for b, b0 in enumerate(range(0, len(patients), _BLOCK)):
            members = patients[b0 : b0 + _BLOCK]
            if b % parts == part:
                rng = random.Random(f"{self.key_hex}:block:{b}")
                out: list[StudySpec] = []
                kk = k
                for pi, (kind, n) in enumerate(members, start=b0):
                    out.extend(self._patient_studies(rng, pi, kind, n, kk))
                    kk += n
                yield out
            k += sum(n for _, n in members)

    def _patient_studies(self, rng: random.Random, pi: int, kind: str, n: int, k0: int) -> list[StudySpec]:
        cfg = self.cfg
        dates = self._study_dates(rng, kind, n)
        sex, birth, name = self._person(rng, kind, dates[0])
        # Defects. A birth date is the patient's: garble it only for one-study patients.
        defects: list[tuple[str, ...]] = []
        for _ in range(n):
            if cfg.missing_rate and rng.random() < cfg.missing_rate:
                defect = DEFECTS[_below(rng, len(DEFECTS))]
                if defect in ("bad_birth_date", "no_birth_date") and n > 1:
                    defect = ("no_study_date", "odd_patient_age")[_below(rng, 2)]
                defects.append((defect,))
            else:
                defects.append(())
        birth_raw = f"{birth.year:04d}{birth.month:02d}{birth.day:02d}"
        if "bad_birth_date" in defects[0]:
            birth_raw = f"{birth.year // 100}XX{birth.month:02d}{birth.day:02d}"
        elif "no_birth_date" in defects[0]:
            birth_raw = ""
        patient = PatientSpec(
            patient_id=f"SYN{self.tag}{pi + 1:07d}", issuer=ISSUER, name=name, sex=sex,
            birth_date=birth, birth_date_raw=birth_raw, kind=kind,
        )
        inst_names, inst_cum = self._inst_cum[kind]
        drafts: list[_Draft] = []
        prev_proto: _P | None = None
        for j, d in enumerate(dates):
            k = k0 + j
            when = max(0.0, min(1.0, (d - self.start).days / max(1, self.span_days)))
            if kind == "screening":
                proto = None
                series = self._mammo_series(rng, k, when)
                tomo = any(se.sop_class_uid in (SOP["BTO"], SOP["SC"]) for se in series)
                desc = "MAMMOGRAM SCREENING BILATERAL" + (" WITH TOMOSYNTHESIS" if tomo else "")
            else:
                if prev_proto is not None and kind == "adult" and rng.random() < 0.5:
                    proto = prev_proto     # a follow-up of the same protocol: a prior to compare with
                else:
                    proto = PROTOCOLS[_pick(rng, self._adult_cum if kind == "adult" else self._child_cum)]
                series = self._protocol_series(rng, k, proto, when)
                desc = proto.description
            prev_proto = proto
            tm = self._time(rng)
            t0 = datetime(d.year, d.month, d.day, int(tm[:2]), int(tm[2:4]), int(tm[4:]), tzinfo=timezone.utc)
            reads = self._first_month_reads(rng, t0)
            warm = rng.random() >= NEVER_REREAD
            if warm:
                reads.extend(self._later_reads(rng, t0))
            # The patient is back: the newest prior is often opened for comparison.
            if drafts and drafts[-1].warm:
                prior = drafts[-1]
                gap = (t0 - prior.t0).total_seconds() / 86400
                if rng.random() < self._comparison_weight(gap):
                    prior.reads.append(t0 + timedelta(minutes=rng.uniform(5, 600)))
            age = age_string(birth, d)
            if "odd_patient_age" in defects[j]:
                age = _ODD_AGES[_below(rng, len(_ODD_AGES))]
            elif "no_birth_date" in defects[j]:
                age = ""
            drafts.append(_Draft(k, d, tm, t0, reads, warm, series, desc, defects[j], age,
                                 inst_names[_pick(rng, inst_cum)], _PHYSICIANS[_below(rng, len(_PHYSICIANS))]))
        now = self.now
        return [
            StudySpec(
                position=s.k,
                study_uid=self._study_uid(s.k),
                accession_number=f"{self.tag}{s.k + 1:08d}",
                study_id=str(s.k + 1)[-16:],
                patient=patient,
                study_date=s.d,
                study_time=s.tm,
                study_date_raw="" if "no_study_date" in s.defects else f"{s.d.year:04d}{s.d.month:02d}{s.d.day:02d}",
                description=s.desc,
                institution=s.institution,
                referring_physician=s.physician,
                patient_age=s.age,
                age_at_study=(s.d - birth).days / _YEAR_DAYS,
                series=s.series,
                accesses=tuple(sorted(r for r in s.reads if r < now)),
                defects=s.defects,
                acquired_at=s.t0,
            )
            for s in drafts
        ]


@dataclass(slots=True)
class _Draft:
    """A study being planned: its reads still grow while the patient's later studies are planned."""

    k: int
    d: date
    tm: str
    t0: datetime
    reads: list[datetime]
    warm: bool
    series: tuple[SeriesSpec, ...]
    desc: str
    defects: tuple[str, ...]
    age: str
    institution: str
    physician: str


def _cumulative(weights: Iterable[float]) -> tuple[float, ...]:
    out = []
    total = 0.0
    for w in weights:
        total += w
        out.append(total)
    return tuple(out)


def _pick(rng: random.Random, cum: tuple[float, ...]) -> int:
    """Index drawn with the weights behind the cumulative ``cum``."""
    return bisect_right(cum, rng.random() * cum[-1])


def _below(rng: random.Random, n: int) -> int:
    """An integer in [0, n): faster than randrange, and as deterministic."""
    return int(rng.random() * n)


def _between(rng: random.Random, lo: int, hi: int) -> int:
    """An integer in [lo, hi]."""
    return lo + int(rng.random() * (hi - lo + 1))
