"""Write a synthetic plan as real DICOM Part 10 files.

Every instance is an explicit VR little endian file with the header a
modality would write (patient, study, series, equipment, image pixel
module, and per-modality attributes such as mammography views and CT slice
positions) and pixel data of the plan's geometry. Pixels are cheap: one
phantom frame (a smooth disc plus noise, compressible like a real image)
per geometry, reused by every instance and frame of that geometry, so
writing costs little more than the disk.

Layout: ``OUT/<PatientID>/<AccessionNumber>/<NNN>_<Modality>/<NNNNN>.dcm``;
nothing else is written inside ``OUT``, so the whole folder imports cleanly.
``write_archive`` can keep a marker file beside the folder that records the
config once the folder is complete, so that a second run skips the work.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian

from ilm.synth.plan import SOP, SeriesSpec, StudySpec, SynthConfig, generate

__all__ = ["write_study", "write_files", "write_archive", "completed", "FilesReport", "Pixels"]

IMPLEMENTATION_VERSION = "ILM_SYNTH_1"
_MG_VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
_MULTIFRAME_POINTER = {
    SOP["XA"]: (0x0018, 0x1063),     # Frame Time
    SOP["US_MF"]: (0x0018, 0x1063),
    SOP["NM"]: (0x0054, 0x0080),     # Slice Vector
}


@dataclass
class FilesReport:
    studies: int = 0
    series: int = 0
    files: int = 0
    bytes: int = 0
    skipped: bool = False   # the folder already held this plan


class Pixels:
    """Pixel data per geometry: one phantom frame, computed once, repeated per frame."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._frames: dict[tuple[int, int, int, int, int], bytes] = {}

    def frame(self, rows: int, cols: int, bits: int, stored: int, spp: int) -> bytes:
        key = (rows, cols, bits, stored, spp)
        data = self._frames.get(key)
        if data is None:
            rng = np.random.default_rng([self.seed, rows, cols, bits, stored, spp])
            y, x = np.ogrid[-1.0 : 1.0 : complex(0, rows), -1.0 : 1.0 : complex(0, cols)]
            r2 = x * x + y * y
            top = (1 << min(stored, bits)) - 1
            img = np.where(r2 < 0.8, 0.55 - 0.25 * r2, 0.05) * top
            img = img + rng.normal(0.0, top * 0.02, size=(rows, cols))
            img = np.clip(img, 0, top)
            arr = img.astype("u1" if bits == 8 else "<u2")
            if spp == 3:
                arr = np.repeat(arr[:, :, None], 3, axis=2)
            data = self._frames[key] = arr.tobytes()
        return data

    def series(self, s: SeriesSpec) -> bytes:
        one = self.frame(s.rows, s.columns, s.bits_allocated, s.bits_stored, s.samples_per_pixel)
        return one * s.frames if s.frames > 1 else one


