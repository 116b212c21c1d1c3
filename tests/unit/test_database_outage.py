"""A database outage seen from a job's process: never a training failure.

The outage is simulated by making the queue's functions raise what SQLAlchemy raises when the
server refuses connections, with a short lease; the database itself (SQLite) stays up, so what
the process wrote, or did not, can be read back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from service import queue
from service.artifacts import checkpoint_path
from service.cli import migrate
from service.config import Settings
from service.db import make_engine, make_session_factory
from service.tables import Job
from service.worker.execute import Outcome, execute_job

CONFIG = {"model": "softmax", "dataset": "synthetic", "epochs": 3, "batch_size": 256}
LEASE_SECONDS = 1.0


def refused() -> OperationalError:
    return OperationalError(
        "SELECT 1", {}, ConnectionRefusedError("connection failed: Connection refused")
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(
        state_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        lease_seconds=LEASE_SECONDS,
        heartbeat_seconds=0.2,
        retry_backoff_seconds=0,
        checkpoint_seconds=0,  # a checkpoint after every epoch: the resume tests need one
    )
    migrate(settings)
    return settings


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.resolved_database_url)
    yield engine
    engine.dispose()


def _claim(engine: Engine) -> queue.ClaimedJob:
    claimed = queue.claim_next_job(engine, "outage-test", LEASE_SECONDS)
    assert claimed is not None
    return claimed


def _submit_and_claim(engine: Engine) -> queue.ClaimedJob:
    with make_session_factory(engine)() as session:
        queue.submit_job(session, dict(CONFIG))
    return _claim(engine)


def _job(engine: Engine, job_id: int) -> Job:
    with make_session_factory(engine)() as session:
        return queue.get_job(session, job_id)


def _run(
    engine: Engine,
    settings: Settings,
    claimed: queue.ClaimedJob,
    stop: threading.Event | None = None,
) -> Outcome:
    return execute_job(
        engine,
        settings,
        claimed.id,
        claimed.token,
        claimed.config,
        device="cpu",
        stop=stop or threading.Event(),
    )


def _down_from_epoch(epoch: int, real: Callable[..., bool]) -> Callable[..., bool]:
    """record_epoch that works until `epoch`, then finds the database gone for good."""

    def record_epoch(engine: Engine, job_id: int, token: str, metrics: dict[str, Any]) -> bool:
        if metrics["epoch"] >= epoch:
            raise refused()
        return real(engine, job_id, token, metrics)

    return record_epoch


def test_an_outage_past_the_lease_requeues_the_job_which_resumes_from_its_checkpoint(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    claimed = _submit_and_claim(engine)
    with monkeypatch.context() as patch:
        patch.setattr(queue, "record_epoch", _down_from_epoch(2, queue.record_epoch))
        started = time.monotonic()
        outcome = _run(engine, settings, claimed)
    assert outcome == Outcome.DATABASE_LOST
    assert time.monotonic() - started < 30  # gave up after about the lease, not later

    job = _job(engine, claimed.id)
    assert (job.status, job.error, job.lease_token) == ("running", None, claimed.token)
    assert job.epochs_done == 1  # nothing written after the outage began
    assert checkpoint_path(settings.resolved_artifact_dir, claimed.id).exists()

    time.sleep(LEASE_SECONDS + 0.2)  # its lease lapses, as a dead worker's would
    assert queue.requeue_expired_leases(engine, backoff_seconds=0) == 1
    job = _job(engine, claimed.id)
    assert (job.status, job.error, job.attempts) == ("queued", None, 1)

    again = _claim(engine)
    assert (again.id, again.attempt) == (claimed.id, 2)  # counted like any lost run
    with caplog.at_level(logging.INFO):
        assert _run(engine, settings, again) == Outcome.FINISHED
    assert "resuming softmax from epoch 2" in caplog.text
    job = _job(engine, claimed.id)
    assert (job.status, job.error, job.epochs_done) == ("succeeded", None, 3)
    with make_session_factory(engine)() as session:
        assert [m.epoch for m in queue.list_epoch_metrics(session, claimed.id)] == [1, 2, 3]


def test_an_outage_when_the_result_is_written_leaves_the_job_to_be_requeued(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    claimed = _submit_and_claim(engine)

    def finish_job(*_args: object, **_kwargs: object) -> bool:
        raise refused()

    monkeypatch.setattr(queue, "finish_job", finish_job)
    assert _run(engine, settings, claimed) == Outcome.DATABASE_LOST
    job = _job(engine, claimed.id)
    assert (job.status, job.error, job.epochs_done) == ("running", None, 3)
    assert checkpoint_path(settings.resolved_artifact_dir, claimed.id).exists()


def test_an_outage_shorter_than_the_lease_is_ridden_out(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    claimed = _submit_and_claim(engine)
    real, failures = queue.record_epoch, iter(range(2))

    def record_epoch(*args: Any) -> bool:
        if next(failures, None) is not None:
            raise refused()
        return real(*args)

    monkeypatch.setattr(queue, "record_epoch", record_epoch)
    assert _run(engine, settings, claimed) == Outcome.FINISHED
    job = _job(engine, claimed.id)
    assert (job.status, job.attempts, job.epochs_done) == ("succeeded", 1, 3)


def test_a_job_asked_to_stop_during_an_outage_stops_at_once(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown during an outage: the job stops without waiting out the lease, and its
    worker requeues it (without counting the run)."""
    settings = settings.model_copy(update={"lease_seconds": 20.0})
    claimed = _submit_and_claim(engine)
    stop = threading.Event()

    def record_epoch(*args: Any) -> bool:
        stop.set()  # SIGTERM arrives while the database is away
        raise refused()

    monkeypatch.setattr(queue, "record_epoch", record_epoch)
    started = time.monotonic()
    assert _run(engine, settings, claimed, stop) == Outcome.STOPPED
    assert time.monotonic() - started < 15
    assert _job(engine, claimed.id).status == "running"  # the worker writes what comes next


