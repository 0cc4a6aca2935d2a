"""The benchmark data set: 1,000 CT instances of 512x512 16-bit pixels.

Written once with pydicom into ``bench/work/ct1000/`` (gitignored) and reused
by every later run; a manifest records how it was made, so a change of the
recipe below regenerates it. Each file is about 514 KB: a Part 10 file in
explicit VR little endian with a realistic CT header and a synthetic phantom
(a water cylinder with some bone and noise) in its pixels.

Layout: 4 patients, one CT study each, 2 series of 125 slices per study:
``ct1000/<study>/<series>/<slice>.dcm``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

WORK = Path(__file__).resolve().parent / "work"
RECIPE = 4  # bump when the files below change
STUDIES = 4
SERIES_PER_STUDY = 2
SLICES_PER_SERIES = 125
ROWS = COLS = 512
_ROOT = "1.2.826.0.1.3680043.10.1087."  # a private UID root for generated benchmark data


@dataclass(frozen=True)
class DataSet:
    """The generated folder and its files, in sending order."""

    root: Path
    files: tuple[Path, ...]
    total_bytes: int

    @property
    def count(self) -> int:
        return len(self.files)

    def subset(self, n: int) -> "DataSet":
        files = self.files[:n]
        return DataSet(self.root, files, sum(f.stat().st_size for f in files))


def _phantom(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:ROWS, 0:COLS]
    r = np.hypot(x - COLS / 2, y - ROWS / 2)
    img = np.full((ROWS, COLS), -1000, dtype=np.int16)  # air
    img[r < 220] = 0  # water
    img[(r > 200) & (r < 220)] = 900  # a ring of bone
    for cx, cy, rad, hu in ((180, 220, 30, 60), (330, 260, 40, -80), (256, 360, 25, 300)):
        img[np.hypot(x - cx, y - cy) < rad] = hu
    return img


def _dataset(patient: int, study_uid: str, series_uid: str, series_no: int, slice_no: int,
             study_date: date, pixels: np.ndarray) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = generate_uid(prefix=_ROOT, entropy_srcs=[series_uid, str(slice_no)])
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    d = study_date.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = d
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.AccessionNumber = f"BENCH{patient:04d}"
    ds.Modality = "CT"
    ds.Manufacturer = "ILM-BENCH"
    ds.InstitutionName = "Bench Hospital"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS"
    ds.SeriesDescription = f"AXIAL {'SOFT' if series_no == 1 else 'LUNG'} 1.0"
    ds.PatientName = f"Bench^Patient{patient}"
    ds.PatientID = f"BENCH-{patient:04d}"
    ds.PatientBirthDate = f"{1950 + patient * 7}0301"
    ds.PatientSex = "F" if patient % 2 else "M"
    ds.PatientAge = f"{study_date.year - 1950 - patient * 7:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(patient)
    ds.SeriesNumber = series_no
    ds.InstanceNumber = slice_no
    ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-slice_no * 1.0:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = generate_uid(prefix=_ROOT, entropy_srcs=[study_uid, "frame"])
    ds.SliceLocation = f"{-slice_no * 1.0:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLS
    ds.PixelSpacing = ["0.9765625", "0.9765625"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels.tobytes()
    return ds


def _generate(target: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = _phantom(rng)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    day = date(2024, 1, 8)
    for p in range(1, STUDIES + 1):
        study_uid = generate_uid(prefix=_ROOT, entropy_srcs=[str(seed), "study", str(p)])
        for s in range(1, SERIES_PER_STUDY + 1):
            series_uid = generate_uid(prefix=_ROOT, entropy_srcs=[study_uid, "series", str(s)])
            folder = tmp / f"study{p}" / f"series{s}"
            folder.mkdir(parents=True)
            for i in range(1, SLICES_PER_SERIES + 1):
                noise = rng.normal(0, 12, size=(ROWS, COLS)).astype(np.int16)
                pixels = (base + noise).astype("<i2")
                ds = _dataset(p, study_uid, series_uid, s, i, day + timedelta(days=p * 30), pixels)
                ds.save_as(folder / f"{i:04d}.dcm", enforce_file_format=True)
    tmp.rename(target)


def ensure_dataset(seed: int = 1087) -> DataSet:
    """The 1,000 CT files, generated on first use (about 20 s) and cached."""
    target = WORK / "ct1000"
    manifest = WORK / "ct1000.json"
    want = {"recipe": RECIPE, "seed": seed, "count": STUDIES * SERIES_PER_STUDY * SLICES_PER_SERIES}
    have = json.loads(manifest.read_text()) if manifest.is_file() else None
    if have != want or not target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
        manifest.unlink(missing_ok=True)
        WORK.mkdir(parents=True, exist_ok=True)
        print(f"bench: generating {want['count']} CT instances in {target} ...", flush=True)
        _generate(target, seed)
        manifest.write_text(json.dumps(want))
    files = tuple(sorted(target.rglob("*.dcm")))
    if len(files) != want["count"]:
        raise RuntimeError(f"{target}: expected {want['count']} files, found {len(files)}; delete it to regenerate")
    return DataSet(target, files, sum(f.stat().st_size for f in files))


def subset_folder(ds: DataSet, n: int) -> DataSet:
    """The first ``n`` files in a folder of their own (hard links), for --quick runs."""
    if n >= ds.count:
        return ds
    target = WORK / f"ct1000-first{n}"
    if not target.is_dir() or sum(1 for _ in target.rglob("*.dcm")) != n:
        shutil.rmtree(target, ignore_errors=True)
        for f in ds.files[:n]:
            dest = target / f.relative_to(ds.root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                dest.hardlink_to(f)
            except OSError:
                shutil.copy2(f, dest)
    files = tuple(sorted(target.rglob("*.dcm")))
    return DataSet(target, files, sum(f.stat().st_size for f in files))


if __name__ == "__main__":
    d = ensure_dataset()
    print(f"{d.count} files, {d.total_bytes / 1e6:.1f} MB in {d.root}")
