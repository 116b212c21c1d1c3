"""The API's own reaper of lapsed leases.

Workers reap before each claim, so only an idle worker does: while every worker is busy with
a long job, a dead worker's job stayed `running` long after its lease lapsed (53 s in a probe),
and with `serve --workers 0` and no worker alive, for ever, even one out of attempts that
should show `failed`. The API reaps on a timer too: the same statement as the workers', so
the job's status is honest whoever runs it.
"""

from __future__ import annotations

import asyncio
import logging

import anyio
from sqlalchemy import Engine

from service import artifacts, queue
from service.config import Settings

log = logging.getLogger(__name__)


def reap_period(settings: Settings) -> float:
    """Half a lease, from 1 to 15 s: a lapsed lease is seen within about that."""
    return min(max(settings.lease_seconds / 2, 1.0), 15.0)


def reap_once(engine: Engine, settings: Settings) -> int:
    """Requeue (or end) the jobs whose lease lapsed; remove the checkpoints of those it ended."""
    ended: list[int] = []
    count = queue.requeue_expired_leases(
        engine, backoff_seconds=settings.retry_backoff_seconds, ended=ended
    )
    for job_id in ended:  # failed or cancelled: nothing will resume them
        artifacts.remove_checkpoint(settings.resolved_artifact_dir, job_id)
    if count:
        log.info("requeued or ended %d job(s) whose worker stopped renewing its lease", count)
    return count


async def reap_forever(engine: Engine, settings: Settings) -> None:
    """reap_once every reap_period, off the event loop, until cancelled."""
    while True:
        await asyncio.sleep(reap_period(settings))
        try:
            await anyio.to_thread.run_sync(reap_once, engine, settings)
        except Exception as exc:  # the database may be away: /health says so; try again later
            log.debug("lease reaper: %s", exc)