def test_the_catch_all_tells_a_database_error_from_a_training_crash(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However a lost connection surfaces out of the training (here wrapped by the code that
    ran it, as a data-parallel run's rank 0 might), the job is not failed."""

    def train_losing_the_database(*_args: object, **_kwargs: object) -> None:
        try:
            raise InterfaceError("UPDATE jobs", {}, Exception("connection already closed"))
        except InterfaceError as exc:
            raise RuntimeError("training stopped") from exc

    monkeypatch.setattr("service.worker.execute.train", train_losing_the_database)
    claimed = _submit_and_claim(engine)
    assert _run(engine, settings, claimed) == Outcome.DATABASE_LOST
    job = _job(engine, claimed.id)
    assert (job.status, job.error) == ("running", None)

    def train_crashing(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("service.worker.execute.train", train_crashing)
    crashed = _submit_and_claim(engine)
    assert _run(engine, settings, crashed) == Outcome.FINISHED
    job = _job(engine, crashed.id)
    assert (job.status, job.error) == ("failed", "training crashed: RuntimeError: boom")


def test_a_lease_lost_at_an_epoch_stops_before_that_epoch_is_checkpointed(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row of epoch 2 is refused (another worker took the job over): no checkpoint of
    epoch 2 may follow, or the new owner resumes after a row that was never written."""
    import torch

    claimed = _submit_and_claim(engine)
    real = queue.record_epoch

    def taken_over_at_2(engine: Engine, job_id: int, token: str, metrics: dict[str, Any]) -> bool:
        return False if metrics["epoch"] >= 2 else real(engine, job_id, token, metrics)

    with monkeypatch.context() as patch:
        patch.setattr(queue, "record_epoch", taken_over_at_2)
        assert _run(engine, settings, claimed) == Outcome.LEASE_LOST
    ckpt = checkpoint_path(settings.resolved_artifact_dir, claimed.id)
    # At most the last epoch whose row was written (none, if epoch 1's write was still in
    # flight when the lease went: see the test below)
    assert not ckpt.exists() or torch.load(ckpt)["epoch"] == 1
    assert _job(engine, claimed.id).epochs_done == 1


def test_a_checkpoint_write_that_outlives_the_lease_is_not_put_in_place(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 1's checkpoint is still being written (a slow disk) when epoch 2's row is refused:
    it must not land afterwards, over the new owner's checkpoint or after that owner removed
    it at the end (a probe found such a file in a succeeded job's directory)."""
    import torch

    claimed = _submit_and_claim(engine)
    real_record, real_save = queue.record_epoch, torch.save

    def taken_over_at_2(engine: Engine, job_id: int, token: str, metrics: dict[str, Any]) -> bool:
        return False if metrics["epoch"] >= 2 else real_record(engine, job_id, token, metrics)

    def slow_save(*args: Any, **kwargs: Any) -> None:
        time.sleep(1.0)  # epoch 2 trains and is refused meanwhile
        real_save(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(queue, "record_epoch", taken_over_at_2)
        patch.setattr(torch, "save", slow_save)
        assert _run(engine, settings, claimed) == Outcome.LEASE_LOST
    ckpt = checkpoint_path(settings.resolved_artifact_dir, claimed.id)
    assert not ckpt.exists()
    assert not list(ckpt.parent.glob("*.tmp"))  # and its temp file is gone


def test_a_postgresql_host_that_never_answers_is_an_error_in_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libpq waits without end by default: an API request to a database host that accepts the
    connection and says nothing hung past 100 s instead of answering 503."""
    import socket

    from service import db

    monkeypatch.setitem(db.PG_CONNECT_ARGS, "connect_timeout", 2)  # libpq's least
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel completes the handshake; nothing ever answers
        port = silent.getsockname()[1]
        engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")
        start = time.monotonic()
        with pytest.raises(OperationalError, match="timeout"):
            engine.connect()
        assert time.monotonic() - start < 10
        engine.dispose()
