"""The work loop: reap lapsed leases, claim the next job, train it, record the outcome."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import traceback
import uuid
from pathlib import Path

from service import queue
from service.artifacts import ModelDescription, checkpoint_path, save_trained_model
from service.config import Settings
from service.db import make_engine
from service.tables import JobStatus
from service.training.config import TrainConfig
from service.training.data import DatasetError
from service.training.loop import EpochMetrics, TrainingCancelled, TrainingDiverged, train

log = logging.getLogger(__name__)


class Worker:
    """One worker on one device. The first SIGTERM/SIGINT requeues the current job and exits;
    a second one exits at once."""

    def __init__(self, settings: Settings, *, device: str = "cpu", name: str | None = None) -> None:
        self.settings = settings
        self.device = device
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.engine = make_engine(settings.resolved_database_url)
        self.artifact_dir = settings.resolved_artifact_dir
        self.stopping = threading.Event()
        self._parent_pid: int | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: object) -> None:
            if self.stopping.is_set():
                log.warning("worker %s: second signal, exiting now", self.name)
                os._exit(128 + signum)
            log.info("worker %s: stopping after the current job is requeued", self.name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def exit_with_parent(self, parent_pid: int) -> None:
        """Stop when the process that started us is gone (e.g. `serve` killed with -9)."""
        self._parent_pid = parent_pid

    def _parent_gone(self) -> bool:
        return self._parent_pid is not None and os.getppid() != self._parent_pid

    def run(self, *, max_jobs: int | None = None) -> None:
        log.info("worker %s on %s: polling %s", self.name, self.device, self.engine.url)
        done = 0
        while not self.stopping.is_set():
            if self._parent_gone():
                log.warning("worker %s: parent process is gone; exiting", self.name)
                break
            try:
                queue.requeue_expired_leases(self.engine)
                claimed = queue.claim_next_job(self.engine, self.name, self.settings.lease_seconds)
            except Exception:  # database unreachable: wait and retry, never crash the loop
                log.warning("worker %s: database error; retrying", self.name, exc_info=True)
                self.stopping.wait(max(self.settings.poll_seconds, 2.0))
                continue
            if claimed is None:
                self.stopping.wait(self.settings.poll_seconds)
                continue
            self.run_job(claimed)
            done += 1
            if max_jobs is not None and done >= max_jobs:
                break
        self.engine.dispose()

    # --- one job -----------------------------------------------------------------------------

    def run_job(self, claimed: queue.ClaimedJob) -> None:
        job_id, token = claimed.id, claimed.token
        log.info("worker %s: job %s attempt %s", self.name, job_id, claimed.attempt)
        from service.worker.lease import LeaseKeeper

        keeper = LeaseKeeper(
            self.engine,
            job_id,
            token,
            lease_seconds=self.settings.lease_seconds,
            heartbeat_seconds=self.settings.heartbeat_seconds,
            check_seconds=self.settings.cancel_check_seconds,
        )
        keeper.start()
        ckpt = checkpoint_path(self.artifact_dir, job_id)

        def on_epoch(metrics: EpochMetrics) -> None:
            if not queue.record_epoch(self.engine, job_id, token, metrics.to_dict()):
                keeper.lost.set()

        def should_stop() -> bool:
            return (
                keeper.cancelled.is_set()
                or keeper.lost.is_set()
                or self.stopping.is_set()
                or self._parent_gone()
            )

        try:
            config = TrainConfig.from_dict(claimed.config)
            result = train(
                config,
                device=self.device,
                data_dir=self.settings.data_dir,
                on_epoch=on_epoch,
                should_stop=should_stop,
                checkpoint_path=ckpt,
            )
        except TrainingCancelled:
            if keeper.lost.is_set():
                pass  # another worker owns the job now; write nothing
            elif keeper.cancelled.is_set():
                self._finish(job_id, token, JobStatus.CANCELLED, error="cancelled by request")
                _remove(ckpt)
            else:  # shutting down: the checkpoint lets the next worker resume
                queue.release_job(self.engine, job_id, token)
                log.info("worker %s: job %s requeued for shutdown", self.name, job_id)
        except (TrainingDiverged, DatasetError, ValueError) as exc:
            self._finish(job_id, token, JobStatus.FAILED, error=str(exc))
            _remove(ckpt)
        except Exception as exc:
            log.exception("job %s failed", job_id)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self._finish(job_id, token, JobStatus.FAILED, error=f"training crashed: {detail}")
            _remove(ckpt)
        else:
            description = ModelDescription(
                job_id=job_id,
                model=config.model,
                model_kwargs=result.model_kwargs,
                input_side=result.input_side,
                class_names=list(result.class_names),
                config=config.to_dict(),
                metrics=result.metrics(),
            )
            save_trained_model(self.artifact_dir, description, result.model)
            if self._finish(job_id, token, JobStatus.SUCCEEDED, final_metrics=result.metrics()):
                _remove(ckpt)
        finally:
            keeper.stop()

    def _finish(self, job_id: int, token: str, status: JobStatus, **kwargs: object) -> bool:
        ok = queue.finish_job(self.engine, job_id, token, status, **kwargs)  # type: ignore[arg-type]
        if not ok:
            log.warning("job %s: lease lost before it could be marked %s", job_id, status.value)
        return ok


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
