"""The work loop: reap lapsed leases, claim the next job, train it, record the outcome."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from multiprocessing.process import BaseProcess

from service import queue
from service.artifacts import checkpoint_path, local_checkpoint_job_ids, remove_checkpoint
from service.config import Settings
from service.db import make_engine, shown_url
from service.reaping import reap_expired_leases
from service.tables import JobStatus
from service.worker.cancelled import diagnosis_so_far
from service.worker.child import KEEP_AND_STOP_SIGNAL
from service.worker.execute import Outcome
from service.worker.lease import LeaseKeeper
from service.worker.pool import WAKE_SIGNAL
from service.worker.retry import DatabaseRetry, DatabaseUnavailable, brief, is_database_error
from service.worker.standby import Standby

log = logging.getLogger(__name__)
KILL_GRACE_SECONDS = 30.0  # after SIGTERM a job stops at its next batch; then SIGKILL


class Worker:
    """One worker on one device; each job runs in a process of its own. The first SIGTERM or
    SIGINT requeues the current job (it resumes from its last checkpoint) and exits; a second
    one exits at once."""

    def __init__(self, settings: Settings, *, device: str = "cpu", name: str | None = None) -> None:
        self.settings = settings
        self.device = device
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.engine = make_engine(settings.resolved_database_url)
        self.artifact_dir = settings.resolved_artifact_dir
        self.stopping = threading.Event()
        self.woken = threading.Event()  # a job was queued (pool.WAKE_SIGNAL), or we stop
        self._parent_pid: int | None = None
        self._standby: Standby | None = None  # the next job's process, warming up

    # --- lifecycle ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: object) -> None:
            if self.stopping.is_set():
                log.warning("worker %s: second signal, exiting now", self.name)
                os._exit(128 + signum)
            log.info("worker %s: stopping (a running job is requeued first)", self.name)
            self.stopping.set()
            self.woken.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        signal.signal(WAKE_SIGNAL, lambda *_: self.woken.set())

    def exit_with_parent(self, parent_pid: int) -> None:
        """Stop when the process that started us is gone (e.g. `serve` killed with -9)."""
        self._parent_pid = parent_pid

    def _parent_gone(self) -> bool:
        return self._parent_pid is not None and os.getppid() != self._parent_pid

    def run(self, *, max_jobs: int | None = None) -> None:
        log.info("worker %s on %s: polling %s", self.name, self.device, shown_url(self.engine.url))
        self._drop_stale_checkpoints()
        done = 0
        try:
            while not self.stopping.is_set():
                if self._parent_gone():
                    log.warning("worker %s: parent process is gone; exiting", self.name)
                    break
                if self._standby is None:
                    self._standby = Standby(self._settings_data(), self.device)
                try:
                    if not self._poll_once():
                        continue
                except Exception as exc:
                    if not is_database_error(exc):
                        raise
                    # A transient outage never ends the worker: its job (if any) is requeued
                    # when the lease lapses; look for work again once the database is back.
                    self._log_database_error(exc)
                    self.stopping.wait(max(self.settings.poll_seconds, 2.0))
                    continue
                done += 1
                if max_jobs is not None and done >= max_jobs:
                    break
        finally:
            if self._standby is not None:
                self._standby.close()
                self._standby = None
            self.engine.dispose()

    def _drop_stale_checkpoints(self) -> None:
        """Delete the checkpoints in this artifact directory of jobs that have ended: a job
        killed here and finished on another machine left its own behind (up to 170 MB each),
        which nothing else removes. Only here: the shared copy is its finisher's to delete."""
        try:
            here = local_checkpoint_job_ids(self.artifact_dir)
            alive = queue.unfinished_job_ids(self.engine, here)
        except Exception as exc:  # the database is away: another start will do it
            log.warning("worker %s: stale checkpoints not checked: %s", self.name, brief(exc))
            return
        for job_id in here:
            if job_id not in alive:
                checkpoint_path(self.artifact_dir, job_id).unlink(missing_ok=True)
                log.info("worker %s: removed the checkpoint of ended job %s", self.name, job_id)

    def _poll_once(self) -> bool:
        """Claim and run one job; False when there was none (or the database is away)."""
        try:
            reap_expired_leases(self.engine, self.artifact_dir, self.settings.retry_backoff_seconds)
            claimed = queue.claim_next_job(self.engine, self.name, self.settings.lease_seconds)
        except Exception as exc:  # database unreachable: wait and retry, never crash the loop
            self._log_database_error(exc)
            self.stopping.wait(max(self.settings.poll_seconds, 2.0))
            return False
        if claimed is None:
            self._wait_for_work()
            return False
        self.run_job(claimed)
        return True

    def _wait_for_work(self) -> None:
        """Until the next poll, or sooner when woken (a job was queued) or stopped."""
        if not self.stopping.is_set():
            self.woken.wait(self.settings.poll_seconds)
        self.woken.clear()

    def _log_database_error(self, exc: Exception) -> None:
        if is_database_error(exc):  # one line per try during an outage, not a traceback
            log.warning("worker %s: database unavailable (%s); retrying", self.name, brief(exc))
        else:
            log.warning("worker %s: database error; retrying", self.name, exc_info=True)

    def _settings_data(self) -> dict:
        return self.settings.model_dump(mode="json") | {
            "database_url": self.settings.resolved_database_url,
            "artifact_dir": str(self.artifact_dir),
        }

    def _job_process(self, claimed: queue.ClaimedJob) -> BaseProcess:
        """The waiting standby, given this job; a fresh one if it died in the meantime."""
        standby, self._standby = self._standby, None
        process = None
        if standby is not None:
            process = standby.start_job(claimed.id, claimed.token, claimed.config)
        if process is None:
            standby = Standby(self._settings_data(), self.device)
            process = standby.start_job(claimed.id, claimed.token, claimed.config)
        if process is None:
            raise RuntimeError("the job process died before it was given its job")
        return process

    def _warm_next_if_queued(self) -> None:
        """With more jobs waiting, warm the next job's process while this one runs, so that
        queued jobs start at once. Without, wait until this job ends: on a CPU the warm-up
        would take cores from the running job."""
        try:
            waiting = queue.has_queued_jobs(self.engine)
        except Exception:  # the database is away: warm up after the job, as without a queue
            log.debug("worker %s: could not look at the queue", self.name, exc_info=True)
            return
        if waiting:
            self._standby = Standby(self._settings_data(), self.device)

    # --- one job -----------------------------------------------------------------------------

    def run_job(self, claimed: queue.ClaimedJob) -> None:
        """Train the job in a child process while this process keeps its lease alive."""
        job_id, token = claimed.id, claimed.token
        log.info("worker %s: job %s attempt %s", self.name, job_id, claimed.attempt)
        keeper = LeaseKeeper(
            self.engine,
            job_id,
            token,
            lease_seconds=self.settings.lease_seconds,
            heartbeat_seconds=self.settings.heartbeat_seconds,
            check_seconds=self.settings.cancel_check_seconds,
        )
        keeper.start()
        try:
            process = self._job_process(claimed)
            self._warm_next_if_queued()
            self._supervise(process, keeper)
        finally:
            keeper.stop()
        self._settle(claimed, process.exitcode, keeper)

    def _supervise(self, process: BaseProcess, keeper: LeaseKeeper) -> None:
        """Wait for the job process; on cancel, lost lease or shutdown: SIGTERM, then SIGKILL."""
        asked_at: float | None = None
        while process.is_alive():
            process.join(timeout=0.2)
            stop = (
                keeper.cancelled.is_set()
                or keeper.lost.is_set()
                or self.stopping.is_set()
                or self._parent_gone()
            )
            if stop and asked_at is None:
                asked_at = time.monotonic()
                if keeper.cancelled.is_set() or keeper.lost.is_set():
                    process.terminate()  # SIGTERM: stop between two batches
                else:  # shutdown: requeued, so the job keeps what it has trained
                    os.kill(process.pid, KEEP_AND_STOP_SIGNAL)  # type: ignore[arg-type]
            elif asked_at is not None and time.monotonic() - asked_at > KILL_GRACE_SECONDS:
                log.warning("job process %s ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.join()

    def _settle(self, claimed: queue.ClaimedJob, exitcode: int | None, keeper: LeaseKeeper) -> None:
        """Write what the job process could not: cancelled, requeued, or crashed. Each write is
        retried while the database is unreachable, for as long as the lease could still be
        ours; past that nothing is written and the job is requeued when its lease lapses."""
        job_id = claimed.id
        if exitcode == Outcome.FINISHED:
            return
        if exitcode == Outcome.DATABASE_LOST:
            log.warning(
                "job %s: the database stayed unreachable past the lease; its process stopped "
                "without writing, and the job is requeued when its lease lapses",
                job_id,
            )
            return
        if exitcode == Outcome.LEASE_LOST or keeper.lost.is_set():
            log.warning("job %s: lease lost; its process stopped without writing", job_id)
            return
        try:
            self._write_settlement(claimed, exitcode, keeper)
        except DatabaseUnavailable as exc:
            log.warning(
                "job %s: %s; nothing written: the job is requeued when its lease lapses",
                job_id,
                exc,
            )

    def _write_settlement(
        self, claimed: queue.ClaimedJob, exitcode: int | None, keeper: LeaseKeeper
    ) -> None:
        job_id, token = claimed.id, claimed.token
        retry = DatabaseRetry(patience_seconds=keeper.seconds_left())
        if keeper.cancelled.is_set():
            diagnosis = self._diagnosis_so_far(claimed)
            if retry(
                queue.finish_job,
                self.engine,
                job_id,
                token,
                JobStatus.CANCELLED,
                error="cancelled by request",
                result={"diagnosis": diagnosis} if diagnosis else None,
            ):
                remove_checkpoint(self.artifact_dir, job_id)
        elif exitcode == Outcome.STOPPED or self.stopping.is_set() or self._parent_gone():
            status = retry(queue.release_job, self.engine, job_id, token)
            if status == JobStatus.QUEUED.value:  # resumes from its checkpoint
                log.info("worker %s: job %s requeued for shutdown", self.name, job_id)
            elif status is not None:  # a cancel it had not seen yet: nothing will resume it
                remove_checkpoint(self.artifact_dir, job_id)
        else:
            reason = _describe_exit(exitcode)
            log.error("job %s: %s", job_id, reason)
            status = retry(
                queue.requeue_or_fail,
                self.engine,
                job_id,
                token,
                f"the training process {reason}",
                backoff_seconds=self.settings.retry_backoff_seconds,
            )
            if status not in (None, JobStatus.QUEUED.value):  # failed or cancelled for good
                remove_checkpoint(self.artifact_dir, job_id)

    def _diagnosis_so_far(self, claimed: queue.ClaimedJob) -> dict | None:
        # Never in the way of the cancel itself: without the curves (the database is down, a
        # row is odd), the job is cancelled without a diagnosis.
        try:
            return diagnosis_so_far(self.engine, claimed.id, claimed.config)
        except Exception as exc:
            log.warning("job %s: no diagnosis of its epochs so far: %s", claimed.id, brief(exc))
            return None


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"crashed with exit code {exitcode}"
