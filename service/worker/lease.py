"""A background thread that keeps a claimed job's lease alive and watches its cancel flag."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine

from service import queue
from service.worker.retry import brief, is_database_error

log = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    """Heartbeats every `heartbeat_seconds`; reads the cancel flag every `check_seconds`.

    Training only reads the two events, so checking for cancellation costs it nothing.
    """

    def __init__(
        self,
        engine: Engine,
        job_id: int,
        token: str,
        *,
        lease_seconds: float,
        heartbeat_seconds: float,
        check_seconds: float,
    ) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.engine, self.job_id, self.token = engine, job_id, token
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.check_seconds = min(check_seconds, heartbeat_seconds)
        self.cancelled = threading.Event()  # the user asked to cancel
        self.lost = threading.Event()  # the lease is no longer ours: stop, write nothing
        self._done = threading.Event()
        # When the lease was last set: at the claim (just before this keeper is made), then at
        # every heartbeat that got through.
        self.renewed_at = time.monotonic()

    def seconds_left(self) -> float:
        """How much longer the lease could still be ours (0 once it may have lapsed): how long
        a write on the job's behalf is worth retrying while the database is unreachable."""
        return max(0.0, self.renewed_at + self.lease_seconds - time.monotonic())

    def run(self) -> None:
        # Each wait ends at the next heartbeat or check, whichever is due first. Ticking every
        # check_seconds and beating on the first tick past heartbeat_seconds renewed late: with
        # check 3 s and heartbeat 4 s, every 6 s, after a 5-s lease had lapsed.
        last_beat = last_check = time.monotonic()
        not_before = 0.0  # after a failed call: the next try waits check_seconds
        while True:
            due_beat = last_beat + self.heartbeat_seconds
            due = max(min(due_beat, last_check + self.check_seconds), not_before)
            if self._done.wait(max(0.0, due - time.monotonic())):
                return
            try:
                if time.monotonic() >= due_beat:
                    asked_at = time.monotonic()
                    state = queue.heartbeat(
                        self.engine, self.job_id, self.token, self.lease_seconds
                    )
                    last_beat = time.monotonic()
                    if state.lease_held:
                        self.renewed_at = asked_at
                else:
                    state = queue.cancel_requested(self.engine, self.job_id, self.token)
                last_check = time.monotonic()
            except Exception as exc:  # the database may be restarting: keep trying
                not_before = time.monotonic() + self.check_seconds
                if is_database_error(exc):
                    log.warning(
                        "job %s: heartbeat failed (%s); will retry", self.job_id, brief(exc)
                    )
                else:
                    log.warning("job %s: heartbeat failed; will retry", self.job_id, exc_info=True)
                continue
            if not state.lease_held:
                # Also what a job that has just finished looks like (its process cleared the
                # lease), so the worker, which knows how the process ended, does the logging.
                log.debug("job %s: lease no longer held", self.job_id)
                self.lost.set()
                return
            if state.cancel_requested:
                self.cancelled.set()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)
