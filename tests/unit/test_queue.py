"""The job queue (service/queue.py) on the real schema, on SQLite and on PostgreSQL.

Every test migrates a fresh database with the real Alembic migrations, then drives the
queue functions directly: submit, claim, leases, epochs, cancel, requeue, release, list.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service import queue
from service.cli import migrate
from service.config import Settings
from service.db import make_engine, make_session_factory
from service.queue import (
    RETRY_BACKOFF_MAX_SECONDS,
    RETRY_BACKOFF_SECONDS,
    IdempotencyKeyReused,
    JobFinished,
    JobNotFound,
    SweepFinished,
    SweepNotFound,
    cancel_job,
    cancel_requested,
    claim_next_job,
    db_now,
    finish_job,
    get_job,
    heartbeat,
    list_epoch_metrics,
    list_jobs,
    record_epoch,
    release_job,
    requeue_expired_leases,
    submit_job,
)
from service.schemas import _iso
from service.tables import EpochMetric, Job, JobStatus, Sweep

pytestmark = pytest.mark.timeout(60)

LONG_LEASE = 60.0
PAST = datetime(2000, 1, 1, tzinfo=UTC)
CONFIG: dict[str, Any] = {
    "model": "lenet",
    "epochs": 3,
    "lr": 0.05,
    "batch_size": 128,
    "augment": False,
    "layers": [6, 16],
    "optimizer": {"name": "sgd", "momentum": 0.9},
}


def epoch_metrics(epoch: int, scale: float = 1.0) -> dict[str, float]:
    return {
        "epoch": epoch,
        "train_loss": 1.0 * scale,
        "train_acc": 0.5 * scale,
        "val_loss": 1.1 * scale,
        "val_acc": 0.4 * scale,
        "examples_per_sec": 1000.0 * scale,
        "seconds": 2.0 * scale,
    }


def utc(value: datetime | str) -> datetime:
    """A database timestamp as an aware UTC datetime (SQLite hands back naive UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass
class Db:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    _extra: list[Engine] = field(default_factory=list)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def new_engine(self) -> Engine:
        """Another engine on the same database (as another worker process would have)."""
        engine = make_engine(self.url)
        self._extra.append(engine)
        return engine

    def submit(self, config: dict[str, Any] | None = None, **kwargs: Any) -> int:
        with self.sessions() as session:
            return submit_job(session, dict(config or CONFIG), **kwargs).id

    def job(self, job_id: int) -> Job:
        with self.sessions() as session:
            return get_job(session, job_id)

    def now(self) -> datetime:
        """The database clock (the one the queue uses)."""
        with self.engine.connect() as conn:
            return utc(conn.scalar(select(db_now(self.dialect))))

    def set(self, job_id: int, **values: Any) -> None:
        """A direct UPDATE, to put a job in a state without waiting for the clock."""
        with self.sessions() as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values))
            session.commit()

    def count_jobs(self) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.count()).select_from(Job)) or 0

    def metrics(self, job_id: int) -> list[EpochMetric]:
        with self.sessions() as session:
            return list(list_epoch_metrics(session, job_id))

    def dispose(self) -> None:
        for engine in self._extra:
            engine.dispose()
        self.engine.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Db]:
    """A freshly migrated database (real Alembic migrations) with an engine and sessions."""
    migrate(Settings(database_url=database_url))
    engine = make_engine(database_url)
    handle = Db(database_url, engine, make_session_factory(engine))
    try:
        yield handle
    finally:
        handle.dispose()


def claim(db: Db, owner: str = "w1", lease: float = LONG_LEASE) -> queue.ClaimedJob:
    claimed = claim_next_job(db.engine, owner, lease)
    assert claimed is not None
    return claimed


