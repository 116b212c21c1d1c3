"""Claimer processes for the claim-storm test: the real claim, and a naive one as a control."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import OperationalError

from service import queue
from service.db import make_engine
from service.tables import JobStatus

JOBS = queue.JOBS


def naive_claim(engine: Engine, owner: str) -> int | None:
    """Read the next queued job, then mark it running: no lock, no SKIP LOCKED, no re-check."""
    with engine.connect() as conn:
        row = conn.execute(
            select(JOBS.c.id)
            .where(JOBS.c.status == JobStatus.QUEUED.value)
            .order_by(JOBS.c.priority.desc(), JOBS.c.created_at, JOBS.c.id)
            .limit(1)
        ).first()
        conn.commit()
    if row is None:
        return None
    time.sleep(0.002)  # the gap between read and write that a real claim must not have
    with engine.connect() as conn:
        conn.execute(
            update(JOBS)
            .where(JOBS.c.id == row.id)
            .values(status=JobStatus.RUNNING.value, lease_owner=owner, attempts=JOBS.c.attempts + 1)
        )
        conn.commit()
    return int(row.id)


def claim_until_empty(database_url: str, owner: str, out: str, naive: bool) -> None:
    """Claim jobs until none is left and finish each; record every claimed id, one a line."""
    engine = make_engine(database_url)
    claimed: list[int] = []
    idle_since: float | None = None
    while True:
        try:
            if naive:
                job_id = naive_claim(engine, owner)
            else:
                job = queue.claim_next_job(engine, owner, lease_seconds=60)
                job_id = None if job is None else job.id
                if job is not None:
                    queue.finish_job(engine, job.id, job.token, JobStatus.SUCCEEDED)
        except OperationalError:
            continue  # the naive claim on SQLite: a busy snapshot; try again
        if job_id is None:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 0.5:
                break
            continue
        idle_since = None
        claimed.append(job_id)
    Path(out).write_text("\n".join(map(str, claimed)))
    engine.dispose()
