"""Worker faults on SQLite and PostgreSQL: kill -9 mid-epoch, SIGSTOP past the lease, a job
that crashes every time. Each test is bounded in time and stops by itself."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.integration.fleet import Fleet


@pytest.fixture
def fleet(database_url: str, tmp_path: Path):
    fleet = Fleet(database_url, tmp_path / "state", {})
    yield fleet
    fleet.stop_all()


def _owner_once_past_epoch(fleet: Fleet, job_id: int, epochs_done: int) -> str:
    fleet.wait_for(
        f"job {job_id} past epoch {epochs_done}",
        lambda: fleet.job(job_id).epochs_done >= epochs_done,
    )
    time.sleep(0.3)  # into the middle of the next epoch
    owner = fleet.job(job_id).lease_owner
    assert owner in fleet.workers, owner
    return owner


def _assert_complete(fleet: Fleet, job_id: int, epochs: int) -> None:
    job = fleet.job(job_id)
    assert job.status == "succeeded", job.error
    assert fleet.epochs(job_id) == list(range(1, epochs + 1))  # contiguous, unique
    assert job.epochs_done == epochs
    for value in (job.train_loss, job.train_acc, job.val_acc, job.test_loss, job.test_acc):
        assert value is not None
    assert (fleet.artifact_dir / "jobs" / str(job_id) / "model.safetensors").exists()


def test_kill_9_mid_epoch_resumes_on_another_worker(fleet: Fleet) -> None:
    fleet.start_worker("w1")
    job_id = fleet.submit()
    fleet.wait_for("a claim", lambda: fleet.job(job_id).status == "running")
    fleet.start_worker("w2")
    victim = _owner_once_past_epoch(fleet, job_id, 2)
    fleet.signal_worker(victim, signal.SIGKILL)
    survivor = next(n for n in fleet.workers if n != victim)

    fleet.wait_for(
        "the job to finish",
        lambda: fleet.job(job_id).status in ("succeeded", "failed", "cancelled"),
    )
    _assert_complete(fleet, job_id, 6)
    job = fleet.job(job_id)
    assert job.attempts == 2
    assert "resuming lenet from epoch" in fleet.log(survivor)  # from the checkpoint, not from 1
    print(f"\nkill -9 [{fleet.engine.dialect.name}]: jobs=1 kills=1 attempts={job.attempts} "
          f"epochs={len(fleet.epochs(job_id))}/6 lost=0 duplicated=0")  # fmt: skip


def test_sigstop_past_lease_then_sigcont_late_writes_refused(
    postgres_url: str, tmp_path: Path
) -> None:
    # PostgreSQL only: SQLite has one write lock for the whole file, and a process frozen while
    # it holds it (even for the millisecond of a heartbeat) stalls every writer until it thaws.
    # The embedded SQLite mode is one machine's; scale-out (where workers hang) is PostgreSQL's.
    fleet = Fleet(postgres_url, tmp_path / "state", {})
    try:
        _sigstop_then_sigcont(fleet)
    finally:
        fleet.stop_all()


def _sigstop_then_sigcont(fleet: Fleet) -> None:
    fleet.start_worker("w1")
    job_id = fleet.submit()
    fleet.wait_for("a claim", lambda: fleet.job(job_id).status == "running")
    fleet.start_worker("w2")
    frozen = _owner_once_past_epoch(fleet, job_id, 2)
    other = next(n for n in fleet.workers if n != frozen)
    fleet.signal_worker(frozen, signal.SIGSTOP)
    fleet.wait_for(
        "the other worker to take the job over",
        lambda: fleet.job(job_id).lease_owner == other,
        timeout=60,
    )
    fleet.signal_worker(frozen, signal.SIGCONT)
    fleet.wait_for("the job to finish", lambda: fleet.job(job_id).status == "succeeded")
    time.sleep(1.5)  # give the thawed worker time to try its late writes
    _assert_complete(fleet, job_id, 6)
    assert fleet.job(job_id).attempts == 2
    assert "lease lost" in fleet.log(frozen)
    assert "resuming lenet from epoch" in fleet.log(other)
    # The thawed worker is healthy again and takes new work.
    second = fleet.submit({**_quick_job()})
    fleet.wait_for("the next job", lambda: fleet.job(second).status == "succeeded")
    print(f"\nSIGSTOP/SIGCONT [{fleet.engine.dialect.name}]: jobs=2 stops=1 "
          f"epochs={len(fleet.epochs(job_id))}/6 lost=0 duplicated=0")  # fmt: skip


def test_job_that_crashes_every_time_fails_after_max_attempts(fleet: Fleet) -> None:
    fleet.start_worker("w1", {"TRAINSERVE_FAILPOINT": "job-process-crash"})
    started = time.monotonic()
    job_id = fleet.submit(_quick_job(), max_attempts=3)
    fleet.wait_for("the job to fail", lambda: fleet.job(job_id).status == "failed", timeout=90)
    elapsed = time.monotonic() - started
    job = fleet.job(job_id)
    assert job.attempts == 3
    assert "crashed with exit code 70" in job.error and "gave up after 3 attempts" in job.error
    # Backoff of attempts x 1 s between runs: 1 s + 2 s at least, so no hot loop.
    assert elapsed >= 3.0
    assert fleet.log("w1").count(f"job {job_id} attempt") == 3
    print(f"\ncrash every time [{fleet.engine.dialect.name}]: attempts={job.attempts} "
          f"elapsed={elapsed:.1f}s (backoff >= 3 s)")  # fmt: skip


def _quick_job() -> dict:
    return {"model": "softmax", "dataset": "synthetic", "epochs": 1, "batch_size": 64,
            "lr": 0.1, "optimizer": "sgd", "seed": 1}  # fmt: skip