class Interleave:
    """Start `action` in another thread right after the next SELECT (or `after`) on `engine`.

    It gets up to `grace` seconds to finish before that transaction goes on to write. If
    the transaction holds a write lock (as it should on SQLite), the action waits for it
    instead, and runs once the transaction has committed. `result()` joins and returns it.
    """

    def __init__(
        self, engine: Engine, action: Callable[[], Any], grace: float = 1.0, after: str = "SELECT"
    ) -> None:
        self._after_verb = after
        self._action = action
        self._grace = grace
        self._fired = False
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        event.listen(engine, "after_cursor_execute", self._after)
        self._engine = engine

    def _run(self) -> None:
        try:
            self._value = self._action()
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self._error = exc
        finally:
            self._done.set()

    def _after(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not self._fired and statement.lstrip().upper().startswith(self._after_verb):
            self._fired = True
            self._thread.start()
            self._done.wait(self._grace)

    def result(self, timeout: float = 20.0) -> Any:
        event.remove(self._engine, "after_cursor_execute", self._after)
        assert self._fired, "the transaction never read"
        self._thread.join(timeout)
        assert self._done.is_set(), "the interleaved action did not finish"
        if self._error is not None:
            raise self._error
        return self._value


# --- submit ----------------------------------------------------------------------------------


def test_submit_creates_a_queued_job_and_config_round_trips(db: Db) -> None:
    with db.sessions() as session:
        job = submit_job(session, dict(CONFIG), priority=7, max_attempts=5)
    assert job.id is not None
    assert job.status == JobStatus.QUEUED.value
    assert job.attempts == 0

    fresh = db.job(job.id)  # read back through a new session
    assert fresh.status == "queued"
    assert fresh.config == CONFIG
    assert fresh.model == "lenet"
    assert fresh.priority == 7
    assert fresh.max_attempts == 5
    assert fresh.attempts == 0
    assert fresh.epochs_done == 0
    assert fresh.cancel_requested is False
    assert fresh.idempotency_key is None
    assert fresh.created_at is not None
    assert fresh.started_at is None and fresh.finished_at is None
    assert fresh.lease_token is None and fresh.lease_owner is None
    assert fresh.lease_expires_at is None and fresh.not_before is None
    assert fresh.error is None


def test_submit_after_a_read_in_the_same_session_while_others_write(db: Db) -> None:
    """The API reads (an uploaded dataset's kind) in the session it then submits with. On
    SQLite that read began a deferred transaction; once another connection has committed since,
    upgrading it to a writer failed at once with "database is locked" (a 500 to the user)."""
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0  # the read
        other = db.submit()  # a worker's write, committed after that read
        job = submit_job(session, dict(CONFIG))
        mine = job.id
        again = submit_job(session, dict(CONFIG))  # the session goes on working afterwards
    assert {db.job(mine).status, db.job(again.id).status} == {JobStatus.QUEUED.value}
    assert db.count_jobs() == 3 and len({other, mine, again.id}) == 3


def test_created_at_keeps_the_order_of_quick_submits(db: Db) -> None:
    """To the millisecond (SQLite's CURRENT_TIMESTAMP default had whole seconds)."""
    ids = [db.submit() for _ in range(3)]
    times = [utc(db.job(i).created_at) for i in ids]
    assert times == sorted(times)
    with db.engine.connect() as conn:
        raw = conn.scalar(text("SELECT created_at FROM jobs WHERE id = :id"), {"id": ids[0]})
    assert "." in str(raw)  # a fraction of a second is stored, on SQLite and PostgreSQL


def test_a_sweep_is_stamped_no_later_than_its_jobs(db: Db) -> None:
    with db.sessions() as session:
        sweep, jobs = queue.create_sweep(
            session, base={"model": "lenet"}, grid={"seed": [1, 2]}, configs=[CONFIG, CONFIG]
        )
        assert utc(sweep.created_at) <= min(utc(j.created_at) for j in jobs)
        raw = session.scalar(text("SELECT created_at FROM sweeps WHERE id = :id"), {"id": sweep.id})
    assert "." in str(raw)


def test_times_are_shown_in_one_shape() -> None:
    shown = _iso(datetime(2026, 11, 27, 8, 0, 0))  # naive: the database's UTC
    assert shown == "2026-11-27T08:00:00.000+00:00"
    assert _iso(datetime(2026, 11, 27, 8, 0, 0, 123456, tzinfo=UTC)) == (
        "2026-11-27T08:00:00.123+00:00"
    )


def test_get_job_unknown_raises_not_found(db: Db) -> None:
    with db.sessions() as session, pytest.raises(JobNotFound):
        get_job(session, 12345)


def test_idempotency_key_returns_the_first_job(db: Db) -> None:
    first = db.submit(idempotency_key="key-1")
    assert db.submit(idempotency_key="key-1") == first
    other = db.submit(idempotency_key="key-2")
    no_key_a = db.submit()
    no_key_b = db.submit()
    assert len({first, other, no_key_a, no_key_b}) == 4
    assert db.count_jobs() == 4


def test_idempotency_key_reused_for_another_request_is_refused(db: Db) -> None:
    first = db.submit({**CONFIG, "seed": 1}, idempotency_key="key-1")
    for config, priority in (({**CONFIG, "seed": 1, "epochs": 99}, 0), ({**CONFIG, "seed": 1}, 5)):
        with db.sessions() as session, pytest.raises(IdempotencyKeyReused) as refused:
            submit_job(session, config, priority=priority, idempotency_key="key-1")
        assert refused.value.created.id == first
    assert db.job(first).config["epochs"] == CONFIG["epochs"]  # nothing was applied
    # A seed the service drew for the retry is not part of the request.
    retry = {**CONFIG, "seed": 2}
    assert db.submit(retry, idempotency_key="key-1", drawn=frozenset({"seed"})) == first
    with db.sessions() as session, pytest.raises(IdempotencyKeyReused):
        submit_job(session, retry, idempotency_key="key-1")
    assert db.count_jobs() == 1


def test_idempotent_submit_when_another_request_inserts_first(db: Db) -> None:
    """Deterministic race: another request inserts the key between our lookup and insert."""
    other_engine = db.new_engine()
    other_sessions = make_session_factory(other_engine)

    def other_request() -> int:
        with other_sessions() as session:
            return submit_job(session, dict(CONFIG), idempotency_key="race").id

    other = Interleave(db.engine, other_request)
    with db.sessions() as session:
        job = submit_job(session, dict(CONFIG), idempotency_key="race")
    assert other.result() == job.id
    assert db.count_jobs() == 1


def test_concurrent_submits_with_one_key_create_one_job(db: Db) -> None:
    threads, rounds = 6, 8
    barrier = threading.Barrier(threads, timeout=20)
    engines = [db.new_engine() for _ in range(threads)]

    def submitter(engine: Engine) -> list[int]:
        sessions = make_session_factory(engine)
        ids = []
        try:
            for r in range(rounds):
                barrier.wait()
                with sessions() as session:
                    ids.append(submit_job(session, dict(CONFIG), idempotency_key=f"k{r}").id)
        except BaseException:
            barrier.abort()  # release the other threads at once
            raise
        return ids

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(submitter, engine) for engine in engines]
        errors: list[BaseException] = []
        results: list[list[int]] = []
        for future in futures:
            try:
                results.append(future.result(timeout=40))
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
    if errors:  # the first real error, not the barrier breaks it caused in other threads
        raise next(
            (e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0]
        )
    for r in range(rounds):
        assert len({ids[r] for ids in results}) == 1, f"key k{r} gave several jobs"
    assert db.count_jobs() == rounds


SWEEP_BASE: dict[str, Any] = {"model": "lenet", "epochs": 1}
SWEEP_GRID: dict[str, list[Any]] = {"lr": [0.1, 0.2]}


def create_keyed_sweep(
    session: Session, key: str | None, *, base: dict[str, Any] = SWEEP_BASE,
    grid: dict[str, list[Any]] = SWEEP_GRID,
) -> tuple[Sweep, list[Job]]:  # fmt: skip
    configs = [{**CONFIG, **base, "lr": lr} for lr in grid.get("lr", [0.1])]
    return queue.create_sweep(session, base=base, grid=grid, configs=configs, idempotency_key=key)


def test_sweep_idempotency_key_returns_the_first_sweep_and_its_jobs(db: Db) -> None:
    with db.sessions() as session:
        first, jobs = create_keyed_sweep(session, "sweep-1")
        ids = (first.id, [j.id for j in jobs])
    with db.sessions() as session:
        again, again_jobs = create_keyed_sweep(session, "sweep-1")
        assert (again.id, [j.id for j in again_jobs]) == ids
    with db.sessions() as session:
        other, _ = create_keyed_sweep(session, "sweep-2")
        unkeyed, _ = create_keyed_sweep(session, None)
    assert len({ids[0], other.id, unkeyed.id}) == 3
    assert db.count_jobs() == 6  # two per sweep: the retry queued none


