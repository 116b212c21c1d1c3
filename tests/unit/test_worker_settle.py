"""What a worker writes, and removes, when its job process ended without writing a result,
also while the database is unreachable (simulated: the queue's functions raise what
SQLAlchemy raises when the server refuses connections)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

from service import queue
from service.artifacts import checkpoint_path
from service.cli import migrate
from service.config import Settings
from service.db import make_session_factory
from service.worker.execute import Outcome
from service.worker.lease import LeaseKeeper
from service.worker.loop import Worker

CONFIG = {"model": "softmax", "dataset": "synthetic", "epochs": 3}


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    settings = Settings(state_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(settings)
    worker = Worker(settings, name="settle-test")
    yield worker
    worker.engine.dispose()


def _running_job_with_checkpoint(
    worker: Worker, *, max_attempts: int = 3, epochs: int = CONFIG["epochs"]
) -> queue.ClaimedJob:
    with make_session_factory(worker.engine)() as session:
        queue.submit_job(session, {**CONFIG, "epochs": epochs}, max_attempts=max_attempts)
    claimed = queue.claim_next_job(worker.engine, worker.name, 60)
    assert claimed is not None
    ckpt = checkpoint_path(worker.artifact_dir, claimed.id)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"epoch 1")
    return claimed


def _cancel(worker: Worker, job_id: int) -> None:
    with make_session_factory(worker.engine)() as session:
        queue.cancel_job(session, job_id)


def _keeper(seconds_left: float = 60.0) -> SimpleNamespace:
    """A lease keeper that saw neither the cancel nor a lost lease."""
    return SimpleNamespace(
        cancelled=threading.Event(), lost=threading.Event(), seconds_left=lambda: seconds_left
    )


def _status(worker: Worker, job_id: int) -> str:
    with make_session_factory(worker.engine)() as session:
        return queue.get_job(session, job_id).status


def test_a_stopping_worker_keeps_the_checkpoint_of_a_requeued_job(worker: Worker) -> None:
    claimed = _running_job_with_checkpoint(worker)
    worker.stopping.set()
    worker._settle(claimed, Outcome.STOPPED, _keeper())
    assert _status(worker, claimed.id) == "queued"
    assert checkpoint_path(worker.artifact_dir, claimed.id).exists()  # it resumes from it


def test_a_stopping_worker_removes_the_checkpoint_of_a_cancel_it_had_not_seen(
    worker: Worker,
) -> None:
    claimed = _running_job_with_checkpoint(worker)
    _cancel(worker, claimed.id)  # accepted, but the lease keeper had not read it yet
    worker.stopping.set()
    worker._settle(claimed, Outcome.STOPPED, _keeper())
    assert _status(worker, claimed.id) == "cancelled"
    assert not checkpoint_path(worker.artifact_dir, claimed.id).exists()


def test_a_crash_keeps_the_checkpoint_until_the_job_fails_for_good(worker: Worker) -> None:
    claimed = _running_job_with_checkpoint(worker, max_attempts=1)
    worker._settle(claimed, -9, _keeper())  # SIGKILL, out of attempts
    assert _status(worker, claimed.id) == "failed"
    assert not checkpoint_path(worker.artifact_dir, claimed.id).exists()

    retried = _running_job_with_checkpoint(worker, max_attempts=3)
    worker._settle(retried, -9, _keeper())
    assert _status(worker, retried.id) == "queued"
    assert checkpoint_path(worker.artifact_dir, retried.id).exists()


def _refused() -> OperationalError:
    return OperationalError(
        "UPDATE jobs", {}, ConnectionRefusedError("connection failed: Connection refused")
    )


def _down_for(calls: int, real: Callable[..., object]) -> Callable[..., object]:
    """`real` behind a database that refuses the first `calls` calls (-1: every call)."""
    failures = iter(range(calls)) if calls >= 0 else iter(int, 1)

    def call(*args: object, **kwargs: object) -> object:
        if next(failures, None) is not None:
            raise _refused()
        return real(*args, **kwargs)

    return call


def test_a_worker_stopped_during_a_short_outage_requeues_its_job_uncounted(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    claimed = _running_job_with_checkpoint(worker)
    monkeypatch.setattr(queue, "release_job", _down_for(2, queue.release_job))
    worker.stopping.set()
    worker._settle(claimed, Outcome.STOPPED, _keeper())
    with make_session_factory(worker.engine)() as session:
        job = queue.get_job(session, claimed.id)
        assert (job.status, job.attempts) == ("queued", 0)  # the run is not counted
    assert checkpoint_path(worker.artifact_dir, claimed.id).exists()


def test_a_crash_and_a_cancel_during_a_short_outage_are_written(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue, "requeue_or_fail", _down_for(2, queue.requeue_or_fail))
    crashed = _running_job_with_checkpoint(worker)
    worker._settle(crashed, -9, _keeper())
    assert _status(worker, crashed.id) == "queued"

    monkeypatch.setattr(queue, "finish_job", _down_for(2, queue.finish_job))
    cancelled = _running_job_with_checkpoint(worker)
    _cancel(worker, cancelled.id)
    keeper = _keeper()
    keeper.cancelled.set()
    worker._settle(cancelled, Outcome.STOPPED, keeper)
    assert _status(worker, cancelled.id) == "cancelled"
    assert not checkpoint_path(worker.artifact_dir, cancelled.id).exists()


@pytest.mark.parametrize(
    ("function", "exitcode", "cancelled", "stopping"),
    [
        ("release_job", Outcome.STOPPED, False, True),  # SIGTERM to the worker
        ("requeue_or_fail", -9, False, False),  # the job process was killed
        ("finish_job", Outcome.STOPPED, True, False),  # cancelled by request
    ],
)
def test_an_outage_past_the_lease_leaves_the_job_to_lapse_and_the_worker_alive(
    worker: Worker,
    monkeypatch: pytest.MonkeyPatch,
    function: str,
    exitcode: int,
    cancelled: bool,
    stopping: bool,
) -> None:
    claimed = _running_job_with_checkpoint(worker)
    monkeypatch.setattr(queue, function, _down_for(-1, getattr(queue, function)))
    keeper = _keeper(seconds_left=0.5)  # the lease could be ours for half a second more
    if cancelled:
        _cancel(worker, claimed.id)
        keeper.cancelled.set()
    if stopping:
        worker.stopping.set()
    started = time.monotonic()
    worker._settle(claimed, exitcode, keeper)  # does not raise
    assert time.monotonic() - started < 5  # gave up with the lease
    with make_session_factory(worker.engine)() as session:
        job = queue.get_job(session, claimed.id)
        # Nothing written: the job is requeued, or cancelled, once its lease lapses.
        assert (job.status, job.lease_token) == ("running", claimed.token)
    assert checkpoint_path(worker.artifact_dir, claimed.id).exists()


def test_a_job_process_that_lost_the_database_is_left_to_lapse(worker: Worker) -> None:
    claimed = _running_job_with_checkpoint(worker)
    worker._settle(claimed, Outcome.DATABASE_LOST, _keeper())
    with make_session_factory(worker.engine)() as session:
        job = queue.get_job(session, claimed.id)
        assert (job.status, job.error, job.lease_token) == ("running", None, claimed.token)
    assert checkpoint_path(worker.artifact_dir, claimed.id).exists()


def test_the_worker_loop_survives_a_database_error_in_a_job(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoStandby:  # no job process is started here
        def __init__(self, *_args: object) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr("service.worker.loop.Standby", NoStandby)
    monkeypatch.setattr(worker.settings, "poll_seconds", 0.01)
    for _ in range(2):
        with make_session_factory(worker.engine)() as session:
            queue.submit_job(session, dict(CONFIG))
    ran: list[int] = []

    def run_job(claimed: queue.ClaimedJob) -> None:
        ran.append(claimed.id)
        if len(ran) == 1:
            raise _refused()  # the database went away in the middle of the job

    monkeypatch.setattr(worker, "run_job", run_job)
    worker.run(max_jobs=1)  # does not raise: the second job counts as the one
    assert len(ran) == 2


def test_the_lease_keeper_knows_how_long_the_lease_could_still_be_ours(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    claimed = _running_job_with_checkpoint(worker)
    keeper = LeaseKeeper(
        worker.engine,
        claimed.id,
        claimed.token,
        lease_seconds=0.6,
        heartbeat_seconds=0.1,
        check_seconds=0.05,
    )
    keeper.start()
    try:
        time.sleep(0.4)
        assert keeper.seconds_left() > 0.3  # renewed by its heartbeats
        monkeypatch.setattr(queue, "heartbeat", _down_for(-1, queue.heartbeat))
        time.sleep(0.8)
        assert keeper.seconds_left() == 0  # no heartbeat got through for a whole lease
        assert not keeper.lost.is_set()  # which is not the lease being taken
    finally:
        keeper.stop()


def test_the_reaper_removes_the_checkpoints_of_jobs_it_ends(worker: Worker) -> None:
    """A dead worker's job that the reaper fails (attempts used up) or cancels (a cancel was
    asked) will never resume: the polling worker deletes its checkpoint; a requeued one keeps
    its own."""
    out_of_attempts = _running_job_with_checkpoint(worker, max_attempts=1)
    cancelled = _running_job_with_checkpoint(worker)
    _cancel(worker, cancelled.id)
    requeued = _running_job_with_checkpoint(worker)
    with worker.engine.begin() as conn:  # every lease lapsed
        conn.exec_driver_sql("UPDATE jobs SET lease_expires_at = '2000-01-01 00:00:00'")
    worker.settings.retry_backoff_seconds = 3600  # the requeued job is not claimed again here
    worker._wait_for_work = lambda: None  # type: ignore[method-assign]
    assert worker._poll_once() is False  # reaped; nothing to claim
    assert [_status(worker, c.id) for c in (out_of_attempts, cancelled, requeued)] == [
        "failed", "cancelled", "queued"
    ]  # fmt: skip
    assert not checkpoint_path(worker.artifact_dir, out_of_attempts.id).exists()
    assert not checkpoint_path(worker.artifact_dir, cancelled.id).exists()
    assert checkpoint_path(worker.artifact_dir, requeued.id).exists()  # it resumes from it


def test_a_job_cancelled_while_it_ran_carries_the_diagnosis_of_its_epochs_so_far(
    worker: Worker,
) -> None:
    """Issue 6: every finished job carries a verdict from its curves; a cancelled one from the
    epochs it recorded, and says so. Without a recorded epoch there is nothing to judge."""
    keeper = _keeper()
    keeper.cancelled.set()
    early = _running_job_with_checkpoint(worker)
    _cancel(worker, early.id)
    worker._settle(early, Outcome.STOPPED, keeper)

    claimed = _running_job_with_checkpoint(worker, epochs=40)
    # Overfitting curves: validation turned back up while the training loss kept falling.
    curves = [(0.9, 1.0), (0.5, 0.6), (0.2, 0.75)]
    for epoch, (train_loss, val_loss) in enumerate(curves, start=1):
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": 0.9, "val_loss": val_loss,
               "val_acc": 0.8, "examples_per_sec": 1000.0, "seconds": 1.0}  # fmt: skip
        assert queue.record_epoch(worker.engine, claimed.id, claimed.token, row)
    _cancel(worker, claimed.id)
    worker._settle(claimed, Outcome.STOPPED, keeper)

    with make_session_factory(worker.engine)() as session:
        assert queue.get_job(session, early.id).result is None
        job = queue.get_job(session, claimed.id)
    assert job.status == "cancelled" and job.error == "cancelled by request"
    diagnosis = job.result["diagnosis"]
    assert diagnosis["verdict"] == "overfitting" and diagnosis["epochs"] == 3
    assert diagnosis["reason"].startswith("so far (cancelled after 3 of 40 epochs): ")
    assert "kept falling (0.5 to 0.2)" in diagnosis["reason"]
    assert diagnosis["cancelled_after_epochs"] == 3


def test_a_starting_worker_removes_the_checkpoints_of_ended_jobs(worker: Worker) -> None:
    """A job killed on this machine and finished elsewhere left its checkpoint here; nothing
    else removes it. The checkpoints of jobs that may still resume stay."""
    running = _running_job_with_checkpoint(worker)
    ended = _running_job_with_checkpoint(worker)
    assert queue.finish_job(worker.engine, ended.id, ended.token, queue.JobStatus.FAILED)
    ended_checkpoint = checkpoint_path(worker.artifact_dir, ended.id)
    ended_checkpoint.write_bytes(b"left behind")  # as if another machine had finished it
    unknown = checkpoint_path(worker.artifact_dir, 999)
    unknown.parent.mkdir(parents=True)
    unknown.write_bytes(b"a job no longer in the database")
    worker._drop_stale_checkpoints()
    assert checkpoint_path(worker.artifact_dir, running.id).exists()
    assert not ended_checkpoint.exists() and not unknown.exists()
