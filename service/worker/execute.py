"""Run one claimed job to its end inside the job's own process, and write its outcome.

Every write is conditional on the lease token; a refused write means another worker owns the
job now, and this process stops without writing anything else.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from service import queue
from service.artifacts import ModelDescription, checkpoint_path, save_trained_model
from service.config import Settings
from service.tables import JobStatus
from service.training.config import TrainConfig
from service.training.data import DatasetError
from service.training.loop import EpochMetrics, TrainingCancelled, TrainingDiverged, train

log = logging.getLogger(__name__)
T = TypeVar("T")


class Outcome(enum.IntEnum):
    """How the job process ended; its exit code."""

    FINISHED = 0  # the job's final status is written (succeeded or failed)
    STOPPED = 10  # asked to stop (cancel or shutdown): the worker decides what to write
    LEASE_LOST = 11  # another worker owns the job: write nothing


def out_of_memory_message(exc: BaseException, config: TrainConfig) -> str | None:
    text = str(exc)
    if "out of memory" not in text.lower():
        return None
    return (
        f"the device ran out of memory at batch size {config.batch_size}; "
        f"try a smaller batch_size (e.g. {max(1, config.batch_size // 2)}) or a smaller resize"
    )


def execute_job(
    engine: Engine,
    settings: Settings,
    job_id: int,
    token: str,
    config_data: dict,
    *,
    device: str,
    stop: threading.Event,
    should_stop_extra: Callable[[], bool] = lambda: False,
) -> Outcome:
    artifact_dir = settings.resolved_artifact_dir
    ckpt = checkpoint_path(artifact_dir, job_id)
    lost = threading.Event()

    retry = _DatabaseRetry(patience_seconds=settings.lease_seconds)

    def finish(status: JobStatus, **kwargs: object) -> Outcome:
        if retry(queue.finish_job, engine, job_id, token, status, **kwargs):
            _remove(ckpt)
            return Outcome.FINISHED
        log.warning("job %s: lease lost before it could be marked %s", job_id, status.value)
        return Outcome.LEASE_LOST

    def on_epoch(metrics: EpochMetrics) -> None:
        if not retry(queue.record_epoch, engine, job_id, token, metrics.to_dict()):
            lost.set()

    def should_stop() -> bool:
        return stop.is_set() or lost.is_set() or should_stop_extra()

    try:
        config = TrainConfig.from_dict(config_data)
        result = train(
            config,
            device=device,
            data_dir=settings.data_dir,
            on_epoch=on_epoch,
            should_stop=should_stop,
            checkpoint_path=ckpt,
        )
    except TrainingCancelled:
        return Outcome.LEASE_LOST if lost.is_set() else Outcome.STOPPED
    except (TrainingDiverged, DatasetError, ValueError) as exc:
        return finish(JobStatus.FAILED, error=str(exc))
    except Exception as exc:
        message = out_of_memory_message(exc, TrainConfig.from_dict(config_data))
        if message is None:
            log.exception("job %s failed", job_id)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            message = f"training crashed: {detail}"
        return finish(JobStatus.FAILED, error=message)
    if lost.is_set():
        return Outcome.LEASE_LOST
    description = ModelDescription(
        job_id=job_id,
        model=config.model,
        model_kwargs=result.model_kwargs,
        input_side=result.input_side,
        class_names=list(result.class_names),
        config=config.to_dict(),
        metrics=result.metrics(),
    )
    save_trained_model(artifact_dir, description, result.model)
    return finish(JobStatus.SUCCEEDED, final_metrics=result.metrics())


class _DatabaseRetry:
    """Retry a write while the database is unreachable (restarting, failing over), for as long
    as the lease could still be ours; after that the write is moot and the error propagates."""

    def __init__(self, patience_seconds: float) -> None:
        self.patience_seconds = patience_seconds

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        deadline = time.monotonic() + self.patience_seconds
        delay = 0.2
        while True:
            try:
                return fn(*args, **kwargs)
            except OperationalError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("database unavailable (%s); retrying in %.1fs", exc.orig, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
