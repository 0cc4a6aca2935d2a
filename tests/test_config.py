"""Configuration: one TOML file plus environment variables; errors name file, key, problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ilm.cli import app
from ilm.config import load_settings, write_default_config
from ilm.errors import ConfigError

runner = CliRunner()


def test_default_config_loads(tmp_path: Path) -> None:
    write_default_config(tmp_path)
    s = load_settings(home=tmp_path, env={})
    assert list(s.tiers) == ["hot", "warm", "archive"]
    assert s.ingest_tier == "hot"
    assert s.catalog_url == f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    assert s.tiers["hot"].cost_per_gb_month > s.tiers["warm"].cost_per_gb_month
    assert s.dicom.host == "127.0.0.1"


def test_missing_config_names_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ilm\.toml: config file not found"):
        load_settings(home=tmp_path, env={})


@pytest.mark.parametrize(
    "text, key, problem",
    [
        ("[tiers.hot]\nkind='filesystem'\npath='x'\ncost_per_gb_month=-1\n", "tiers.hot.cost_per_gb_month", "greater than or equal"),
        ("[tiers.hot]\nkind='tape'\npath='x'\n", "tiers.hot", "kind"),
        ("[tiers.hot]\nkind='filesystem'\n", "tiers.hot.path", "required"),
        ("[tiers.hot]\nkind='filesystem'\npath='x'\ncolor='red'\n", "tiers.hot.color", "not permitted"),
        ("[dicom]\nport=70000\n[tiers.hot]\nkind='filesystem'\npath='x'\n", "dicom.port", "less than"),
        ("[catalog]\nurl=''\n", "tiers", "Field required"),
        ("[ingest]\ntier='cold'\n[tiers.hot]\nkind='filesystem'\npath='x'\n", "ingest.tier", "no tier named 'cold'"),
        ("[tiers.c]\nkind='s3'\nbucket='ab'\n", "tiers.c.bucket", "at least 3"),
        ("[catalog]\nsqlite_synchronous='off'\n[tiers.hot]\nkind='filesystem'\npath='x'\n",
         "catalog.sqlite_synchronous", "'full' or 'normal'"),
    ],
    ids=["negative-cost", "unknown-kind", "missing-path", "unknown-key", "bad-port", "no-tiers", "unknown-ingest-tier",
         "short-bucket", "sqlite-synchronous-off"],
)
def test_invalid_config_names_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    (tmp_path / "ilm.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(home=tmp_path, env={})
    msg = str(err.value)
    assert str(tmp_path / "ilm.toml") in msg
    assert f"'{key}" in msg
    assert problem in msg


def test_not_toml(tmp_path: Path) -> None:
    (tmp_path / "ilm.toml").write_text("[tiers\nkind=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(home=tmp_path, env={})


def test_environment_overrides(tmp_path: Path) -> None:
    write_default_config(tmp_path)
    s = load_settings(
        home=tmp_path,
        env={"ILM_CATALOG_URL": "sqlite:////tmp/x.sqlite", "ILM_DICOM_PORT": "4242", "ILM_DICOM_AE_TITLE": "ARCHIVE"},
    )
    assert s.catalog_url == "sqlite:////tmp/x.sqlite"
    assert s.dicom.port == 4242
    assert s.dicom.ae_title == "ARCHIVE"
    bad = {"ILM_DICOM_PORT": "eleven"}
    with pytest.raises(ConfigError, match="'dicom.port'"):
        load_settings(home=tmp_path, env=bad)


def test_ilm_config_points_elsewhere(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    cfg = write_default_config(other)
    s = load_settings(home=tmp_path / "home", env={"ILM_CONFIG": str(cfg)})
    assert s.config_file == cfg


def test_cli_bad_config_exits_2_with_message(tmp_path: Path) -> None:
    (tmp_path / "ilm.toml").write_text("[tiers.hot]\nkind='filesystem'\n")
    result = runner.invoke(app, ["studies", "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "tiers.hot.path" in result.output


def test_cli_missing_config_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["studies", "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "config file not found" in result.output


def test_cli_init_writes_commented_default_once(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "ilm.toml").read_text()
    assert "# " in text and "[tiers.hot]" in text
    again = runner.invoke(app, ["init", "--home", str(tmp_path)])
    assert again.exit_code == 2
    assert "already exists" in again.output


def test_lifecycle_section(tmp_path: Path) -> None:
    write_default_config(tmp_path)
    s = load_settings(home=tmp_path, env={})
    assert s.lifecycle.quarantine_days == 30 and s.lifecycle.maintenance_window == ""
    text = (tmp_path / "ilm.toml").read_text().replace('maintenance_window = ""', 'maintenance_window = "25:00-06:00"')
    (tmp_path / "ilm.toml").write_text(text)
    with pytest.raises(ConfigError, match="'lifecycle.maintenance_window'.*invalid time"):
        load_settings(home=tmp_path, env={})


@pytest.mark.parametrize("value, ok", [("85%", True), ("500GB", True), ("120%", False), ("lots", False)])
def test_watermark_values(tmp_path: Path, value: str, ok: bool) -> None:
    (tmp_path / "ilm.toml").write_text(f"[tiers.hot]\nkind='filesystem'\npath='x'\nhigh_watermark='{value}'\n")
    if ok:
        assert load_settings(home=tmp_path, env={}).tiers["hot"].high_watermark == value
    else:
        with pytest.raises(ConfigError, match="'tiers.hot.high_watermark'"):
            load_settings(home=tmp_path, env={})


def test_move_destinations(tmp_path: Path) -> None:
    (tmp_path / "ilm.toml").write_text(
        "[dicom.destinations.VIEWER]\nhost='127.0.0.1'\nport=4006\n[tiers.hot]\nkind='filesystem'\npath='x'\n")
    s = load_settings(home=tmp_path, env={})
    assert s.dicom.destinations["VIEWER"].port == 4006
