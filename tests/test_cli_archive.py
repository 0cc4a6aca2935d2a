"""`ilm import`, `ilm studies` and `ilm show` as a user runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
from typer.testing import CliRunner

from ilm.cli import app
from ilm.config import Settings

runner = CliRunner()


def _run(settings: Settings, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--home", str(settings.home)])
    return result.exit_code, result.output


def test_import_folder_report_and_reimport(settings: Settings, pydicom_test_files: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        shutil.copy(pydicom_test_files / name, folder / name)
    (folder / "notes.txt").write_text("not an image")
    code, out = _run(settings, "import", str(tmp_path / "in"), "--json")
    assert code == 1  # one rejected file
    report = json.loads(out)
    assert report["stored"] == 3 and report["rejected"] == 1 and report["duplicates"] == 0
    assert report["problems"][0]["source"].endswith("notes.txt")
    assert "not DICOM" in report["problems"][0]["reason"]
    code, out = _run(settings, "import", str(folder / "CT_small.dcm"), "--json")
    assert code == 0
    assert json.loads(out)["duplicates"] == 1


def test_import_missing_path_exits_2(settings: Settings, tmp_path: Path) -> None:
    code, out = _run(settings, "import", str(tmp_path / "nope"))
    assert code == 2
    assert "no such file" in out


def test_studies_filters_and_show(settings: Settings, pydicom_test_files: Path) -> None:
    for name in ("CT_small.dcm", "MR_small.dcm"):
        assert _run(settings, "import", str(pydicom_test_files / name))[0] == 0
    ct = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    code, out = _run(settings, "studies", "--json")
    assert code == 0
    assert len(json.loads(out)) == 2
    code, out = _run(settings, "studies", "--json", "--modality", "ct")
    rows = json.loads(out)
    assert [r["study_instance_uid"] for r in rows] == [ct.StudyInstanceUID]
    assert rows[0]["tiers"] == ["hot"]
    code, out = _run(settings, "studies", "--json", "--patient-id", ct.PatientID)
    assert [r["study_instance_uid"] for r in json.loads(out)] == [ct.StudyInstanceUID]
    d = ct.StudyDate
    iso = f"{d[:4]}-{d[4:6]}-{d[6:]}"
    assert len(json.loads(_run(settings, "studies", "--json", "--from", iso, "--to", iso)[1])) >= 1
    assert json.loads(_run(settings, "studies", "--json", "--from", "2999-01-01")[1]) == []
    assert _run(settings, "studies", "--from", "yesterday")[0] == 2

    code, out = _run(settings, "show", ct.StudyInstanceUID, "--json")
    assert code == 0
    detail = json.loads(out)
    assert detail["summary"]["instance_count"] == 1
    assert detail["locations"][0]["tier"] == "hot"
    assert detail["checksum_state"] == "verified"
    assert detail["series"][0]["modality"] == "CT"
    code, out = _run(settings, "show", ct.StudyInstanceUID)
    assert code == 0 and "hot" in out and "verified" in out
    code, out = _run(settings, "show", "1.2.3.4")
    assert code == 1 and "no study" in out
