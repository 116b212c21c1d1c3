"""What a worker writes, and removes, when its job process ended without writing a result."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from service import queue
from service.artifacts import checkpoint_path
from service.cli import migrate
from service.config import Settings
from service.db import make_session_factory
from service.worker.execute import Outcome
from service.worker.loop import Worker

CONFIG = {"model": "softmax", "dataset": "synthetic", "epochs": 3}


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    settings = Settings(state_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(settings)
    worker = Worker(settings, name="settle-test")
    yield worker
    worker.engine.dispose()


def _running_job_with_checkpoint(worker: Worker, *, max_attempts: int = 3) -> queue.ClaimedJob:
    with make_session_factory(worker.engine)() as session:
        queue.submit_job(session, dict(CONFIG), max_attempts=max_attempts)
    claimed = queue.claim_next_job(worker.engine, worker.name, 60)
    assert claimed is not None
    ckpt = checkpoint_path(worker.artifact_dir, claimed.id)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"epoch 1")
    return claimed


def _cancel(worker: Worker, job_id: int) -> None:
    with make_session_factory(worker.engine)() as session:
        queue.cancel_job(session, job_id)


def _keeper() -> SimpleNamespace:
    """A lease keeper that saw neither the cancel nor a lost lease."""
    return SimpleNamespace(cancelled=threading.Event(), lost=threading.Event())


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
