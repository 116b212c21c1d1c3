"""Every job-state transition, and all job SQL: submit, claim, heartbeat, cancel, finish, requeue.

Workers call the functions that take an Engine; each runs in its own short write transaction
(SQLite: BEGIN IMMEDIATE). Every write a worker makes after claiming is conditional on the
lease token it claimed with, so a worker that lost its lease cannot overwrite the job.
Time always comes from the database clock.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import ColumnElement

from service.tables import FINISHED_STATUSES, EpochMetric, Job, JobKind, JobStatus, Sweep
from service.training.config import REGRESSION_MODELS

T = TypeVar("T")

JOBS = Job.__table__
METRICS = EpochMetric.__table__
RETRY_BACKOFF_SECONDS = 5.0  # default: a requeued job waits attempts x this long to run again
RETRY_BACKOFF_MAX_SECONDS = 120
FINISHED = tuple(s.value for s in FINISHED_STATUSES)


class JobNotFound(LookupError):
    pass


class JobFinished(Exception):
    """The job already reached succeeded, failed or cancelled."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is already {job.status}")
        self.job = job


class IdempotencyKeyReused(Exception):
    """The key already created a job (or a sweep) from a different request."""

    def __init__(self, created: Job | Sweep) -> None:
        what = "sweep" if isinstance(created, Sweep) else "job"
        super().__init__(f"already used for a different request, which created {what} {created.id}")
        self.created = created


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    token: str  # the lease token: every later write must present it
    config: dict[str, Any]
    attempt: int  # 1 for the first run


@dataclass(frozen=True)
class Heartbeat:
    lease_held: bool  # False: the lease was lost; stop writing, stop working
    cancel_requested: bool


# --- database clock ------------------------------------------------------------------------

_SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%f"


def db_now(dialect: str) -> ColumnElement[Any]:
    if dialect == "sqlite":
        return func.strftime(_SQLITE_TIME_FORMAT, "now")
    return func.now()


def db_now_plus(dialect: str, seconds: float | ColumnElement[Any]) -> ColumnElement[Any]:
    if dialect == "sqlite":
        amount = (
            literal(f"{seconds:+.3f}")
            if isinstance(seconds, int | float)
            else (literal("+") + cast(seconds, String))
        )
        return func.strftime(_SQLITE_TIME_FORMAT, "now", amount + literal(" seconds"))
    if isinstance(seconds, int | float):
        return func.now() + timedelta(seconds=seconds)
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)


@contextmanager
def _write(engine: Engine) -> Iterator[Connection]:
    """A write transaction that takes SQLite's write lock at BEGIN (no-op elsewhere)."""
    with engine.connect() as conn:
        conn.execution_options(sqlite_immediate=True)
        with conn.begin():
            yield conn


# --- API side (sessions) -------------------------------------------------------------------


WRITER_TRANSACTION = "trainserve_writer_transaction"  # session.info key


def _begin_write(session: Session) -> None:
    """Start the session's transaction as a writer (SQLite: BEGIN IMMEDIATE), so a read that
    precedes the write cannot fail with SQLITE_BUSY under concurrent writers.

    A read made earlier in the same session (the API looks up an uploaded dataset before it
    submits) has already begun a deferred transaction, which the option can no longer make a
    writer: under WAL, SQLite refuses to upgrade a reader whose snapshot another connection has
    since written past, at once and without the busy timeout ("database is locked"). That
    transaction wrote nothing, so it is ended here and a writer begun in its place."""
    if session.in_transaction():
        if session.get_transaction() is session.info.get(WRITER_TRANSACTION):
            return  # already the writer
        if session.new or session.dirty or session.deleted:
            raise RuntimeError("_begin_write after changes: they would commit unseen")
        session.commit()
    session.connection(execution_options={"sqlite_immediate": True})
    session.info[WRITER_TRANSACTION] = session.get_transaction()