def test_sweep_idempotency_key_reused_for_another_request_is_refused(db: Db) -> None:
    with db.sessions() as session:
        first, _ = create_keyed_sweep(session, "sweep-1")
    for changed in (
        {"base": {**SWEEP_BASE, "epochs": 2}},
        {"grid": {"lr": [0.1, 0.3]}},
        {"grid": {"lr": [0.2, 0.1]}},  # the same points in another order are other job ids
        {"base": {**SWEEP_BASE, "priority": 1}},
    ):
        with db.sessions() as session, pytest.raises(IdempotencyKeyReused) as refused:
            create_keyed_sweep(session, "sweep-1", **changed)
        assert refused.value.created.id == first.id
        assert f"created sweep {first.id}" in str(refused.value)
    with db.sessions() as session:
        count = session.scalar(select(func.count()).select_from(Sweep))
    assert count == 1 and db.count_jobs() == 2


def test_idempotent_sweep_when_another_request_inserts_first(db: Db) -> None:
    """Deterministic race: another request inserts the key between our lookup and insert."""
    other_sessions = make_session_factory(db.new_engine())

    def other_request() -> int:
        with other_sessions() as session:
            return create_keyed_sweep(session, "race")[0].id

    other = Interleave(db.engine, other_request)
    with db.sessions() as session:
        sweep, jobs = create_keyed_sweep(session, "race")
        assert {j.sweep_id for j in jobs} == {sweep.id}
    assert other.result() == sweep.id
    assert db.count_jobs() == 2


def write_at_once(db: Db, job_id: int) -> None:
    """Another connection writes the job's row without waiting (SQLite: takes the database's
    write lock; PostgreSQL: the row's lock), or the test fails fast."""
    if db.dialect == "sqlite":
        path = db.engine.url.database
        conn = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE jobs SET priority = priority WHERE id = ?", (job_id,))
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    with db.new_engine().connect() as pg:
        pg.exec_driver_sql("SET lock_timeout = '200ms'")
        pg.execute(update(Job).where(Job.id == job_id).values(priority=Job.priority))
        pg.rollback()


def test_answers_that_write_nothing_leave_no_write_lock_behind(db: Db) -> None:
    """A replayed key or a refused cancel must end its transaction before it returns: the API's
    session stays open until the response is built, and a burst of retries holding SQLite's
    write lock meanwhile deadlocked the thread pool (30 s per busy timeout)."""
    finished = db.submit()
    job_id = db.submit(idempotency_key="k")
    claimed = claim(db)
    assert claimed.id == finished  # the oldest: finishing it with another job's token did nothing
    assert finish_job(db.engine, finished, claimed.token, JobStatus.SUCCEEDED)
    done_sweep, _ = create_sweep_of(db, 2)
    with db.sessions() as session:
        queue.cancel_sweep(session, done_sweep)  # every job cancelled: nothing left to cancel
    calls: list[Callable[[Session], Any]] = [
        lambda s: submit_job(s, dict(CONFIG), idempotency_key="k"),
        lambda s: submit_job(s, {**CONFIG, "epochs": 9}, idempotency_key="k"),
        lambda s: create_keyed_sweep(s, "sweep-1"),
        lambda s: create_keyed_sweep(s, "sweep-1"),
        lambda s: create_keyed_sweep(s, "sweep-1", grid={"lr": [0.5]}),
        lambda s: cancel_job(s, finished),
        lambda s: cancel_job(s, 10_000),
        lambda s: queue.cancel_sweep(s, done_sweep),
        lambda s: queue.cancel_sweep(s, 10_000),
    ]
    refusals = (IdempotencyKeyReused, JobFinished, JobNotFound, SweepFinished, SweepNotFound)
    for call in calls:
        with db.sessions() as session:
            with contextlib.suppress(*refusals):
                call(session)
            write_at_once(db, job_id)  # while the session is still open


# --- claim -----------------------------------------------------------------------------------


def test_claim_returns_none_when_nothing_is_queued(db: Db) -> None:
    assert claim_next_job(db.engine, "w1", LONG_LEASE) is None
    job_id = db.submit()
    claimed = claim(db)
    assert claimed.id == job_id
    assert claim_next_job(db.engine, "w1", LONG_LEASE) is None  # only a running job left
    assert finish_job(db.engine, job_id, claimed.token, JobStatus.SUCCEEDED)
    assert claim_next_job(db.engine, "w1", LONG_LEASE) is None  # only a finished job left


def test_claim_order_priority_then_oldest(db: Db) -> None:
    a = db.submit(priority=0)
    b = db.submit(priority=5)
    c = db.submit(priority=5)
    d = db.submit(priority=0)
    e = db.submit(priority=-1)
    f = db.submit(priority=0)
    # d is the oldest of the priority-0 jobs although its id is higher than a's.
    db.set(d, created_at=PAST)
    # a and f share a created_at (older than b..e's): the lower id goes first.
    tie = datetime(2010, 1, 1, tzinfo=UTC)
    db.set(a, created_at=tie)
    db.set(f, created_at=tie)
    order = [claim(db).id for _ in range(6)]
    assert order == [b, c, d, a, f, e]
    assert claim_next_job(db.engine, "w1", LONG_LEASE) is None


def test_claimed_job_is_running_with_a_lease(db: Db) -> None:
    job_id = db.submit(priority=1)
    before = db.now()
    claimed = claim(db, owner="worker-a", lease=LONG_LEASE)
    assert claimed.id == job_id
    assert claimed.attempt == 1
    assert claimed.config == CONFIG
    assert claimed.token

    job = db.job(job_id)
    now = db.now()
    assert job.status == JobStatus.RUNNING.value
    assert job.attempts == 1
    assert job.lease_owner == "worker-a"
    assert job.lease_token == claimed.token
    assert job.started_at is not None
    assert before <= utc(job.started_at) <= now
    assert job.heartbeat_at is not None
    assert job.lease_expires_at is not None
    remaining = (utc(job.lease_expires_at) - now).total_seconds()
    assert LONG_LEASE - 10 < remaining <= LONG_LEASE + 1


