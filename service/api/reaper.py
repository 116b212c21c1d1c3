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

from service.config import Settings
from service.reaping import reap_expired_leases

log = logging.getLogger(__name__)


def reap_period(settings: Settings) -> float:
    """Half a lease, from 1 to 15 s: a lapsed lease is seen within about that."""
    return min(max(settings.lease_seconds / 2, 1.0), 15.0)


async def reap_forever(engine: Engine, settings: Settings) -> None:
    """reap_expired_leases every reap_period, off the event loop, until cancelled."""
    while True:
        await asyncio.sleep(reap_period(settings))
        try:
            await anyio.to_thread.run_sync(
                reap_expired_leases,
                engine,
                settings.resolved_artifact_dir,
                settings.retry_backoff_seconds,
            )
        except Exception as exc:  # the database may be away: /health says so; try again later
            log.debug("lease reaper: %s", exc)
