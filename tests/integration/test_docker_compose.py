"""docker/docker-compose.yml parses with the Compose client and wires the services as described.

The client needs no Docker engine for `config`, so this runs where no engine does.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker" / "docker-compose.yml"


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture(scope="module")
def compose() -> dict:
    command = _compose_command()
    if command is None:
        if os.environ.get("CI"):
            pytest.fail("neither `docker compose` nor `docker-compose` is installed")
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_services_are_wired(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "api", "worker"}

    postgres = services["postgres"]
    assert postgres["healthcheck"]["test"]
    assert any(str(v).startswith("pgdata:") for v in postgres["volumes"])

    migrate = services["migrate"]
    assert migrate["command"][-1] == "migrate"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"

    for name in ("api", "worker"):
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        url = service["environment"]["TRAINSERVE_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url
        # API and workers share one artifact volume at the configured artifact directory.
        artifact_dir = service["environment"]["TRAINSERVE_ARTIFACT_DIR"]
        assert any(str(v).startswith(f"artifacts:{artifact_dir}") for v in service["volumes"])

    assert "serve" in services["api"]["command"] and "0" in services["api"]["command"]
    assert services["api"]["ports"]
    assert services["worker"]["command"][-1] == "worker"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert {"pgdata", "artifacts"} <= set(compose["volumes"])


def test_dockerfile_runs_as_non_root_with_healthcheck() -> None:
    text = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    assert "\nUSER trainserve" in text
    assert "\nHEALTHCHECK " in text and "/health" in text
    assert "cuda" in text.split("\n", 3)[2].lower() or "cuda" in text.lower()