def test_tokens_differ_between_claims(db: Db) -> None:
    db.submit()
    db.submit()
    assert claim(db).token != claim(db).token


def test_has_queued_jobs_sees_waiting_jobs_only(db: Db) -> None:
    assert not queue.has_queued_jobs(db.engine)
    db.submit()
    assert queue.has_queued_jobs(db.engine)
    claim(db)  # running now: nothing waits
    assert not queue.has_queued_jobs(db.engine)
    backing_off = db.submit()
    db.set(backing_off, not_before=datetime(2999, 1, 1, tzinfo=UTC))
    assert queue.has_queued_jobs(db.engine)  # it waits, only later


def test_concurrent_claims_take_every_job_exactly_once(db: Db) -> None:
    jobs, threads = 60, 6
    with db.sessions() as session:
        session.add_all(
            Job(status="queued", model="lenet", config=dict(CONFIG), priority=i % 3,
                attempts=0, max_attempts=3, epochs_done=0, cancel_requested=False)
            for i in range(jobs)
        )  # fmt: skip
        session.commit()
        all_ids = set(session.scalars(select(Job.id)))
    assert len(all_ids) == jobs
    engines = [db.new_engine() for _ in range(threads)]
    barrier = threading.Barrier(threads, timeout=20)

    def worker(n: int, engine: Engine) -> list[tuple[int, str]]:
        barrier.wait()
        got = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            claimed = claim_next_job(engine, f"w{n}", LONG_LEASE)
            if claimed is None:
                break
            got.append((claimed.id, claimed.token))
        return got

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(worker, n, engine) for n, engine in enumerate(engines)]
        results = [future.result(timeout=40) for future in futures]
    claimed_ids = [job_id for got in results for job_id, _ in got]
    assert len(claimed_ids) == len(set(claimed_ids)), "a job was claimed twice"
    assert set(claimed_ids) == all_ids, "a job was never claimed"
    with db.sessions() as session:
        rows = session.execute(select(Job.id, Job.status, Job.attempts, Job.lease_token)).all()
    tokens = {job_id: token for got in results for job_id, token in got}
    for row in rows:
        assert row.status == "running" and row.attempts == 1
        assert row.lease_token == tokens[row.id]  # the claim each worker saw is the one stored


# --- lease-conditional writes ----------------------------------------------------------------


def test_wrong_token_changes_nothing_and_right_token_works(db: Db) -> None:
    job_id = db.submit()
    claimed = claim(db, lease=LONG_LEASE)
    before = db.job(job_id)
    wrong = "0" * 32

    assert heartbeat(db.engine, job_id, wrong, 3600) == queue.Heartbeat(False, False)
    assert cancel_requested(db.engine, job_id, wrong) == queue.Heartbeat(False, False)
    assert record_epoch(db.engine, job_id, wrong, epoch_metrics(1)) is False
    assert finish_job(db.engine, job_id, wrong, JobStatus.SUCCEEDED) is False
    assert release_job(db.engine, job_id, wrong) is None
    # The right token on another job is wrong too.
    other = db.submit()
    assert heartbeat(db.engine, other, claimed.token, 3600).lease_held is False
    assert finish_job(db.engine, other, claimed.token, JobStatus.FAILED) is False

    after = db.job(job_id)
    for column in ("status", "attempts", "epochs_done", "lease_token", "lease_expires_at",
                   "heartbeat_at", "finished_at", "error"):  # fmt: skip
        assert getattr(after, column) == getattr(before, column), column
    assert db.metrics(job_id) == []
    assert db.job(other).status == "queued"

    # The right token works.
    beat = heartbeat(db.engine, job_id, claimed.token, 3600)
    assert beat == queue.Heartbeat(lease_held=True, cancel_requested=False)
    assert cancel_requested(db.engine, job_id, claimed.token) == queue.Heartbeat(True, False)
    extended = db.job(job_id)
    assert (utc(extended.lease_expires_at) - db.now()).total_seconds() > 3000
    assert record_epoch(db.engine, job_id, claimed.token, epoch_metrics(1)) is True
    final = {"train_loss": 0.3, "train_acc": 0.9, "val_loss": 0.35, "val_acc": 0.88,
             "test_loss": 0.4, "test_acc": 0.87}  # fmt: skip
    assert finish_job(db.engine, job_id, claimed.token, JobStatus.SUCCEEDED, final_metrics=final)

    done = db.job(job_id)
    assert done.status == "succeeded"
    assert done.finished_at is not None
    assert done.lease_token is None and done.lease_owner is None
    assert done.lease_expires_at is None
    assert done.epochs_done == 1
    for key, value in final.items():
        assert getattr(done, key) == pytest.approx(value)

    # After finishing, the token is dead.
    assert heartbeat(db.engine, job_id, claimed.token, 60).lease_held is False
    assert cancel_requested(db.engine, job_id, claimed.token).lease_held is False
    assert record_epoch(db.engine, job_id, claimed.token, epoch_metrics(2)) is False
    assert finish_job(db.engine, job_id, claimed.token, JobStatus.FAILED, error="x") is False
    assert release_job(db.engine, job_id, claimed.token) is None
    still = db.job(job_id)
    assert still.status == "succeeded" and still.error is None and still.epochs_done == 1
    assert [m.epoch for m in db.metrics(job_id)] == [1]


def test_finish_failed_records_the_error(db: Db) -> None:
    job_id = db.submit()
    claimed = claim(db)
    assert finish_job(db.engine, job_id, claimed.token, JobStatus.FAILED, error="CUDA OOM")
    job = db.job(job_id)
    assert job.status == "failed" and job.error == "CUDA OOM" and job.finished_at is not None


