"""Settings from the environment (prefix TRAINSERVE_); defaults give the embedded mode."""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_STATE_DIR = Path("var")
DAY_SECONDS = 86_400
MIN_INTERVAL_SECONDS = 0.05
# TRAINSERVE_CHECKPOINT_SECONDS=auto on a GPU: at most a checkpoint every 30 s (on a CPU, every
# epoch: its epochs are long, and copying the state is a memcpy).
GPU_CHECKPOINT_SECONDS = 30.0
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


class Settings(BaseSettings):
    # allow_inf_nan: "nan" seconds would otherwise be reported as above the upper bound.
    model_config = SettingsConfigDict(env_prefix="TRAINSERVE_", extra="ignore", allow_inf_nan=False)

    # Where the embedded defaults keep their files: var/trainserve.db and var/artifacts/.
    state_dir: Path = DEFAULT_STATE_DIR
    database_url: str | None = None  # default: sqlite:///<state_dir>/trainserve.db (WAL mode)
    artifact_dir: Path | None = None  # default: <state_dir>/artifacts
    # fsspec URL (s3://, gs://, file://) shared by API and workers on other machines; read by
    # service.artifacts from the environment so that job processes see it too.
    artifact_url: str | None = None
    data_dir: Path | None = None  # Fashion-MNIST IDX files; then /usr/share/datasets/fashion-mnist

    workers: int | None = Field(default=None, ge=0)  # default: slots_per_gpu per GPU, else 1 (CPU)
    # Default workers per GPU, i.e. jobs sharing one. Measured on an H100 (bench/train.py
    # --concurrent): 2 LeNet jobs trained 1.8x the examples/s of one; 4 and 8 only 1.6x and 2.2x,
    # with each job 2.5-4.5x slower. 2 also leaves each job at least half the GPU's memory.
    slots_per_gpu: int = Field(default=2, ge=1)
    # torch threads of each job process; default torch's own (all cores). Several CPU workers on
    # one machine must share the cores: `serve` divides them among its CPU workers.
    torch_threads: int | None = Field(default=None, ge=1)
    # bf16 autocast of CPU training steps: auto (on where the CPU has AMX), 1 or 0. Each job
    # process reads it from the environment (service.training.precision); checked here so that
    # a typo stops `trainserve` at start instead of failing jobs.
    cpu_bf16: str = "auto"
    # torch.compile of the training forward: auto, 1 or 0 (service.training.compiled); read by
    # each job process, checked here for the same reason.
    compile: str = "auto"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)  # 0: any free port

    # Finite and at most a day: an infinite interval overflows the timestamps built from it.
    # Intervals of database round trips: at least MIN_INTERVAL_SECONDS, as a heartbeat of 1e-9 s
    # committed 2,100 times a second and held a core.
    poll_seconds: float = Field(  # how often an idle worker looks for a job
        default=0.5, ge=MIN_INTERVAL_SECONDS, le=DAY_SECONDS
    )
    heartbeat_seconds: float = Field(  # lease renewal interval
        default=5.0, ge=MIN_INTERVAL_SECONDS, le=DAY_SECONDS
    )
    # a job whose lease lapses is requeued
    lease_seconds: float = Field(default=30.0, gt=0, le=DAY_SECONDS)
    cancel_check_seconds: float = Field(  # how often a running job looks at its cancel flag
        default=1.0, ge=MIN_INTERVAL_SECONDS, le=DAY_SECONDS
    )
    max_attempts: int = Field(default=3, ge=1)  # runs of one job before it is failed
    # A running job writes a checkpoint after an epoch once this long has passed since its last
    # one (0: after every epoch; auto: 0 on a CPU, GPU_CHECKPOINT_SECONDS on a GPU, where copying
    # VGG's state off the GPU after each of its 1-s epochs cost the 10-epoch job about 1 s). A
    # crash loses at most this much training; a worker that shuts down writes one as it stops.
    checkpoint_seconds: float | Literal["auto"] = "auto"
    # x attempts, before a retry
    retry_backoff_seconds: float = Field(default=5.0, ge=0, le=DAY_SECONDS)

    max_predict_instances: int = Field(default=256, ge=1)  # images per predict request
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1)  # predict request body
    model_cache_size: int = Field(default=8, ge=1)  # trained models kept loaded
    # Parameters + buffers of the loaded models together, bytes (VGG-11 alone is ~0.5 GB).
    model_cache_bytes: int = Field(default=2 * 1024**3, ge=1)
    inference_device: str = "cpu"  # where the API process runs forward passes: cpu, cuda[:N]
    inference_threads: int | None = Field(default=None, ge=1)  # torch threads; None: torch's
    batching: bool = True  # dynamic batching of concurrent predict requests (per model)
    batch_max_size: int = Field(default=32, ge=1)  # images per batched forward pass
    batch_max_delay_ms: float = Field(default=2.0, ge=0, le=1000)  # wait for more, when busy
    batch_queue_size: int = Field(default=1024, ge=1)  # images waiting per model; then 503
    max_dataset_bytes: int = Field(default=200 * 1024 * 1024, ge=1)  # POST /datasets body

    @field_validator("lease_seconds")
    @classmethod
    def _lease_outlasts_heartbeat(cls, value: float, info: ValidationInfo) -> float:
        # A lease that lapses before its renewal is due gets every running job requeued by
        # another worker while it still runs.
        heartbeat = info.data.get("heartbeat_seconds")
        if heartbeat is not None and value <= heartbeat:
            raise ValueError(
                f"must be longer than TRAINSERVE_HEARTBEAT_SECONDS ({heartbeat:g}), the interval "
                "at which it is renewed (several times longer survives a slow renewal)"
            )
        return value

    @field_validator("checkpoint_seconds", mode="before")
    @classmethod
    def _seconds_or_auto(cls, value: object) -> float | str:
        # One message for both forms (a union's errors name each member: "..._LITERAL['AUTO']").
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            seconds = math.nan
        if not 0 <= seconds <= DAY_SECONDS:  # NaN too
            raise ValueError(f"must be auto or a number of seconds from 0 to {DAY_SECONDS}")
        return seconds

    @field_validator("inference_device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        value = value.strip().lower()
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"must be cpu, cuda or cuda:N, not {value!r}")
        return value

    @field_validator("cpu_bf16")
    @classmethod
    def _cpu_bf16_word(cls, value: str) -> str:
        from service.training.precision import parse_cpu_bf16

        parse_cpu_bf16(value)
        return value

    @field_validator("compile")
    @classmethod
    def _compile_word(cls, value: str) -> str:
        from service.training.compiled import parse_compile

        parse_compile(value)
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'trainserve.db').resolve()}"

    def checkpoint_seconds_on(self, device: str) -> float:
        """TRAINSERVE_CHECKPOINT_SECONDS for a job on ``device`` (``auto`` resolved)."""
        if self.checkpoint_seconds != "auto":
            return float(self.checkpoint_seconds)
        return GPU_CHECKPOINT_SECONDS if device.startswith("cuda") else 0.0

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.state_dir / "artifacts").resolve()

    @property
    def artifact_dir_source(self) -> str:
        """The variable that set ``resolved_artifact_dir``, for error messages."""
        return "TRAINSERVE_ARTIFACT_DIR" if self.artifact_dir else "TRAINSERVE_STATE_DIR"