@contextmanager
def _writing(session: Session) -> Iterator[None]:
    """``_begin_write`` for the block, and the transaction over when it ends: a block that
    returns without writing (a replayed idempotency key) commits nothing, one that raises rolls
    back. Paths that read, then refuse, commit first, so their objects stay loaded.

    Left open, the transaction would keep SQLite's write lock until the request's session
    closes, which FastAPI does after building the response, on a thread of the pool the waiting
    writers fill: a burst of retries deadlocked the API until the 30 s busy timeouts fired.
    """

    def writer_open() -> bool:
        return session.in_transaction() and (
            session.get_transaction() is session.info.get(WRITER_TRANSACTION)
        )

    _begin_write(session)
    try:
        yield
    except BaseException:
        if writer_open():
            session.rollback()
        raise
    if writer_open():
        session.commit()


# How long a cancel waits for a job row that a worker holds while it records the job's outcome
# (and writes its model). Past it, the cancel answers "busy, retry" (503), not nothing at all.
LOCK_WAIT_SECONDS = 3


class JobBusy(Exception):
    """A job's row is held by its worker, which is recording the job's outcome."""

    retry_after = LOCK_WAIT_SECONDS


def _bounded_lock_waits(session: Session) -> None:
    """PostgreSQL: waits for row locks in this transaction end after LOCK_WAIT_SECONDS."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT_SECONDS}s'"))


def _lock_wait_ended(exc: OperationalError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "55P03"  # lock_not_available


@contextmanager
def _busy_if_held(what: str) -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:
        if _lock_wait_ended(exc):
            raise JobBusy(
                f"{what} is held by its worker, which is recording its outcome; retry in a few "
                "seconds"
            ) from exc
        raise


def created_now(session: Session) -> ColumnElement[Any]:
    """created_at: the database clock to the millisecond, as started_at and finished_at have.
    The columns' CURRENT_TIMESTAMP default has whole seconds on SQLite, which lose the order of
    quick submits and put a sweep after its own jobs."""
    return db_now(session.get_bind().dialect.name)


def _new_job(
    session: Session, config: dict[str, Any], priority: int, max_attempts: int, **extra: Any
) -> Job:
    """A queued job row, not yet added to a session."""
    return Job(
        created_at=created_now(session),
        status=JobStatus.QUEUED.value,
        model=config["model"],
        kind=config.get("kind", JobKind.TRAIN.value),
        config=config,
        priority=priority,
        max_attempts=max_attempts,
        attempts=0,
        epochs_done=0,
        cancel_requested=False,
        **extra,
    )


def submit_job(
    session: Session,
    config: dict[str, Any],
    *,
    priority: int = 0,
    max_attempts: int = 3,
    idempotency_key: str | None = None,
    drawn: frozenset[str] = frozenset(),
) -> Job:
    """Insert a queued job; the same idempotency key returns the job it created first.

    `drawn` names config fields the service chose for this request (a seed drawn at random):
    a retry draws them anew, so they do not make it a different request. Any other difference
    raises IdempotencyKeyReused rather than silently returning a job the caller did not ask for.
    """

    def insert() -> Job:
        job = _new_job(session, config, priority, max_attempts, idempotency_key=idempotency_key)
        session.add(job)
        session.commit()
        session.refresh(job)
        return job

    return _insert_once(
        session,
        idempotency_key,
        find=lambda key: _job_with_key(session, key),
        same=lambda existing: _same_request(existing, config, priority, drawn),
        insert=insert,
    )


def _insert_once(
    session: Session,
    idempotency_key: str | None,
    *,
    find: Callable[[str], Any],
    same: Callable[[Any], T],
    insert: Callable[[], T],
) -> T:
    """``insert()`` (which commits) in a write transaction, unless the idempotency key already
    created something: then ``same(existing)``, which returns it or raises
    IdempotencyKeyReused. A concurrent request that inserts the key first makes our insert
    fail on the unique key; we then answer with its row."""
    with _writing(session):
        existing = find(idempotency_key) if idempotency_key is not None else None
        if existing is not None:
            session.commit()  # nothing to write: the lock goes now
            return same(existing)
        try:
            return insert()
        except IntegrityError:
            session.rollback()
            if idempotency_key is None or (existing := find(idempotency_key)) is None:
                raise
            return same(existing)


def _job_with_key(session: Session, idempotency_key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.idempotency_key == idempotency_key)).first()


def _same_request(
    existing: Job, config: dict[str, Any], priority: int, drawn: frozenset[str]
) -> Job:
    def compared(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k not in drawn}

    # The stored config went through JSON (tuples came back as lists): compare like with like.
    asked = json.loads(json.dumps(config))
    if existing.priority != priority or compared(existing.config) != compared(asked):
        raise IdempotencyKeyReused(existing)
    return existing


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise _no_such_job(job_id)
    return job


def _no_such_job(job_id: int) -> JobNotFound:
    return JobNotFound(f"job {job_id} does not exist")


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[Sequence[Job], int]:
    """Newest first, with the total count matching the filter."""
    where = [Job.status == status] if status else []
    count = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    jobs = session.scalars(
        select(Job).where(*where).order_by(Job.id.desc()).limit(limit).offset(offset)
    ).all()
    return jobs, count


def list_epoch_metrics(session: Session, job_id: int) -> Sequence[EpochMetric]:
    get_job(session, job_id)
    return session.scalars(
        select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)
    ).all()


def list_trained_models(
    session: Session, *, limit: int = 50, offset: int = 0
) -> tuple[Sequence[Job], int]:
    """Succeeded jobs that saved a servable model (see has_trained_model), newest first."""
    where = [
        Job.status == JobStatus.SUCCEEDED.value,
        Job.kind == JobKind.TRAIN.value,
        Job.model.not_in(REGRESSION_MODELS),
    ]
    count = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    jobs = session.scalars(
        select(Job).where(*where).order_by(Job.id.desc()).limit(limit).offset(offset)
    ).all()
    return jobs, count


def has_trained_model(job: Job) -> bool:
    """Only a succeeded `train` job of an image classifier saves a model for /models: lr_find
    and kfold jobs keep none, and a linear regression's result is in its job's `result`."""
    return (
        job.status == JobStatus.SUCCEEDED.value
        and job.kind == JobKind.TRAIN.value
        and job.model not in REGRESSION_MODELS
    )


def _cancel_statement(session: Session, which: ColumnElement[bool]) -> Update:
    """The UPDATE that cancels the chosen jobs that are queued and flags those running, each
    decided on its row as it is when the statement runs."""
    now = db_now(session.get_bind().dialect.name)
    queued = Job.status == JobStatus.QUEUED.value
    return (
        update(Job)
        .where(which, Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
        .values(
            status=case((queued, JobStatus.CANCELLED.value), else_=Job.status),
            cancel_requested=True,
            finished_at=case((queued, now), else_=Job.finished_at),
            error=case(
                (queued & Job.started_at.is_(None), "cancelled before it started"),
                (queued, "cancelled while queued to resume (after its worker stopped)"),
                else_=Job.error,
            ),
        )
    )


def cancel_job(session: Session, job_id: int) -> Job:
    """A queued job is cancelled at once; a running one is flagged and its worker stops it.

    One UPDATE decides between the two on the row as it is then: with one statement per
    status, a job requeued by a lapsed lease between them matched neither, and the cancel of a
    live job answered 409 "already queued"."""
    with _busy_if_held(f"job {job_id}"), _writing(session):
        _bounded_lock_waits(session)
        job = session.get(Job, job_id)
        if job is None or job.status in FINISHED:
            session.commit()  # nothing to write: the lock goes before the refusal
            if job is None:
                raise _no_such_job(job_id)
            raise JobFinished(job)
        changed = session.execute(
            _cancel_statement(session, Job.id == job_id).execution_options(
                synchronize_session=False
            )
        )
        session.commit()
    session.expire_all()
    job = get_job(session, job_id)
    if changed.rowcount == 0:  # PostgreSQL: it finished meanwhile
        raise JobFinished(job)
    return job


# --- worker side (engine, lease-conditional) -----------------------------------------------


def claim_next_job(engine: Engine, owner: str, lease_seconds: float) -> ClaimedJob | None:
    """Atomically take the highest-priority, oldest eligible queued job, or None."""
    dialect = engine.dialect.name
    now = db_now(dialect)
    token = uuid.uuid4().hex
    eligible = and_(
        JOBS.c.status == JobStatus.QUEUED.value,
        or_(JOBS.c.not_before.is_(None), JOBS.c.not_before <= now),
    )
    order = (JOBS.c.priority.desc(), JOBS.c.created_at, JOBS.c.id)
    values = {
        "status": JobStatus.RUNNING.value,
        "lease_owner": owner,
        "lease_token": token,
        "lease_expires_at": db_now_plus(dialect, lease_seconds),
        "heartbeat_at": now,
        "attempts": JOBS.c.attempts + 1,
        "started_at": func.coalesce(JOBS.c.started_at, now),
    }
    returning = (JOBS.c.id, JOBS.c.config, JOBS.c.attempts)
    if dialect == "postgresql":
        # Concurrent claimers skip rows another transaction holds instead of waiting on them.
        pick = (
            select(JOBS.c.id)
            .where(eligible)
            .order_by(*order)
            .limit(1)
            .with_for_update(skip_locked=True)
            .cte("pick")
        )
        stmt = update(JOBS).where(JOBS.c.id == pick.c.id).values(**values).returning(*returning)
    else:
        # SQLite: the write lock taken at BEGIN IMMEDIATE serialises claimers.
        pick_id = select(JOBS.c.id).where(eligible).order_by(*order).limit(1).scalar_subquery()
        stmt = (
            update(JOBS)
            .where(JOBS.c.id == pick_id, JOBS.c.status == JobStatus.QUEUED.value)
            .values(**values)
            .returning(*returning)
        )
    with _write(engine) as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    return ClaimedJob(id=row.id, token=token, config=dict(row.config), attempt=row.attempts)


def unfinished_job_ids(engine: Engine, job_ids: Sequence[int]) -> set[int]:
    """Those of ``job_ids`` that are queued or running (and so may still resume)."""
    if not job_ids:
        return set()
    unfinished = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
    stmt = select(JOBS.c.id).where(JOBS.c.id.in_(list(job_ids)), JOBS.c.status.in_(unfinished))
    with engine.connect() as conn:
        return set(conn.scalars(stmt))


def has_queued_jobs(engine: Engine) -> bool:
    """Whether any job waits in the queue (eligible now or after its backoff)."""
    stmt = select(JOBS.c.id).where(JOBS.c.status == JobStatus.QUEUED.value).limit(1)
    with engine.connect() as conn:
        return conn.execute(stmt).first() is not None


def _leased(job_id: int, token: str) -> ColumnElement[bool]:
    return and_(
        JOBS.c.id == job_id,
        JOBS.c.lease_token == token,
        JOBS.c.status == JobStatus.RUNNING.value,
    )


def heartbeat(engine: Engine, job_id: int, token: str, lease_seconds: float) -> Heartbeat:
    """Extend the lease; report whether it is still ours and whether cancel was asked for."""
    dialect = engine.dialect.name
    stmt = (
        update(JOBS)
        .where(_leased(job_id, token))
        .values(
            lease_expires_at=db_now_plus(dialect, lease_seconds),
            heartbeat_at=db_now(dialect),
        )
        .returning(JOBS.c.cancel_requested)
    )
    with _write(engine) as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return Heartbeat(lease_held=False, cancel_requested=False)
    return Heartbeat(lease_held=True, cancel_requested=bool(row.cancel_requested))


def cancel_requested(engine: Engine, job_id: int, token: str) -> Heartbeat:
    """A cheap read between heartbeats."""
    with engine.connect() as conn:
        row = conn.execute(select(JOBS.c.cancel_requested).where(_leased(job_id, token))).first()
    if row is None:
        return Heartbeat(lease_held=False, cancel_requested=False)
    return Heartbeat(lease_held=True, cancel_requested=bool(row.cancel_requested))


def record_epoch(engine: Engine, job_id: int, token: str, metrics: dict[str, float]) -> bool:
    """Store one epoch's row (idempotent on job + epoch); False if the lease is no longer ours."""
    dialect = engine.dialect.name
    epoch = int(metrics["epoch"])
    row = {
        k: metrics[k]
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "examples_per_sec", "seconds")
    }
    row["lr"] = metrics.get("lr")
    insert = postgresql.insert(METRICS) if dialect == "postgresql" else sqlite.insert(METRICS)
    upsert = insert.values(job_id=job_id, epoch=epoch, **row).on_conflict_do_update(
        index_elements=[METRICS.c.job_id, METRICS.c.epoch], set_=row
    )
    with _write(engine) as conn:
        touched = conn.execute(
            update(JOBS).where(_leased(job_id, token)).values(epochs_done=epoch)
        ).rowcount
        if touched != 1:
            return False
        conn.execute(upsert)
    return True