def test_record_epoch_is_idempotent_per_epoch(db: Db) -> None:
    job_id = db.submit()
    claimed = claim(db)
    assert record_epoch(db.engine, job_id, claimed.token, epoch_metrics(1, scale=1.0))
    assert record_epoch(db.engine, job_id, claimed.token, epoch_metrics(1, scale=2.0))
    rows = db.metrics(job_id)
    assert len(rows) == 1
    latest = epoch_metrics(1, scale=2.0)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "examples_per_sec", "seconds"):
        assert getattr(rows[0], key) == pytest.approx(latest[key]), key
    assert db.job(job_id).epochs_done == 1

    assert record_epoch(db.engine, job_id, claimed.token, epoch_metrics(2))
    assert [m.epoch for m in db.metrics(job_id)] == [1, 2]
    assert db.job(job_id).epochs_done == 2


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_queued_job_is_immediate(db: Db) -> None:
    job_id = db.submit()
    with db.sessions() as session:
        job = cancel_job(session, job_id)
    assert job.status == "cancelled"
    assert job.finished_at is not None
    assert job.cancel_requested is True
    assert db.job(job_id).status == "cancelled"
    assert claim_next_job(db.engine, "w1", LONG_LEASE) is None  # never runs


def test_cancel_running_job_flags_it_for_its_worker(db: Db) -> None:
    job_id = db.submit()
    claimed = claim(db)
    with db.sessions() as session:
        job = cancel_job(session, job_id)
    assert job.status == "running"
    assert job.cancel_requested is True
    assert job.finished_at is None
    assert heartbeat(db.engine, job_id, claimed.token, LONG_LEASE) == queue.Heartbeat(True, True)
    assert cancel_requested(db.engine, job_id, claimed.token) == queue.Heartbeat(True, True)
    # Asking twice is harmless while it runs.
    with db.sessions() as session:
        assert cancel_job(session, job_id).status == "running"
    assert finish_job(db.engine, job_id, claimed.token, JobStatus.CANCELLED, error="cancelled")
    assert db.job(job_id).status == "cancelled"


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_cancel_finished_job_raises(db: Db, final: JobStatus) -> None:
    job_id = db.submit()
    claimed = claim(db)
    assert finish_job(db.engine, job_id, claimed.token, final)
    with db.sessions() as session, pytest.raises(JobFinished) as info:
        cancel_job(session, job_id)
    assert info.value.job.id == job_id
    assert info.value.job.status == final.value
    assert db.job(job_id).status == final.value


def test_cancel_unknown_job_raises_not_found(db: Db) -> None:
    with db.sessions() as session, pytest.raises(JobNotFound):
        cancel_job(session, 999)


def test_cancel_while_the_worker_writes(db: Db) -> None:
    """Deterministic race: the worker heartbeats between cancel_job's read and its update."""
    job_id = db.submit()
    worker_engine = db.new_engine()
    claimed = claim_next_job(worker_engine, "w1", LONG_LEASE)
    assert claimed is not None
    beat = Interleave(
        db.engine, lambda: heartbeat(worker_engine, job_id, claimed.token, LONG_LEASE)
    )
    with db.sessions() as session:
        job = cancel_job(session, job_id)
    assert job.status == "running" and job.cancel_requested is True
    assert beat.result().lease_held is True
    assert heartbeat(worker_engine, job_id, claimed.token, LONG_LEASE) == queue.Heartbeat(
        True, True
    )


def test_an_accepted_cancel_wins_over_the_finish(db: Db) -> None:
    """The cancel answered 200 before the worker's next look at the flag; the job then ends:
    it is cancelled, not succeeded, and no model is published."""
    job_id = db.submit()
    claimed = claim(db)
    with db.sessions() as session:
        assert cancel_job(session, job_id).cancel_requested is True
    published: list[int] = []
    assert finish_job(
        db.engine, job_id, claimed.token, JobStatus.SUCCEEDED, publish=lambda: published.append(1)
    )
    job = db.job(job_id)
    assert job.status == "cancelled" and "no model" in (job.error or "") and published == []
    assert job.finished_at is not None


def test_a_slow_publish_holds_up_its_own_job_only(postgres_url: str) -> None:
    """PostgreSQL: a worker records a job's outcome while its model upload stalls (the row is
    locked) and its lease lapses meanwhile. Reaping skips the row instead of waiting on it (a
    wait had stopped every idle worker from claiming), the next job is claimed, and a cancel
    answers busy within seconds instead of hanging."""
    migrate(Settings(database_url=postgres_url))
    engine = make_engine(postgres_url)
    db = Db(postgres_url, engine, make_session_factory(engine))
    try:
        stalled, other = db.submit(), db.submit()
        claimed = claim(db)
        assert claimed.id == stalled
        db.set(stalled, lease_expires_at=PAST)
        uploading, release = threading.Event(), threading.Event()

        def publish() -> None:
            uploading.set()
            release.wait(30)

        worker = db.new_engine()
        finishing = threading.Thread(
            target=finish_job,
            args=(worker, stalled, claimed.token, JobStatus.SUCCEEDED),
            kwargs={"publish": publish},
        )
        finishing.start()
        try:
            assert uploading.wait(10)
            start = time.monotonic()
            assert requeue_expired_leases(db.new_engine()) == 0  # skipped, not waited on
            next_claim = claim_next_job(db.new_engine(), "w2", LONG_LEASE)
            assert next_claim is not None and next_claim.id == other
            with db.sessions() as session, pytest.raises(queue.JobBusy):
                cancel_job(session, stalled)
            assert time.monotonic() - start < 10
        finally:
            release.set()
            finishing.join(30)
        assert db.job(stalled).status == "succeeded"
    finally:
        db.dispose()


def test_a_publish_that_hangs_past_its_limit_frees_the_row(postgres_url: str) -> None:
    """PostgreSQL ends a session that holds a job's row, idle, past the hold limit: the hung
    worker's outcome is not written, and the job is reaped as a hung worker's is."""
    migrate(Settings(database_url=postgres_url))
    engine = make_engine(postgres_url)
    db = Db(postgres_url, engine, make_session_factory(engine))
    try:
        job_id = db.submit()
        claimed = claim(db)
        db.set(job_id, lease_expires_at=PAST)
        with pytest.raises(DBAPIError) as ended:
            finish_job(db.new_engine(), job_id, claimed.token, JobStatus.SUCCEEDED,
                       publish=lambda: time.sleep(2), hold_limit_seconds=0.5)  # fmt: skip
        assert ended.value.connection_invalidated  # a worker takes it as the database gone
        assert requeue_expired_leases(db.new_engine()) == 1
        assert db.job(job_id).status == "queued"
    finally:
        db.dispose()