class SettingError(ValueError):
    """A setting that is well formed but cannot work on this machine (the CLI prints it)."""


def check_device(device: str, source: str) -> None:
    """Raise SettingError unless torch can run on ``device`` here; ``source`` names where the
    value came from (a variable or an option) in the message."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise SettingError(f"{source}={device}: must be cpu, cuda or cuda:N")
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise SettingError(
            f"{source}={device}, but torch sees {count} CUDA device(s) "
            "here; use cpu" + (f" or cuda:0..cuda:{count - 1}" if count else "")
        )


def check_inference_device(device: str) -> None:
    """Raise SettingError unless torch can run forward passes on ``device`` here."""
    check_device(device, "TRAINSERVE_INFERENCE_DEVICE")


PREFIX = "TRAINSERVE_"
# Variables read outside Settings: by job processes (service.training.graphed) and by the tests
# (service.worker.child's fault injection, the PostgreSQL fixtures).
OTHER_VARIABLES = frozenset(
    {"TRAINSERVE_CUDA_GRAPHS", "TRAINSERVE_FAILPOINT", "TRAINSERVE_TEST_PG_ADMIN_URL"}
)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each TRAINSERVE_* variable that nothing reads (a typo is otherwise silent),
    with the closest known name. Settings reads its variables in any case, as pydantic-settings
    does; the others are read by their exact name."""
    settings = frozenset(PREFIX + name.upper() for name in Settings.model_fields)
    known = settings | OTHER_VARIABLES
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(PREFIX) and upper not in settings and name not in OTHER_VARIABLES:
            close = difflib.get_close_matches(upper, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            lines.append(f"{name} is not a trainserve setting and is ignored{hint}")
    return lines


def check_listen_address(host: str, port: int) -> None:
    """Raise SettingError unless ``host:port`` can be listened on, before `serve` migrates the
    database and starts its workers (uvicorn would find out only after both)."""
    if port == 0:
        return  # any free port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SettingError(f"TRAINSERVE_HOST={host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise SettingError(
                f"cannot listen on {host}:{port} (TRAINSERVE_HOST/TRAINSERVE_PORT, or --host/"
                f"--port): {exc.strerror}"
            ) from None


def check_writable(settings: Settings, *, artifacts: bool) -> None:
    """Raise SettingError unless this process can write where it must: the folder of an SQLite
    database, and (``artifacts``: a process that runs jobs) the artifact directory, which a job
    would otherwise find unwritable only once it had trained. The API alone may read artifacts
    from a read-only volume."""
    places: list[tuple[Path, str]] = []
    try:
        url = make_url(settings.resolved_database_url)
    except ArgumentError:  # not a URL: check_database says so
        url = None
    if url and url.get_backend_name() == "sqlite" and not url.query.get("uri"):
        source = "TRAINSERVE_DATABASE_URL" if settings.database_url else "TRAINSERVE_STATE_DIR"
        if not url.database or url.database == ":memory:":
            # Each process would have a database of its own: the API's jobs, no worker's.
            raise SettingError(f"{source}: an in-memory SQLite database cannot be shared by the "
                               "API and its workers; give a file")  # fmt: skip
        database = Path(url.database).resolve()
        if database.exists() and not os.access(database, os.W_OK):
            raise SettingError(f"{source}: cannot write to {database}")
        places.append((database.parent, source))
    if artifacts:
        places.append((settings.resolved_artifact_dir, settings.artifact_dir_source))
    for directory, source in places:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as exc:
            raise SettingError(
                f"{source}: cannot write in {directory} ({exc.strerror or exc})"
            ) from None


@lru_cache
def get_settings() -> Settings:
    return Settings()
