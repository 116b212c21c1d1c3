"""Run one claimed job to its end inside the job's own process, and write its outcome.

Every write is conditional on the lease token; a refused write means another worker owns the
job now, and this process stops without writing anything else. A write is retried while the
database is unreachable, for as long as the lease could still be ours; past that the process
stops without writing (``Outcome.DATABASE_LOST``), and the job is requeued once its lease lapses
(attempt + 1, resumed from its checkpoint), as when a worker dies. An outage never fails a job.
The job's kind picks the work: ``train`` (a classifier, saved for /models, or a linear
regression, reported in ``result``), ``lr_find`` (the lr range test) or ``kfold``
(cross-validation); only classifiers' train jobs save a model. Every succeeded train and
kfold job gets a diagnosis of its curves in ``result`` (a train job cancelled while it ran gets
one from its worker: service/worker/cancelled.py).
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import Engine

from service import artifacts, queue
from service.artifacts import ModelDescription, checkpoint_path, save_trained_model
from service.config import Settings
from service.tables import JobStatus
from service.training.config import TrainConfig
from service.training.data import DatasetError
from service.training.diagnosis import diagnose_epochs
from service.training.diagnosis_advice import run_facts
from service.training.distributed import job_devices, train_data_parallel
from service.training.kfold import cross_validate
from service.training.loop import (
    EpochMetrics,
    TrainingCancelled,
    TrainingDiverged,
    save_checkpoint,
    train,
)
from service.training.lr_find import find_lr
from service.training.regression import train_regression
from service.worker.retry import DatabaseRetry, DatabaseUnavailable, is_database_error

log = logging.getLogger(__name__)


class Outcome(enum.IntEnum):
    """How the job process ended; its exit code."""

    FINISHED = 0  # the job's final status is written (succeeded or failed)
    STOPPED = 10  # asked to stop (cancel or shutdown): the worker decides what to write
    LEASE_LOST = 11  # another worker owns the job: write nothing
    # The database stayed unreachable for as long as the lease could be ours: nothing written;
    # the lease lapses and the job is requeued (attempt + 1) and resumes from its checkpoint.
    DATABASE_LOST = 12


# CUDA says "out of memory"; torch's CPU allocator says "can't allocate memory".
_OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory")


def out_of_memory_message(exc: BaseException, config: TrainConfig) -> str | None:
    text = str(exc).lower()
    if not isinstance(exc, MemoryError) and not any(w in text for w in _OUT_OF_MEMORY_WORDS):
        return None
    return (
        f"the device ran out of memory at batch size {config.batch_size}; "
        f"try a smaller batch_size (e.g. {max(1, config.batch_size // 2)}) or a smaller resize"
    )


def publish_hold_limit(settings: Settings) -> float:
    """How long recording a job's outcome (its model written, and uploaded with
    TRAINSERVE_ARTIFACT_URL) may hold the job's row before the database ends the attempt: a
    hung upload is a hung worker. Generous: a slow upload of a large model is no hang."""
    return max(120.0, 4 * settings.lease_seconds)


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
    keep_progress: Callable[[], bool] = lambda: False,
) -> Outcome:
    artifact_dir = settings.resolved_artifact_dir
    ckpt = checkpoint_path(artifact_dir, job_id)
    lost = threading.Event()

    retry = DatabaseRetry(patience_seconds=settings.lease_seconds)

    def finish(status: JobStatus, **kwargs: object) -> Outcome:
        try:
            written = retry(
                queue.finish_job, engine, job_id, token, status,
                hold_limit_seconds=publish_hold_limit(settings), **kwargs,
            )  # fmt: skip
        except DatabaseUnavailable as exc:
            return database_lost(exc)
        if written:
            artifacts.remove_checkpoint(artifact_dir, job_id)
            return Outcome.FINISHED
        log.warning("job %s: lease lost before it could be marked %s", job_id, status.value)
        return Outcome.LEASE_LOST

    def database_lost(exc: BaseException) -> Outcome:
        log.warning(
            "job %s: %s; stopping without writing: it is requeued when its lease lapses and "
            "resumes from its checkpoint",
            job_id,
            exc if isinstance(exc, DatabaseUnavailable) else f"database error: {exc}",
        )
        return Outcome.DATABASE_LOST

    def should_stop() -> bool:
        return stop.is_set() or lost.is_set() or should_stop_extra()

    epoch_retry = DatabaseRetry(patience_seconds=settings.lease_seconds, give_up=should_stop)

    def on_epoch(metrics: EpochMetrics) -> None:
        row = _finite_values(metrics.to_dict())
        try:
            written = epoch_retry(queue.record_epoch, engine, job_id, token, row)
        except DatabaseUnavailable:
            if should_stop():  # asked to stop during the outage: stop now; the worker requeues
                raise TrainingCancelled("stopped while the database was unreachable") from None
            raise  # ends the training: see database_lost below
        if not written:
            # Another worker owns the job now. Stop here, before fit writes this epoch's
            # checkpoint to the shared path: the new owner would resume after an epoch whose
            # row was never written, and the job would end with that row missing.
            lost.set()
            raise TrainingCancelled(f"lease lost at epoch {metrics.epoch}")

    def save_and_share(path: Path, state: dict[str, Any]) -> None:
        # Not once the lease is lost: a write still in flight then (a slow disk) would land after
        # the new owner's, or after it finished and removed the file, and stay there.
        if save_checkpoint(path, state, still_wanted=lambda: not lost.is_set()):
            # With TRAINSERVE_ARTIFACT_URL, another machine that takes the job over resumes
            # from it.
            artifacts.push_checkpoint(artifact_dir, job_id)

    datasets_dir = artifact_dir / "datasets"
    common: dict[str, Any] = {
        "device": device,
        "datasets_dir": datasets_dir,
        "should_stop": should_stop,
    }
    final: dict[str, float] | None = None
    result: dict[str, Any]
    try:
        config = TrainConfig.from_dict(config_data)
        if config.kind == "lr_find":
            curve = find_lr(config, data_dir=settings.data_dir, **common)
            result = curve.to_dict()
        elif config.kind == "kfold":
            folds = cross_validate(config, data_dir=settings.data_dir, **common)
            final, result = folds.metrics(), folds.to_dict()
        elif config.is_regression:
            fitted = train_regression(config, on_epoch=on_epoch, **common)
            final = fitted.metrics()
            result = {
                **fitted.report,
                "val_mse": fitted.val_mse,  # NaN (no validation split) -> null
                "diagnosis": diagnose_epochs(fitted.epochs, facts=run_facts(config)),
            }
        else:
            artifacts.fetch_checkpoint(artifact_dir, job_id)  # a run on another machine's
            if config.devices > 1:
                trained = train_data_parallel(
                    config,
                    job_devices(device, config.devices),
                    data_dir=settings.data_dir,
                    datasets_dir=datasets_dir,
                    on_epoch=on_epoch,
                    should_stop=should_stop,
                    checkpoint_path=ckpt,
                    save_checkpoint_fn=save_and_share,
                    checkpoint_last_epoch=False,  # finish() deletes it
                    checkpoint_seconds=settings.checkpoint_seconds_on(device),
                    # A stop to requeue (shutdown) keeps the epochs the throttle left unsaved.
                    checkpoint_on_stop=lambda: keep_progress() and not lost.is_set(),
                )
            else:
                trained = train(
                    config,
                    data_dir=settings.data_dir,
                    on_epoch=on_epoch,
                    checkpoint_path=ckpt,
                    save_checkpoint_fn=save_and_share,
                    checkpoint_last_epoch=False,  # finish() deletes it
                    checkpoint_seconds=settings.checkpoint_seconds_on(device),
                    # A stop to requeue (shutdown) keeps the epochs the throttle left unsaved.
                    checkpoint_on_stop=lambda: keep_progress() and not lost.is_set(),
                    **common,
                )
            final = trained.metrics()
            diagnosis = diagnose_epochs(trained.epochs, len(trained.class_names), run_facts(config))
            result = {"diagnosis": diagnosis}
    except TrainingCancelled:
        return Outcome.LEASE_LOST if lost.is_set() else Outcome.STOPPED
    except Exception as exc:
        if is_database_error(exc):  # an outage, however it surfaced: never a training failure
            return database_lost(exc)
        if isinstance(exc, TrainingDiverged | DatasetError | ValueError):
            return finish(JobStatus.FAILED, error=str(exc))
        message = out_of_memory_message(exc, TrainConfig.from_dict(config_data))
        if message is None:
            log.exception("job %s failed", job_id)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            message = f"training crashed: {detail}"
        return finish(JobStatus.FAILED, error=message)
    if lost.is_set():
        return Outcome.LEASE_LOST
    publish: Callable[[], None] | None = None  # runs under the job's row lock, lease held
    if config.kind == "train" and not config.is_regression:
        description = ModelDescription(
            job_id=job_id,
            model=config.model,
            model_kwargs=trained.model_kwargs,
            input_side=trained.input_side,
            class_names=list(trained.class_names),
            config=config.to_dict(),
            metrics=trained.metrics(),
            image_shape=list(trained.image_shape) if trained.image_shape else None,
        )
        publish = _publisher(artifact_dir, description, trained.model)

    start = time.perf_counter()
    outcome = finish(
        JobStatus.SUCCEEDED,
        final_metrics=_finite_values(final) if final else None,
        result=_json_safe(result),
        publish=publish,
    )
    log.info("model saved and outcome recorded in %.2f s", time.perf_counter() - start)
    return outcome


def _publisher(
    artifact_dir: Path, description: ModelDescription, model: torch.nn.Module
) -> Callable[[], None]:
    def publish() -> None:
        save_trained_model(artifact_dir, description, model)

    return publish


def _finite_values(values: dict[str, float]) -> dict[str, Any]:
    """NaN/inf (a regression's accuracy) become None: SQL NULL, JSON null."""
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in values.items()}


def _json_safe(value: Any) -> Any:
    """The value with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
