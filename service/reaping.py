"""Lapsed leases, for whoever looks (an idle worker before each claim, the API on a timer):
requeue their jobs, or end them, and delete the checkpoints of the jobs that ended."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine

from service import artifacts, queue

log = logging.getLogger(__name__)


def reap_expired_leases(engine: Engine, artifact_dir: Path, backoff_seconds: float) -> int:
    """Requeue (or end) the jobs whose lease lapsed; how many. A job this failed or cancelled
    will never resume: its checkpoint goes (VGG's is 170 MB)."""
    ended: list[int] = []
    count = queue.requeue_expired_leases(engine, backoff_seconds=backoff_seconds, ended=ended)
    for job_id in ended:
        artifacts.remove_checkpoint(artifact_dir, job_id)
    if count:
        log.info("requeued or ended %d job(s) whose worker stopped renewing its lease", count)
    return count
