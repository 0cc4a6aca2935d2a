"""Studies written out of the archive as files: ``ilm export``, ``GET /api/studies/{uid}/export``.

The service resolves the studies and reads their instances (from whatever
tier holds them); this module lays them out, checks them and delivers them:

- into a folder, as ``STUDY/SERIES/SOP.dcm`` (the archive's own key layout), or
  with ``dicomdir`` as a DICOM file-set: pydicom's ``FileSet`` chooses the
  File IDs (``PTxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx``) and writes the DICOMDIR;
- into a ZIP archive (the REST route), with the same layout.

Every file holds the stored bytes unchanged (their SHA-256 is the catalog's:
checked as they are read). Delivery into a folder is all or nothing: every
file is first written and fsynced into a hidden staging folder inside the
destination (``.ilm-export-*``, same file system), then every destination
path is checked (a file there with other bytes refuses the whole export; one
with the same bytes is left as it is), and only then is each file linked
into place under its name, which never replaces an existing file. A failure
before that leaves nothing but the staging folder, which is removed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.fileset import FileSet

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.errors import IlmError, IntegrityError
from ilm.uids import instance_key

__all__ = ["ExportRefused", "ExportReport", "Staged", "stage", "deliver_folder", "deliver_zip", "check_folder",
           "record_exports"]

STAGING_PREFIX = ".ilm-export-"
_CHUNK = 1 << 20


class ExportRefused(IlmError):
    """The destination cannot take the export (not writable, a file with other bytes in the way); nothing written."""


@dataclass
class ExportReport:
    """What an export wrote: ``files`` in the export (instances, and the DICOMDIR), of which
    ``written`` new and ``unchanged`` already there with the same bytes."""

    to: str
    studies: dict[str, int] = field(default_factory=dict)  # study UID -> instances exported
    files: int = 0
    written: int = 0
    unchanged: int = 0
    bytes: int = 0
    dicomdir: bool = False


@dataclass
class Staged:
    """The export, complete in a staging folder: relative path -> staged file."""

    root: Path
    files: dict[str, Path] = field(default_factory=dict)
    studies: dict[str, int] = field(default_factory=dict)
    bytes: int = 0

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _oserror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_folder(to: Path, *, dicomdir: bool) -> None:
    """Refuse (ExportRefused) a destination that is not a folder we may create or write, or, for a
    file-set, one that holds a DICOMDIR already (a second file-set would have to rewrite it)."""
    if to.exists() and not to.is_dir():
        raise ExportRefused(f"{to}: exists and is not a folder")
    if dicomdir and (to / "DICOMDIR").exists():
        raise ExportRefused(f"{to}: holds a DICOMDIR already; export a file-set into an empty folder "
                            "(or one without DICOMDIR)")


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def stage(refs: Iterable[Any], read: Callable[[Any], bytes], into: Path, *, dicomdir: bool) -> Staged:
    """Read every instance (``read(ref)``, checked against ``ref.sha256``) into a new staging folder
    inside ``into`` (created if missing): the export's files and their relative paths.
    ExportRefused when ``into`` cannot be written; IntegrityError for a copy that does not match
    the catalog; ValueError from pydicom for an instance a DICOMDIR cannot list. On any error the
    staging folder is removed."""
    try:
        into.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=into))
    except OSError as exc:
        raise ExportRefused(f"{into}: cannot write there: {_oserror(exc)}") from None
    staged = Staged(root)
    fileset = FileSet() if dicomdir else None
    raw: dict[str, Path] = {}
    try:
        for n, ref in enumerate(refs):
            data = read(ref)
            if hashlib.sha256(data).hexdigest() != ref.sha256:
                raise IntegrityError(f"instance {ref.sop_uid} read from tier {ref.tier!r} does not match its "
                                     "SHA-256 in the catalog; nothing exported (run 'ilm verify')")
            staged.studies[ref.study_uid] = staged.studies.get(ref.study_uid, 0) + 1
            staged.bytes += len(data)
            if fileset is None:
                rel = instance_key(ref.study_uid, ref.series_uid, ref.sop_uid)
                _write_synced(root / rel, data)
                staged.files[rel] = root / rel
                continue
            raw[ref.sop_uid] = root / "raw" / f"{n}.dcm"
            _write_synced(raw[ref.sop_uid], data)
            try:  # the directory records need the attributes only: pydicom stages a copy without pixels
                fileset.add(dcmread(BytesIO(data), stop_before_pixels=True))
            except (ValueError, AttributeError, KeyError) as exc:
                raise ExportRefused(f"instance {ref.sop_uid} (SOP class {ref.sop_class_uid}) cannot be listed "
                                    f"in a DICOMDIR: {exc}; export without --dicomdir") from None
        if fileset is not None:
            _write_fileset(fileset, raw, staged)
    except OSError as exc:
        staged.cleanup()
        raise ExportRefused(f"{into}: cannot write there: {_oserror(exc)}") from None
    except BaseException:
        staged.cleanup()
        raise
    return staged


def _write_fileset(fileset: FileSet, raw: dict[str, Path], staged: Staged) -> None:
    """pydicom writes the file-set (its File IDs and the DICOMDIR) into the staging folder; each
    instance file it wrote is then replaced by the stored bytes (the same dataset: the DICOMDIR
    records name files, not offsets in them)."""
    out = staged.root / "set"
    fileset.write(out)
    for inst in fileset:
        os.replace(raw.pop(str(inst.SOPInstanceUID)), inst.path)
    with open(out / "DICOMDIR", "rb+") as f:
        os.fsync(f.fileno())
    for dirpath, _, names in os.walk(out):
        for name in names:
            p = Path(dirpath) / name
            staged.files[p.relative_to(out).as_posix()] = p


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(_CHUNK), fb.read(_CHUNK)
            if x != y:
                return False
            if not x:
                return True


def _link(src: Path, dst: Path) -> bool:
    """Put ``src`` at ``dst`` without replacing anything there: False when ``dst`` exists."""
    try:
        os.link(src, dst)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    # A file system without hard links (FAT and exFAT media): a checked rename.
    if dst.exists():
        return False
    os.rename(src, dst)
    return True


def deliver_folder(staged: Staged, to: Path, report: ExportReport) -> None:
    """Put the staged files in place under ``to``; ExportRefused (nothing placed) when any
    destination holds a file with other bytes. The staging folder is removed either way."""
    try:
        clash = [rel for rel, src in staged.files.items()
                 if (to / rel).exists() and not ((to / rel).is_file() and _same_bytes(src, to / rel))]
        if clash:
            raise ExportRefused(f"{to / clash[0]}: a different file is there already"
                                + (f" (and {len(clash) - 1} more)" if len(clash) > 1 else "")
                                + "; nothing exported (export into another folder)")
        for rel in sorted(staged.files, key=lambda r: r == "DICOMDIR"):  # the DICOMDIR last
            dst = to / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if _link(staged.files[rel], dst):
                report.written += 1
            elif _same_bytes(staged.files[rel], dst):
                report.unchanged += 1
            else:
                raise ExportRefused(f"{dst}: a different file appeared there while exporting; it was left as "
                                    f"it is ({report.written} file(s) were written before)")
        _sync_dirs(to, staged.files)
    except OSError as exc:
        raise ExportRefused(f"{to}: cannot write there: {_oserror(exc)} ({report.written} file(s) were "
                            "written before)") from None
    finally:
        staged.cleanup()
    report.files = len(staged.files)


def _sync_dirs(to: Path, rels: Iterable[str]) -> None:
    """fsync the folders that got new names, so the links outlive a power cut."""
    for d in {(to / r).parent for r in rels} | {to}:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def deliver_zip(staged: Staged, out: Path, report: ExportReport) -> None:
    """Write the staged files into a new ZIP file ``out`` (stored, not compressed: DICOM pixel data
    is often compressed already), atomically; the staging folder is removed either way."""
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            for rel in sorted(staged.files):
                z.write(staged.files[rel], rel)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportRefused(f"{out}: cannot write the ZIP file: {_oserror(exc)}") from None
    finally:
        staged.cleanup()
    report.files = report.written = len(staged.files)


def record_exports(catalog: Catalog, report: ExportReport, *, by: str, interface: str, at: datetime) -> None:
    """One entry per study in the hash-chained audit trail (action ``study.export``)."""
    with catalog.write() as conn:
        for study_uid, n in report.studies.items():
            append_audit(conn, at=at, actor=by, action="study.export", study_uid=study_uid,
                         detail={"to": report.to, "interface": interface, "instances": n,
                                 "dicomdir": report.dicomdir})