def _set_raw(ds: Dataset, keyword: str, value: str) -> None:
    """Set a value as written, even when it is not valid for its VR (deliberate defects)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setattr(ds, keyword, value)


def _series_dataset(study: StudySpec, s: SeriesSpec) -> Dataset:
    p = study.patient
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = s.image_type.split("\\")
    ds.SOPClassUID = s.sop_class_uid
    if study.study_date_raw:
        ds.StudyDate = study.study_date_raw
        ds.SeriesDate = study.study_date_raw
        ds.ContentDate = study.study_date_raw
    ds.StudyTime = study.study_time
    ds.SeriesTime = study.study_time
    ds.ContentTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.Modality = s.modality
    if s.sop_class_uid == SOP["SC"]:
        ds.ConversionType = "WSD"
    ds.Manufacturer = s.manufacturer
    ds.InstitutionName = study.institution
    ds.ReferringPhysicianName = study.referring_physician
    ds.StationName = s.station_name
    ds.StudyDescription = study.description
    ds.SeriesDescription = s.description
    ds.ManufacturerModelName = f"SYNTH {s.modality}"
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = p.issuer
    _set_raw(ds, "PatientBirthDate", p.birth_date_raw)
    ds.PatientSex = p.sex
    _set_raw(ds, "PatientAge", study.patient_age)
    ds.BodyPartExamined = s.body_part
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = s.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = s.number
    ds.SamplesPerPixel = s.samples_per_pixel
    ds.PhotometricInterpretation = s.photometric
    if s.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    if s.frames > 1:
        ds.NumberOfFrames = s.frames
        pointer = _MULTIFRAME_POINTER.get(s.sop_class_uid)
        if pointer:
            ds.FrameIncrementPointer = pointer
        if pointer == (0x0018, 0x1063):
            ds.FrameTime = 33.3
    ds.Rows = s.rows
    ds.Columns = s.columns
    ds.BitsAllocated = s.bits_allocated
    ds.BitsStored = s.bits_stored
    ds.HighBit = s.bits_stored - 1
    ds.PixelRepresentation = 0
    if s.modality == "CT" or s.modality == "PT":
        ds.RescaleIntercept = -1024 if s.modality == "CT" else 0
        ds.RescaleSlope = 1
        ds.SliceThickness = 1.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
    elif s.modality == "MR":
        ds.MagneticFieldStrength = 3
        ds.SliceThickness = 3.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
    if s.body_part == "BREAST" and s.modality in ("MG", "OT"):
        ds.BreastImplantPresent = "NO"
        if s.sop_class_uid == SOP["MG_PROCESSING"]:
            ds.PresentationIntentType = "FOR PROCESSING"
        elif s.sop_class_uid in (SOP["MG"], SOP["BTO"]):
            ds.PresentationIntentType = "FOR PRESENTATION"
    ds.LossyImageCompression = "00"
    return ds


def write_study(study: StudySpec, out: Path, pixels: Pixels) -> FilesReport:
    """Write every instance of ``study`` under ``out``; return what was written."""
    report = FilesReport(studies=1)
    folder = out / study.patient.patient_id / study.accession_number
    for s in study.series:
        ds = _series_dataset(study, s)
        ds.PixelData = pixels.series(s)
        ds["PixelData"].VR = "OB" if s.bits_allocated == 8 else "OW"
        sdir = folder / f"{s.number:03d}_{s.modality}"
        sdir.mkdir(parents=True, exist_ok=True)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(s.sop_class_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        ds.file_meta = meta
        mammo_views = s.body_part == "BREAST" and s.modality in ("MG", "OT")
        per_view = max(1, s.instance_count // 4)
        for i in range(1, s.instance_count + 1):
            uid = UID(s.sop_instance_uid(i))
            ds.SOPInstanceUID = uid
            meta.MediaStorageSOPInstanceUID = uid
            ds.InstanceNumber = i
            if mammo_views:
                lat, view = _MG_VIEWS[min((i - 1) // per_view, 3) if s.instance_count >= 4 else (i - 1) % 4]
                ds.ImageLaterality = lat
                ds.ViewPosition = view
            elif s.modality in ("CT", "MR", "PT") and s.frames == 1:
                ds.ImagePositionPatient = [-180.0, -180.0, round(-1.0 * i, 2)]
                ds.SliceLocation = round(-1.0 * i, 2)
            path = sdir / f"{i:05d}.dcm"
            dcmwrite(path, ds, enforce_file_format=True)
            report.files += 1
            report.bytes += path.stat().st_size
        report.series += 1
    return report


def write_files(
    specs: Iterable[StudySpec],
    out: Path,
    *,
    seed: int = 1,
    progress: Callable[[StudySpec, FilesReport], None] | None = None,
) -> FilesReport:
    """Write the studies ``specs`` under ``out``; ``progress`` is called after each study."""
    out.mkdir(parents=True, exist_ok=True)
    pixels = Pixels(seed)
    total = FilesReport()
    for spec in specs:
        r = write_study(spec, out, pixels)
        total.studies += r.studies
        total.series += r.series
        total.files += r.files
        total.bytes += r.bytes
        if progress:
            progress(spec, r)
    return total


def _config_record(config: SynthConfig) -> dict[str, object]:
    d = asdict(config)
    d["reference"] = config.reference.isoformat()
    return d


def completed(marker: Path, config: SynthConfig) -> FilesReport | None:
    """The report of a complete earlier write of ``config`` recorded in ``marker``, or None."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("config") != _config_record(config):
        return None
    r = data.get("report") or {}
    return FilesReport(studies=r.get("studies", 0), series=r.get("series", 0), files=r.get("files", 0),
                       bytes=r.get("bytes", 0), skipped=True)


def write_archive(
    config: SynthConfig,
    out: Path,
    *,
    marker: Path | None = None,
    progress: Callable[[StudySpec, FilesReport], None] | None = None,
) -> FilesReport:
    """Write the whole plan of ``config`` into ``out``.

    With ``marker`` (a file outside ``out``), a folder already recorded there
    as complete for the same config is left as it is (the report says
    ``skipped``), and the marker is written once the folder is complete.
    Files are deterministic: a write interrupted and run again produces the
    same bytes.
    """
    if marker is not None:
        done = completed(marker, config)
        if done is not None and out.is_dir():
            return done
        marker.unlink(missing_ok=True)
    report = write_files(generate(config), out, seed=config.seed, progress=progress)
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(json.dumps({"config": _config_record(config), "report": asdict(report)}, indent=2),
                       encoding="utf-8")
        os.replace(tmp, marker)
    return report
