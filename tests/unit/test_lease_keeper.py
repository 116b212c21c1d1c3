"""The lease keeper renews on schedule, whatever the cancel check's period, and paces its
retries while the database is down."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy.exc import OperationalError

from service import queue
from service.worker.lease import LeaseKeeper


def _run_keeper(
    monkeypatch: pytest.MonkeyPatch,
    beat: Callable[..., queue.Heartbeat],
    check: Callable[..., queue.Heartbeat],
    *,
    heartbeat_seconds: float,
    check_seconds: float,
    for_seconds: float,
) -> LeaseKeeper:
    """A lease keeper run for ``for_seconds`` with ``beat`` and ``check`` as the queue's
    heartbeat and cancel_requested; stopped when this returns."""
    monkeypatch.setattr(queue, "heartbeat", beat)
    monkeypatch.setattr(queue, "cancel_requested", check)
    keeper = LeaseKeeper(
        None,  # type: ignore[arg-type]  # the queue's functions are replaced above
        1,
        "token",
        lease_seconds=heartbeat_seconds + 0.1,
        heartbeat_seconds=heartbeat_seconds,
        check_seconds=check_seconds,
    )
    keeper.start()
    time.sleep(for_seconds)
    keeper.stop()
    return keeper


def test_heartbeats_come_every_heartbeat_seconds_not_at_the_next_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Check 0.3 s, heartbeat 0.4 s: beating on the first check past 0.4 s renewed every 0.6 s,
    after a 0.5-s lease had lapsed (the probe's 3/4/5 s, scaled down)."""
    beats: list[float] = []
    checks: list[float] = []

    def heartbeat(*_: object) -> queue.Heartbeat:
        beats.append(time.monotonic())
        return queue.Heartbeat(lease_held=True, cancel_requested=False)

    def cancel_requested(*_: object) -> queue.Heartbeat:
        checks.append(time.monotonic())
        return queue.Heartbeat(lease_held=True, cancel_requested=False)

    keeper = _run_keeper(
        monkeypatch, heartbeat, cancel_requested,
        heartbeat_seconds=0.4, check_seconds=0.3, for_seconds=2.1,
    )  # fmt: skip
    gaps = [b - a for a, b in zip(beats, beats[1:], strict=False)]
    assert len(beats) >= 4 and max(gaps) < 0.5, gaps  # within the 0.5-s lease
    assert checks and keeper.seconds_left() > 0


def test_a_failing_database_is_retried_every_check_not_in_a_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []

    def down(*_: object) -> queue.Heartbeat:
        calls.append(time.monotonic())
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    keeper = _run_keeper(
        monkeypatch, down, down, heartbeat_seconds=0.2, check_seconds=0.2, for_seconds=1.0
    )
    assert 3 <= len(calls) <= 7, len(calls)  # about one per 0.2 s, not thousands
    assert not keeper.lost.is_set()