def test_an_accepted_cancel_is_not_requeued_by_a_stopping_worker(db: Db) -> None:
    job_id = db.submit()
    claimed = claim(db)
    with db.sessions() as session:
        cancel_job(session, job_id)
    assert release_job(db.engine, job_id, claimed.token) == "cancelled"
    job = db.job(job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert claim_next_job(db.engine, "w2", LONG_LEASE) is None  # it never runs again


def test_cancelling_a_job_queued_to_resume_says_so(db: Db) -> None:
    job_id = db.submit()
    release_job(db.engine, job_id, claim(db).token)  # its worker stopped: back in the queue
    with db.sessions() as session:
        job = cancel_job(session, job_id)
    assert job.status == "cancelled" and "queued to resume" in (job.error or "")


def test_a_cancel_that_finds_the_job_just_finished_is_refused(db: Db) -> None:
    """Deterministic race: the worker finishes between cancel_job's read and its update. On
    SQLite the cancel holds the write lock, so the finish waits and the cancel wins; on
    PostgreSQL the finish commits first and the cancel must answer 409 (JobFinished), not 200
    with a succeeded job."""
    job_id = db.submit()
    worker_engine = db.new_engine()
    claimed = claim_next_job(worker_engine, "w1", LONG_LEASE)
    assert claimed is not None
    done = Interleave(
        db.engine,
        lambda: finish_job(worker_engine, job_id, claimed.token, JobStatus.SUCCEEDED),
    )
    try:
        with db.sessions() as session:
            job = cancel_job(session, job_id)
        outcome = job.status
    except JobFinished as exc:
        outcome = f"refused: {exc.job.status}"
    assert done.result() is True
    final = db.job(job_id).status
    if db.dialect == "sqlite":
        assert (outcome, final) == ("running", "cancelled")
    else:
        assert (outcome, final) == ("refused: succeeded", "succeeded")


def test_a_cancel_that_finds_the_job_requeued_meanwhile_still_cancels_it(db: Db) -> None:
    """Deterministic race: the job's worker stops and gives it back to the queue right after
    the cancel's first write. With one UPDATE per status the second matched nothing either,
    and the cancel of a live job answered 409; the cancel must win, as it does on SQLite."""
    job_id = db.submit()
    worker_engine = db.new_engine()
    claimed = claim_next_job(worker_engine, "w1", LONG_LEASE)
    assert claimed is not None
    stopped = Interleave(
        db.engine, lambda: release_job(worker_engine, job_id, claimed.token), after="UPDATE"
    )
    with db.sessions() as session:
        cancel_job(session, job_id)  # no JobFinished
    assert stopped.result() == "cancelled"
    assert db.job(job_id).status == "cancelled"


# --- cancel a sweep --------------------------------------------------------------------------


def create_sweep_of(db: Db, points: int) -> tuple[int, list[int]]:
    """A sweep of `points` queued jobs (one seed each): its id and its jobs' ids."""
    with db.sessions() as session:
        sweep, jobs = queue.create_sweep(
            session, base={"model": "lenet"}, grid={"seed": list(range(points))},
            configs=[{**CONFIG, "seed": i} for i in range(points)],
        )  # fmt: skip
        return sweep.id, [j.id for j in jobs]


def test_cancel_sweep_cancels_queued_flags_running_and_leaves_finished_alone(db: Db) -> None:
    sweep_id, (done, running, resumable, fresh, fresh2) = create_sweep_of(db, 5)
    done_claim, running_claim, resumable_claim = claim(db), claim(db), claim(db)
    assert (done_claim.id, running_claim.id, resumable_claim.id) == (done, running, resumable)
    final = {"val_acc": 0.8, "val_loss": 0.5, "test_acc": 0.79}
    assert finish_job(db.engine, done, done_claim.token, JobStatus.SUCCEEDED, final_metrics=final)
    assert release_job(db.engine, resumable, resumable_claim.token) == "queued"  # to resume
    other_sweep, others = create_sweep_of(db, 1)
    loose = db.submit()
    finished_at = db.job(done).finished_at

    with db.sessions() as session:
        changed = queue.cancel_sweep(session, sweep_id)
        assert [(j.id, j.status) for j in changed] == [
            (running, "running"), (resumable, "cancelled"), (fresh, "cancelled"),
            (fresh2, "cancelled"),
        ]  # fmt: skip
    flagged = db.job(running)
    assert flagged.cancel_requested is True and flagged.finished_at is None
    assert heartbeat(db.engine, running, running_claim.token, LONG_LEASE) == queue.Heartbeat(
        True, True
    )
    # Each job as cancel_job leaves it: the same error texts, a finish time, never run again.
    twin_fresh, twin_resumable = db.submit(priority=-1), db.submit(priority=-1)
    db.set(twin_resumable, started_at=PAST)
    with db.sessions() as session:
        cancel_job(session, twin_fresh)
        cancel_job(session, twin_resumable)
    for job_id, twin in ((fresh, twin_fresh), (fresh2, twin_fresh), (resumable, twin_resumable)):
        job = db.job(job_id)
        assert job.status == "cancelled" and job.cancel_requested is True
        assert job.error == db.job(twin).error and job.finished_at is not None
    assert "queued to resume" in (db.job(resumable).error or "")
    kept = db.job(done)
    assert (kept.status, kept.cancel_requested, kept.val_acc) == ("succeeded", False, 0.8)
    assert kept.finished_at == finished_at
    # Other sweeps' jobs and jobs of no sweep are not touched.
    assert [db.job(i).status for i in (*others, loose)] == ["queued", "queued"]
    assert not any(db.job(i).cancel_requested for i in (*others, loose))
    assert claim(db).id == others[0]  # the next claim skips every cancelled job

    # Asking again is harmless while a job still runs; the accepted cancel wins over its finish.
    with db.sessions() as session:
        assert [(j.id, j.status) for j in queue.cancel_sweep(session, sweep_id)] == [
            (running, "running")
        ]
    assert finish_job(db.engine, running, running_claim.token, JobStatus.SUCCEEDED)
    assert db.job(running).status == "cancelled"
    with db.sessions() as session, pytest.raises(SweepFinished) as refused:
        queue.cancel_sweep(session, sweep_id)
    assert refused.value.status_counts == {"succeeded": 1, "cancelled": 4}
    assert str(refused.value) == (
        f"every job of sweep {sweep_id} is already finished (4 cancelled, 1 succeeded)"
    )
    assert db.job(done).status == "succeeded" and db.job(done).cancel_requested is False
    with db.sessions() as session:
        _, jobs = queue.get_sweep(session, other_sweep)
        assert [j.status for j in jobs] == ["running"]


def test_cancel_unknown_sweep_raises_not_found(db: Db) -> None:
    _, [job_id] = create_sweep_of(db, 1)
    with db.sessions() as session, pytest.raises(SweepNotFound) as missing:
        queue.cancel_sweep(session, 999)
    assert str(missing.value) == "sweep 999 does not exist"
    assert db.job(job_id).status == "queued" and db.job(job_id).cancel_requested is False


def test_a_sweep_cancel_that_finds_its_last_job_just_finished(db: Db) -> None:
    """Deterministic race, as for one job: the worker finishes the sweep's last unfinished job
    between cancel_sweep's read and its update. SQLite: the cancel holds the write lock, the
    finish waits and the cancel wins. PostgreSQL: the finish commits first, and the cancel must
    answer SweepFinished (409), not 200 with nothing cancelled."""
    sweep_id, (first, last) = create_sweep_of(db, 2)
    assert finish_job(db.engine, first, claim(db).token, JobStatus.FAILED, error="boom")
    worker_engine = db.new_engine()
    claimed = claim_next_job(worker_engine, "w1", LONG_LEASE)
    assert claimed is not None and claimed.id == last
    done = Interleave(
        db.engine,
        lambda: finish_job(worker_engine, last, claimed.token, JobStatus.SUCCEEDED),
    )
    try:
        with db.sessions() as session:
            outcome = [j.status for j in queue.cancel_sweep(session, sweep_id)]
    except SweepFinished as exc:
        outcome = [f"refused: {exc.status_counts}"]
    assert done.result() is True
    final = db.job(last).status
    if db.dialect == "sqlite":
        assert (outcome, final) == (["running"], "cancelled")
    else:
        assert (outcome, final) == (["refused: {'failed': 1, 'succeeded': 1}"], "succeeded")
    assert db.job(first).status == "failed"


# --- expired leases --------------------------------------------------------------------------


def test_requeue_expired_lease_with_backoff(db: Db) -> None:
    job_id = db.submit()
    claimed = claim(db, lease=0.3)
    assert requeue_expired_leases(db.engine) == 0  # not expired yet
    assert db.job(job_id).status == "running"
    time.sleep(0.5)
    assert requeue_expired_leases(db.engine) == 1
    assert requeue_expired_leases(db.engine) == 0  # nothing left to do

    job = db.job(job_id)
    now = db.now()
    assert job.status == "queued"
    assert job.attempts == 1
    assert job.lease_token is None and job.lease_owner is None and job.lease_expires_at is None
    assert job.finished_at is None
    assert job.not_before is not None
    backoff = (utc(job.not_before) - now).total_seconds()
    assert RETRY_BACKOFF_SECONDS - 2 < backoff <= RETRY_BACKOFF_SECONDS

    # The worker that lost its lease can no longer write.
    assert heartbeat(db.engine, job_id, claimed.token, LONG_LEASE).lease_held is False
    assert record_epoch(db.engine, job_id, claimed.token, epoch_metrics(1)) is False
    assert finish_job(db.engine, job_id, claimed.token, JobStatus.SUCCEEDED) is False
    assert release_job(db.engine, job_id, claimed.token) is None
    assert db.job(job_id).status == "queued" and db.metrics(job_id) == []

    # Not claimable during the backoff; claimable once it has passed.
    assert claim_next_job(db.engine, "w2", LONG_LEASE) is None
    db.set(job_id, not_before=PAST)
    second = claim(db, owner="w2")
    assert second.id == job_id and second.attempt == 2 and second.token != claimed.token
    assert finish_job(db.engine, job_id, claimed.token, JobStatus.FAILED) is False
    assert finish_job(db.engine, job_id, second.token, JobStatus.SUCCEEDED) is True


def test_backoff_grows_with_attempts_and_is_capped(db: Db) -> None:
    job_id = db.submit(max_attempts=100)
    for attempts, expected in ((3, 3 * RETRY_BACKOFF_SECONDS), (60, RETRY_BACKOFF_MAX_SECONDS)):
        db.set(job_id, not_before=None)
        claim(db)
        db.set(job_id, attempts=attempts, lease_expires_at=PAST)
        assert requeue_expired_leases(db.engine) == 1
        job = db.job(job_id)
        assert job.status == "queued"
        backoff = (utc(job.not_before) - db.now()).total_seconds()
        assert expected - 2 < backoff <= expected, (attempts, backoff)


def test_lease_expiry_fails_the_job_after_max_attempts(db: Db) -> None:
    job_id = db.submit(max_attempts=2)
    tokens = []
    for attempt in (1, 2):
        db.set(job_id, not_before=PAST)
        claimed = claim(db)
        assert claimed.attempt == attempt
        tokens.append(claimed.token)
        db.set(job_id, lease_expires_at=PAST)
        ended: list[int] = []
        assert requeue_expired_leases(db.engine, ended=ended) == 1
        assert ended == ([] if attempt == 1 else [job_id])  # requeued, then failed
    job = db.job(job_id)
    assert job.status == "failed"
    assert job.attempts == 2
    assert job.finished_at is not None
    assert job.not_before is None
    assert job.lease_token is None and job.lease_expires_at is None
    assert job.error is not None
    assert "lease" in job.error and "2 attempts" in job.error
    assert claim_next_job(db.engine, "w1", LONG_LEASE) is None
    assert all(finish_job(db.engine, job_id, t, JobStatus.SUCCEEDED) is False for t in tokens)


def test_cancel_requested_job_whose_lease_expires_is_cancelled(db: Db) -> None:
    job_id = db.submit(max_attempts=3)
    claimed = claim(db)
    with db.sessions() as session:
        cancel_job(session, job_id)
    db.set(job_id, lease_expires_at=PAST)
    ended: list[int] = []
    assert requeue_expired_leases(db.engine, ended=ended) == 1 and ended == [job_id]
    job = db.job(job_id)
    assert job.status == "cancelled"
    assert job.finished_at is not None
    assert job.not_before is None
    assert job.lease_token is None
    assert job.error and "cancel" in job.error
    assert heartbeat(db.engine, job_id, claimed.token, LONG_LEASE).lease_held is False
    assert claim_next_job(db.engine, "w1", LONG_LEASE) is None


def test_requeue_leaves_live_leases_and_other_jobs_alone(db: Db) -> None:
    queued = db.submit(priority=0)
    live = db.submit(priority=2)
    done = db.submit(priority=1)
    live_claim = claim(db)
    done_claim = claim(db)
    assert (live_claim.id, done_claim.id) == (live, done)
    assert finish_job(db.engine, done, done_claim.token, JobStatus.SUCCEEDED)
    # A finished job with a stale lease_expires_at must not be touched either.
    db.set(done, lease_expires_at=PAST)
    assert requeue_expired_leases(db.engine) == 0
    assert db.job(queued).status == "queued"
    assert db.job(live).status == "running" and db.job(live).lease_token == live_claim.token
    assert db.job(done).status == "succeeded"


# --- a crashed job process (requeue_or_fail) -------------------------------------------------


def test_requeue_or_fail_retries_with_backoff_then_fails(db: Db) -> None:
    job_id = db.submit(max_attempts=2)
    first = claim(db)
    assert queue.requeue_or_fail(db.engine, job_id, "0" * 32, "boom") is None  # wrong token
    assert db.job(job_id).status == "running"
    assert queue.requeue_or_fail(db.engine, job_id, first.token, "it crashed") == "queued"
    job = db.job(job_id)
    assert job.status == "queued" and job.attempts == 1 and job.finished_at is None
    assert job.lease_token is None and job.lease_expires_at is None
    assert job.error and "it crashed" in job.error
    backoff = (utc(job.not_before) - db.now()).total_seconds()
    assert RETRY_BACKOFF_SECONDS - 2 < backoff <= RETRY_BACKOFF_SECONDS
    assert claim_next_job(db.engine, "w1", LONG_LEASE) is None  # backing off
    assert queue.requeue_or_fail(db.engine, job_id, first.token, "again") is None  # token dead

    db.set(job_id, not_before=PAST)
    second = claim(db)
    assert second.attempt == 2
    assert queue.requeue_or_fail(db.engine, job_id, second.token, "it crashed") == "failed"
    job = db.job(job_id)
    assert job.status == "failed" and job.finished_at is not None and job.not_before is None
    assert job.error and "it crashed" in job.error and "2 attempts" in job.error
    assert claim_next_job(db.engine, "w1", LONG_LEASE) is None


def test_requeue_or_fail_cancels_a_cancel_requested_job(db: Db) -> None:
    job_id = db.submit(max_attempts=3)
    claimed = claim(db)
    with db.sessions() as session:
        cancel_job(session, job_id)
    assert queue.requeue_or_fail(db.engine, job_id, claimed.token, "it crashed") == "cancelled"
    job = db.job(job_id)
    assert job.status == "cancelled"
    assert job.finished_at is not None and job.not_before is None


# --- release ---------------------------------------------------------------------------------


def test_release_requeues_without_counting_the_attempt(db: Db) -> None:
    job_id = db.submit()
    first = claim(db)
    assert release_job(db.engine, job_id, first.token) == "queued"
    job = db.job(job_id)
    assert job.status == "queued"
    assert job.attempts == 0
    assert job.lease_token is None and job.lease_owner is None and job.lease_expires_at is None
    assert job.finished_at is None
    assert heartbeat(db.engine, job_id, first.token, LONG_LEASE).lease_held is False
    assert release_job(db.engine, job_id, first.token) is None
    second = claim(db)  # no backoff after a release
    assert second.id == job_id and second.attempt == 1
    assert db.job(job_id).attempts == 1


# --- list ------------------------------------------------------------------------------------


def test_list_jobs_newest_first_with_filter_and_paging(db: Db) -> None:
    ids = [db.submit(priority=i) for i in range(5)]
    claimed = claim(db)  # highest priority: the newest
    assert claimed.id == ids[4]
    assert finish_job(db.engine, claimed.id, claimed.token, JobStatus.SUCCEEDED)
    with db.sessions() as session:
        cancel_job(session, ids[0])

        jobs, count = list_jobs(session)
        assert [j.id for j in jobs] == ids[::-1]
        assert count == 5

        jobs, count = list_jobs(session, limit=2)
        assert [j.id for j in jobs] == [ids[4], ids[3]] and count == 5
        jobs, count = list_jobs(session, limit=2, offset=2)
        assert [j.id for j in jobs] == [ids[2], ids[1]] and count == 5
        jobs, count = list_jobs(session, limit=2, offset=4)
        assert [j.id for j in jobs] == [ids[0]] and count == 5
        jobs, count = list_jobs(session, limit=2, offset=10)
        assert jobs == [] and count == 5

        jobs, count = list_jobs(session, status="queued")
        assert [j.id for j in jobs] == [ids[3], ids[2], ids[1]] and count == 3
        jobs, count = list_jobs(session, status="queued", limit=1, offset=1)
        assert [j.id for j in jobs] == [ids[2]] and count == 3
        jobs, count = list_jobs(session, status="succeeded")
        assert [j.id for j in jobs] == [ids[4]] and count == 1
        jobs, count = list_jobs(session, status="cancelled")
        assert [j.id for j in jobs] == [ids[0]] and count == 1
        jobs, count = list_jobs(session, status="running")
        assert list(jobs) == [] and count == 0

        models, count = queue.list_trained_models(session)
        assert [j.id for j in models] == [ids[4]] and count == 1


def test_list_jobs_on_an_empty_database(db: Db) -> None:
    with db.sessions() as session:
        jobs, count = list_jobs(session)
    assert list(jobs) == [] and count == 0