def finish_job(
    engine: Engine,
    job_id: int,
    token: str,
    status: JobStatus,
    *,
    error: str | None = None,
    final_metrics: dict[str, float] | None = None,
    publish: Callable[[], None] | None = None,
    result: dict[str, Any] | None = None,
    hold_limit_seconds: float = 120.0,
) -> bool:
    """Move a running job to a final status; False if the lease is no longer ours.

    `publish` (writing the trained model's files) runs while the job's row is locked and only
    if the lease is still ours: a worker that lost its lease can never overwrite the files of
    the worker that took the job over. Meanwhile the reaper skips the row (SKIP LOCKED), so a
    slow upload holds up this job alone; on PostgreSQL a publish that hangs past
    ``hold_limit_seconds`` has its session ended by the server, which frees the row: its lease
    lapses, and the job is requeued as a hung worker's is.
    """
    dialect = engine.dialect.name
    values: dict[str, Any] = {
        "status": status.value,
        "finished_at": db_now(dialect),
        "error": error,
        "lease_token": None,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
        if final_metrics and key in final_metrics:
            values[key] = final_metrics[key]
    if result is not None:
        values["result"] = result  # what the job found: lr curve, folds, |w|, diagnosis
    with _write(engine) as conn:
        if dialect == "postgresql":
            limit_ms = max(1, int(hold_limit_seconds * 1000))
            conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {limit_ms}"))
        if status == JobStatus.SUCCEEDED or publish is not None:
            # SQLite's BEGIN IMMEDIATE already excludes other writers; PostgreSQL locks the row,
            # so a cancel either lands before this (and wins) or finds the job finished (409).
            owned = conn.execute(
                select(JOBS.c.cancel_requested).where(_leased(job_id, token)).with_for_update()
            ).first()
            if owned is None:
                return False
            if owned.cancel_requested and status == JobStatus.SUCCEEDED:
                # The cancel was accepted (200) before its worker saw it: it wins, no model.
                values["status"] = JobStatus.CANCELLED.value
                values["error"] = "cancelled by request as it finished; no model was kept"
                publish = None
            if publish is not None:
                publish()
        return (
            conn.execute(update(JOBS).where(_leased(job_id, token)).values(**values)).rowcount == 1
        )


def release_job(engine: Engine, job_id: int, token: str) -> str | None:
    """Give a running job back to the queue (worker shutting down); the run is not counted.
    A job whose cancel was accepted but not yet seen by its worker is cancelled instead: it
    must not run again after the restart. Returns the job's new status (queued or cancelled),
    or None if the lease was no longer ours."""
    cancelled = JOBS.c.cancel_requested
    values = {
        "status": case((cancelled, JobStatus.CANCELLED.value), else_=JobStatus.QUEUED.value),
        "finished_at": case((cancelled, db_now(engine.dialect.name)), else_=JOBS.c.finished_at),
        "error": case(
            (cancelled, "cancelled by request as its worker stopped"), else_=JOBS.c.error
        ),
        "lease_token": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "attempts": JOBS.c.attempts - 1,
    }
    stmt = update(JOBS).where(_leased(job_id, token)).values(**values).returning(JOBS.c.status)
    with _write(engine) as conn:
        return conn.execute(stmt).scalar()


def requeue_or_fail(
    engine: Engine,
    job_id: int,
    token: str,
    reason: str,
    *,
    backoff_seconds: float = RETRY_BACKOFF_SECONDS,
) -> str | None:
    """The job's process crashed: requeue it with backoff, fail it after max_attempts, or
    cancel it if the user asked to. Returns the new status, or None if the lease was lost."""
    dialect = engine.dialect.name
    out_of_attempts = JOBS.c.attempts >= JOBS.c.max_attempts
    final = or_(out_of_attempts, JOBS.c.cancel_requested)
    stmt = (
        update(JOBS)
        .where(_leased(job_id, token))
        .values(
            status=case(
                (JOBS.c.cancel_requested, JobStatus.CANCELLED.value),
                (out_of_attempts, JobStatus.FAILED.value),
                else_=JobStatus.QUEUED.value,
            ),
            error=case(
                (JOBS.c.cancel_requested, literal(f"cancelled by request ({reason})")),
                (
                    out_of_attempts,
                    literal(f"{reason}; gave up after ")
                    + cast(JOBS.c.attempts, String)
                    + literal(" attempts"),
                ),
                else_=literal(f"{reason} (will retry)"),
            ),
            finished_at=case((final, db_now(dialect)), else_=None),
            not_before=case(
                (final, None),
                else_=db_now_plus(dialect, _backoff(dialect, backoff_seconds)),
            ),
            lease_token=None,
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(JOBS.c.status)
    )
    with _write(engine) as conn:
        return conn.execute(stmt).scalar()


def _backoff(dialect: str, backoff_seconds: float) -> ColumnElement[Any]:
    """attempts x backoff_seconds, capped: the wait before a failed job may run again."""
    least = func.min if dialect == "sqlite" else func.least
    return least(JOBS.c.attempts * float(backoff_seconds), RETRY_BACKOFF_MAX_SECONDS)


def requeue_expired_leases(
    engine: Engine,
    *,
    backoff_seconds: float = RETRY_BACKOFF_SECONDS,
    ended: list[int] | None = None,
) -> int:
    """Requeue running jobs whose lease lapsed (with backoff), or fail them after max_attempts
    (cancel them, if a cancel was asked); how many. ``ended`` gets the ids of the jobs this
    ended (failed or cancelled): their checkpoints are of no more use."""
    dialect = engine.dialect.name
    now = db_now(dialect)
    expired = and_(JOBS.c.status == JobStatus.RUNNING.value, JOBS.c.lease_expires_at < now)
    out_of_attempts = JOBS.c.attempts >= JOBS.c.max_attempts
    backoff = _backoff(dialect, backoff_seconds)
    final = or_(out_of_attempts, JOBS.c.cancel_requested)
    if dialect == "postgresql":
        # Not the rows a worker holds while it records a job's outcome (a model upload can take
        # long): waiting on one stalled every reap, and so every idle worker's next claim.
        lapsed = select(JOBS.c.id).where(expired).with_for_update(skip_locked=True)
        which = and_(JOBS.c.id.in_(lapsed.scalar_subquery()), expired)
    else:
        which = expired
    stmt = (
        update(JOBS)
        .where(which)
        .values(
            status=case(
                (JOBS.c.cancel_requested, JobStatus.CANCELLED.value),
                (out_of_attempts, JobStatus.FAILED.value),
                else_=JobStatus.QUEUED.value,
            ),
            error=case(
                (JOBS.c.cancel_requested, "cancelled while its worker was unresponsive"),
                (
                    out_of_attempts,
                    literal("its worker stopped responding (lease expired) on each of ")
                    + cast(JOBS.c.attempts, String)
                    + literal(" attempts; giving up"),
                ),
                else_=JOBS.c.error,
            ),
            finished_at=case((final, now), else_=None),
            not_before=case((final, None), else_=db_now_plus(dialect, backoff)),
            lease_token=None,
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(JOBS.c.id, JOBS.c.status)
    )
    with _write(engine) as conn:
        rows = conn.execute(stmt).all()
    if ended is not None:
        ended.extend(row.id for row in rows if row.status != JobStatus.QUEUED.value)
    return len(rows)


# --- sweeps (API side) ---------------------------------------------------------------------
# A sweep is a grid of job configurations; its jobs are ordinary jobs with sweep_id set.


class SweepNotFound(LookupError):
    pass


class SweepFinished(Exception):
    """Every job of the sweep already reached succeeded, failed or cancelled."""

    def __init__(self, sweep_id: int, status_counts: dict[str, int]) -> None:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(status_counts.items()))
        super().__init__(f"every job of sweep {sweep_id} is already finished ({counts})")
        self.sweep_id = sweep_id
        self.status_counts = status_counts


def create_sweep(
    session: Session,
    *,
    base: dict[str, Any],
    grid: dict[str, list[Any]],
    configs: Sequence[dict[str, Any]],
    priority: int = 0,
    max_attempts: int = 3,
    idempotency_key: str | None = None,
) -> tuple[Sweep, list[Job]]:
    """Insert the sweep and one queued job per config, all in one transaction; the same
    idempotency key returns the sweep it created first, with its jobs, and inserts nothing.

    The request is its base and grid (a seed drawn for the points is in neither): a key reused
    with another raises IdempotencyKeyReused, as submit_job does.
    """

    def insert() -> tuple[Sweep, list[Job]]:
        sweep = Sweep(
            base=base, grid=grid, created_at=created_now(session), idempotency_key=idempotency_key
        )
        session.add(sweep)
        session.flush()  # the sweep's id, for its jobs; a concurrent twin's key fails here
        jobs = [
            _new_job(session, config, priority, max_attempts, sweep_id=sweep.id)
            for config in configs
        ]
        session.add_all(jobs)
        session.commit()
        return sweep, jobs

    return _insert_once(
        session,
        idempotency_key,
        find=lambda key: _sweep_with_key(session, key),
        same=lambda existing: _same_sweep(session, existing, base, grid),
        insert=insert,
    )


def _sweep_with_key(session: Session, idempotency_key: str) -> Sweep | None:
    return session.scalars(select(Sweep).where(Sweep.idempotency_key == idempotency_key)).first()


def _same_sweep(
    session: Session, existing: Sweep, base: dict[str, Any], grid: dict[str, list[Any]]
) -> tuple[Sweep, list[Job]]:
    # The stored base and grid went through JSON: compare like with like.
    asked = json.loads(json.dumps({"base": base, "grid": grid}))
    if {"base": existing.base, "grid": existing.grid} != asked:
        raise IdempotencyKeyReused(existing)
    _, jobs = get_sweep(session, existing.id)
    return existing, list(jobs)


def get_sweep(session: Session, sweep_id: int) -> tuple[Sweep, Sequence[Job]]:
    """The sweep and its jobs in creation order."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise SweepNotFound(f"sweep {sweep_id} does not exist")
    jobs = session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)).all()
    return sweep, jobs


def list_sweeps(
    session: Session, *, limit: int = 50, offset: int = 0
) -> tuple[Sequence[Sweep], int]:
    """Newest first, with the total count."""
    count = session.scalar(select(func.count()).select_from(Sweep)) or 0
    sweeps = session.scalars(
        select(Sweep).order_by(Sweep.id.desc()).limit(limit).offset(offset)
    ).all()
    return sweeps, count


def count_sweep_jobs(session: Session, sweep_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """sweep id -> {status: number of its jobs}."""
    rows = session.execute(
        select(Job.sweep_id, Job.status, func.count())
        .where(Job.sweep_id.in_(sweep_ids))
        .group_by(Job.sweep_id, Job.status)
    ).all()
    counts: dict[int, dict[str, int]] = {i: {} for i in sweep_ids}
    for sweep_id, status, n in rows:
        counts[sweep_id][status] = n
    return counts


def cancel_sweep(session: Session, sweep_id: int) -> list[Job]:
    """cancel_job for every job of the sweep, in one transaction: its queued jobs are cancelled
    at once, its running ones flagged for their workers, its finished ones left alone. Returns
    the jobs it cancelled or flagged, as they are after the commit.

    One UPDATE, as in cancel_job, decides for each job on its row as it is then (a job requeued
    meanwhile is cancelled; on PostgreSQL one that finished meanwhile is skipped). Raises
    SweepNotFound, or SweepFinished when no job of the sweep was left to cancel."""
    with _busy_if_held(f"a job of sweep {sweep_id}"), _writing(session):
        _bounded_lock_waits(session)
        if session.get(Sweep, sweep_id) is None:
            session.commit()  # nothing to write: the lock goes before the refusal
            raise SweepNotFound(f"sweep {sweep_id} does not exist")
        changed = (
            session.execute(
                _cancel_statement(session, Job.sweep_id == sweep_id)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
            .scalars()
            .all()
        )
        if not changed:
            counts = count_sweep_jobs(session, [sweep_id])[sweep_id]
            session.commit()  # it wrote nothing
            raise SweepFinished(sweep_id, counts)
        session.commit()
    session.expire_all()
    return list(session.scalars(select(Job).where(Job.id.in_(changed)).order_by(Job.id)))
