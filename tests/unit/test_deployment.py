"""Two databases never share an artifact directory: model files are named by job id, and each
database numbers its jobs from 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main, migrate
from service.config import SettingError, Settings, get_settings
from service.deployment import STAMP_FILE, check_artifact_owner, database_id


def settings_for(tmp_path: Path, name: str, artifacts: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / name}.db", artifact_dir=artifacts, state_dir=tmp_path
    )


def test_a_second_database_is_refused_the_first_ones_artifact_directory(tmp_path: Path) -> None:
    shared = tmp_path / "artifacts"
    first, second = settings_for(tmp_path, "a", shared), settings_for(tmp_path, "b", shared)
    migrate(first)
    migrate(second)
    assert database_id(first.resolved_database_url) != database_id(second.resolved_database_url)
    check_artifact_owner(first)  # stamps the directory
    assert (shared / STAMP_FILE).read_text() == database_id(first.resolved_database_url)
    check_artifact_owner(first)  # its own: fine, again and again
    with pytest.raises(SettingError, match="holds the model files of another database"):
        check_artifact_owner(second)
    check_artifact_owner(settings_for(tmp_path, "b", tmp_path / "its-own"))  # apart: fine


def test_serve_and_worker_stop_on_another_databases_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "artifacts"
    first = settings_for(tmp_path, "a", shared)
    migrate(first)
    check_artifact_owner(first)
    monkeypatch.setenv("TRAINSERVE_DATABASE_URL", f"sqlite:///{tmp_path / 'b'}.db")
    monkeypatch.setenv("TRAINSERVE_ARTIFACT_DIR", str(shared))
    monkeypatch.setenv("TRAINSERVE_PORT", "0")
    get_settings.cache_clear()
    try:
        for command in (["serve"], ["worker", "--migrate"]):
            assert main(command) == 2
            err = capsys.readouterr().err
            assert "TRAINSERVE_ARTIFACT_DIR" in err and "another database" in err
    finally:
        get_settings.cache_clear()
