"""`trainserve` with settings that cannot work: a one-line reason per variable and exit code 2,
before anything is migrated or started."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import torch

from service import config
from service.cli import main
from service.config import (
    SettingError,
    Settings,
    check_inference_device,
    check_writable,
    get_settings,
    unknown_variables,
)


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("TRAINSERVE_STATE_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("TRAINSERVE_PORT", "eighty", "TRAINSERVE_PORT: Input should be a valid integer"),
        ("TRAINSERVE_INFERENCE_DEVICE", "gpu", "must be cpu, cuda or cuda:N, not 'gpu'"),
        ("TRAINSERVE_SLOTS_PER_GPU", "0", "TRAINSERVE_SLOTS_PER_GPU: Input should be greater"),
        ("TRAINSERVE_CPU_BF16", "maybe", "must be auto, 1 or 0, not 'maybe'"),
        ("TRAINSERVE_COMPILE", "always", "must be auto, 1 or 0, not 'always'"),
        ("TRAINSERVE_LEASE_SECONDS", "5", "longer than TRAINSERVE_HEARTBEAT_SECONDS (5)"),
        ("TRAINSERVE_LEASE_SECONDS", "inf", "Input should be a finite number"),  # overflowed later
        ("TRAINSERVE_POLL_SECONDS", "nan", "Input should be a finite number"),  # not "over 86400"
        ("TRAINSERVE_POLL_SECONDS", "1e300", "less than or equal to 86400"),
        ("TRAINSERVE_PORT", "99999", "less than or equal to 65535"),  # not 99999 mod 65536
        ("TRAINSERVE_HEARTBEAT_SECONDS", "1e-9", "greater than or equal to 0.05"),  # a busy loop
        ("TRAINSERVE_CHECKPOINT_SECONDS", "often", "must be auto or a number of seconds from 0"),
        ("TRAINSERVE_CHECKPOINT_SECONDS", "-1", "must be auto or a number of seconds from 0"),
        ("TRAINSERVE_DATABASE_URL", "notaurl", "Could not parse SQLAlchemy URL"),
        ("TRAINSERVE_DATABASE_URL", "mysql://x@y/z", "runs on sqlite or postgresql"),
        (
            "TRAINSERVE_DATABASE_URL",
            "postgresql+psycopg://postgres:pw@127.0.0.1:1/x",
            "postgres:***@127.0.0.1:1/x: cannot connect",
        ),  # port 1: nothing listens
    ],
)
def test_malformed_settings_name_the_variable(
    variable: str, value: str, reason: str, fresh_settings: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert reason in err
    assert variable in err
    assert "Value error" not in err  # pydantic's prefix, noise to a reader
    assert not (fresh_settings / "trainserve.db").exists()  # nothing migrated


def test_checkpoint_seconds_auto_is_every_epoch_on_a_cpu_and_30_s_on_a_gpu(monkeypatch) -> None:
    assert Settings().checkpoint_seconds == "auto"
    assert Settings().checkpoint_seconds_on("cpu") == 0.0
    assert Settings().checkpoint_seconds_on("cuda:1") == 30.0
    monkeypatch.setenv("TRAINSERVE_CHECKPOINT_SECONDS", "12.5")
    assert (
        Settings().checkpoint_seconds_on("cpu") == Settings().checkpoint_seconds_on("cuda") == 12.5
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_inference_device_without_cuda_stops_serve(
    fresh_settings: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("TRAINSERVE_INFERENCE_DEVICE", "cuda")
    assert main(["serve"]) == 2
    assert "TRAINSERVE_INFERENCE_DEVICE=cuda, but torch sees 0 CUDA device(s)" in (
        capsys.readouterr().err
    )
    assert not (fresh_settings / "trainserve.db").exists()


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        ("bogus", "--device=bogus: must be cpu, cuda or cuda:N"),
        ("cuda:99", "--device=cuda:99, but torch sees"),
    ],
)
def test_a_worker_on_a_device_it_cannot_use_does_not_start(
    device: str, reason: str, fresh_settings: Path, capsys
) -> None:
    """Else it would claim jobs from the shared queue and fail every one of them."""
    assert main(["worker", "--device", device]) == 2
    assert reason in capsys.readouterr().err
    assert not (fresh_settings / "trainserve.db").exists()


@pytest.mark.parametrize(
    ("variable", "command"),
    [
        ("TRAINSERVE_STATE_DIR", ["migrate"]),
        ("TRAINSERVE_STATE_DIR", ["serve"]),
        ("TRAINSERVE_ARTIFACT_DIR", ["serve"]),
        ("TRAINSERVE_ARTIFACT_DIR", ["worker"]),
    ],
)
def test_a_folder_that_cannot_be_written_stops_the_command_naming_it(
    variable: str, command: list[str], fresh_settings: Path, monkeypatch, capsys
) -> None:
    """One line and exit 2, not a traceback; an artifact directory a job cannot write in would
    otherwise be found only once the job had trained to its end."""
    blocker = fresh_settings / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(variable, str(blocker / "inside"))
    monkeypatch.setenv("TRAINSERVE_PORT", "0")  # whatever listens on 8000 here
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"{variable}: cannot write in {blocker / 'inside'}" in err
    assert "Traceback" not in err
    assert not (fresh_settings / "trainserve.db").exists()  # nothing migrated


def test_the_api_alone_may_read_artifacts_from_a_read_only_folder(
    fresh_settings: Path, monkeypatch
) -> None:
    """`serve --workers 0` runs no job: its artifact directory is not checked for writing."""
    blocker = fresh_settings / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TRAINSERVE_ARTIFACT_DIR", str(blocker / "inside"))
    check_writable(Settings(), artifacts=False)
    with pytest.raises(SettingError, match="TRAINSERVE_ARTIFACT_DIR"):
        check_writable(Settings(), artifacts=True)


def test_serve_options_are_validated_like_the_variables(fresh_settings: Path, capsys) -> None:
    assert main(["serve", "--port", "99999"]) == 2
    assert "--port 99999: Input should be less than or equal to 65535" in capsys.readouterr().err
    assert main(["serve", "--workers", "-1"]) == 2
    assert "--workers -1" in capsys.readouterr().err
    assert not (fresh_settings / "trainserve.db").exists()


def test_device_names_are_normalised_and_checked() -> None:
    assert Settings(inference_device=" CUDA:1 ").inference_device == "cuda:1"
    check_inference_device("cpu")  # always there
    with pytest.raises(SettingError, match="cuda:99"):
        check_inference_device("cuda:99")


@pytest.mark.parametrize("command", [["migrate"], ["worker"]])
def test_a_bad_database_url_is_one_line_for_every_command(
    command: list[str], fresh_settings: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("TRAINSERVE_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/x")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and "Traceback" not in err


def test_a_worker_on_an_unmigrated_database_says_migrate(
    fresh_settings: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("TRAINSERVE_DATABASE_URL", f"sqlite:///{fresh_settings / 'empty.db'}")
    assert main(["worker"]) == 2
    assert "run `trainserve migrate`" in capsys.readouterr().err


def test_serve_on_a_port_in_use_stops_before_migrating(
    fresh_settings: Path, monkeypatch, capsys
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("TRAINSERVE_PORT", str(port))
        assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err
    assert not (fresh_settings / "trainserve.db").exists()


def test_a_misspelt_variable_is_named_with_the_closest_setting(
    fresh_settings: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("TRAINSERVE_WORKER", "0")
    monkeypatch.setenv("TRAINSERVE_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/x")
    with caplog.at_level(logging.WARNING, logger="trainserve"):
        main(["migrate"])  # fails on the database; the warning comes first
    assert (
        "TRAINSERVE_WORKER is not a trainserve setting and is ignored; did you mean "
        "TRAINSERVE_WORKERS?" in caplog.text
    )
    assert "TRAINSERVE_DATABASE_URL" not in caplog.text


def test_variables_read_outside_the_settings_are_known() -> None:
    from service.training.graphed import ENV_SWITCH as CUDA_GRAPHS
    from service.worker.child import FAILPOINT_ENV

    assert unknown_variables({CUDA_GRAPHS: "0", FAILPOINT_ENV: "x", "TRAINSERVE_PORT": "1"}) == []
    # pydantic-settings reads its variables in any case; the others only as spelt
    assert unknown_variables({"trainserve_port": "1"}) == []
    assert unknown_variables({CUDA_GRAPHS.lower(): "0"}) == [
        f"{CUDA_GRAPHS.lower()} is not a trainserve setting and is ignored; did you mean "
        f"{CUDA_GRAPHS}?"
    ]


def test_an_unknown_option_before_the_command_is_named(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--bogus"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("trainserve ")


def test_an_in_memory_or_read_only_sqlite_database_stops_the_command(
    fresh_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-memory database would be one per process (the API's jobs, no worker's); a file
    it cannot write would answer every write with 503 (root may write any file: os.access is
    what a non-root user gets)."""
    with pytest.raises(SettingError, match="in-memory SQLite database cannot be shared"):
        check_writable(Settings(database_url="sqlite://"), artifacts=False)
    database = fresh_settings / "read-only.db"
    database.write_bytes(b"")
    settings = Settings(database_url=f"sqlite:///{database}")
    check_writable(settings, artifacts=False)
    monkeypatch.setattr(config.os, "access", lambda path, mode: Path(path) != database)
    with pytest.raises(SettingError, match=f"TRAINSERVE_DATABASE_URL: cannot write to {database}"):
        check_writable(settings, artifacts=False)


@pytest.mark.postgres
def test_migrate_never_prints_the_database_password(
    postgres_url: str, fresh_settings: Path, monkeypatch, capsys, caplog
) -> None:
    """A password in TRAINSERVE_DATABASE_URL is shown as ***, as the connection errors do
    (trust auth on the test server: any password connects)."""
    with_password = postgres_url.replace("postgres@", "postgres:s3cretpw@", 1)
    assert "s3cretpw" in with_password
    monkeypatch.setenv("TRAINSERVE_DATABASE_URL", with_password)
    with caplog.at_level(logging.INFO):
        assert main(["migrate"]) == 0
    out = capsys.readouterr()
    assert "postgres:***@" in out.out
    assert "s3cretpw" not in out.out + out.err + caplog.text
    # libpq's other form, a query parameter, is hidden too
    monkeypatch.setenv("TRAINSERVE_DATABASE_URL", f"{postgres_url}?password=s3cretpw")
    get_settings.cache_clear()
    assert main(["migrate"]) == 0
    out = capsys.readouterr()
    assert "?password=***" in out.out and "s3cretpw" not in out.out + out.err
