"""Riding out a database outage (a restart, a failover) in a worker and in a job's process.

A worker retries each write for as long as its lease could still be valid. Past that the write
is moot: another worker may own the job by then, and the job is requeued like any run whose
worker stopped responding (attempt + 1, resumed from its checkpoint). An outage is never a
training failure: ``DatabaseUnavailable`` says so, and ``is_database_error`` keeps a job's
catch-all from reporting one as a crash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a lost or refused connection raises: the server is down or restarting, the network is
# away, the pool has no connection to give. Not IntegrityError or ProgrammingError: those are
# bugs, and retrying them would only hide them.
_UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)


class DatabaseUnavailable(Exception):
    """The database stayed unreachable for as long as the lease could still be ours: the
    caller writes nothing more and leaves the job to lapse and be requeued."""


def is_database_error(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from or while handling, says the database
    could not be reached (rather than the training going wrong)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DatabaseUnavailable) or _retryable(current):
            return True
        todo += [current.__cause__, current.__context__]
    return False


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _UNREACHABLE) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


class DatabaseRetry:
    """Call a database function, retrying while the database is unreachable for at most
    `patience_seconds` (the lease: after that the lease may be another worker's); then raise
    DatabaseUnavailable, chained to the last error. With `give_up`, also raise it as soon as
    give_up() is true after a failed try (the job was asked to stop meanwhile). The function
    is always tried once, whatever the patience."""

    def __init__(
        self,
        patience_seconds: float,
        *,
        give_up: Callable[[], bool] | None = None,
        max_delay: float = 2.0,
    ) -> None:
        self.patience_seconds = patience_seconds
        self.give_up = give_up
        self.max_delay = max_delay

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        deadline = time.monotonic() + self.patience_seconds
        delay = min(0.2, self.max_delay)
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not _retryable(exc):
                    raise
                if time.monotonic() + delay > deadline or (self.give_up and self.give_up()):
                    raise DatabaseUnavailable(
                        f"the database was unreachable for as long as the lease could be ours "
                        f"({self.patience_seconds:.1f}s): {brief(exc)}"
                    ) from exc
                log.warning("database unavailable (%s); retrying in %.1fs", brief(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_delay)


def brief(exc: BaseException) -> str:
    """The driver's message, first line: without SQLAlchemy's SQL and background link (a
    warning per retry during an outage, not a traceback each)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["DatabaseRetry", "DatabaseUnavailable", "brief", "is_database_error"]
