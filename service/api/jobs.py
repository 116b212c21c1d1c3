"""Training jobs: submit, list, inspect, follow the curves, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from service import artifacts, datasets_store, queue
from service.api.json_body_limit import JSON_BODY_ROUTE
from service.api.params import (
    IdempotencyKey,
    JobId,
    Limit,
    Offset,
    idempotency_key_of,
    query_names,
)
from service.db import SessionDep
from service.errors import Busy, Conflict, InvalidRequest, NotFound
from service.schemas import (
    EpochMetricPublic,
    EpochMetricsPublic,
    ErrorResponse,
    JobCreate,
    JobPublic,
    JobsPublic,
)
from service.tables import Job, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])
STATUSES = tuple(s.value for s in JobStatus)
NOT_FOUND = {404: {"model": ErrorResponse, "description": "No job with that id"}}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    **JSON_BODY_ROUTE,
)
def submit_job(
    body: JobCreate,
    request: Request,
    session: SessionDep,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Queue a job (train, lr_find or kfold); a worker picks it up by priority, then age."""
    key = idempotency_key_of(request, idempotency_key)
    config, problems = body.resolve(datasets_store.stored_facts(session, body.dataset))
    if problems:
        raise InvalidRequest.for_fields(problems)
    try:
        job = queue.submit_job(
            session,
            config.to_dict(),
            priority=body.priority,
            max_attempts=request.app.state.settings.max_attempts,
            idempotency_key=key,
            drawn=frozenset({"seed"}) if body.seed is None else frozenset(),
        )
    except queue.IdempotencyKeyReused as exc:
        # As the IETF idempotency-key draft says: a reused key with another payload is a 422.
        raise InvalidRequest.for_fields([("Idempotency-Key", str(exc))]) from exc
    request.app.state.on_queued()
    return JobPublic.from_job(job)


@router.get("", response_model=JobsPublic, dependencies=[query_names("status", "limit", "offset")])
def list_jobs(
    session: SessionDep,
    status: Annotated[str | None, Query(description=f"{STATUSES}; empty: every status")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> JobsPublic:
    """Jobs, newest first."""
    # Empty, like no parameter, means every status: ?status=&limit=10 reads as "no filter".
    if status and status not in STATUSES:
        reason = f"must be one of {', '.join(STATUSES)} (or empty: every status), not {status!r}"
        raise InvalidRequest.for_fields([("status", reason)])
    jobs, count = queue.list_jobs(session, status=status or None, limit=limit, offset=offset)
    return JobsPublic(data=[JobPublic.from_job(j) for j in jobs], count=count)


@router.get(
    "/{job_id}", response_model=JobPublic, responses=NOT_FOUND, dependencies=[query_names()]
)
def get_job(job_id: JobId, session: SessionDep) -> JobPublic:
    """One job: its status, configuration, progress and final metrics."""
    try:
        return JobPublic.from_job(queue.get_job(session, job_id))
    except queue.JobNotFound as exc:
        raise NotFound(str(exc)) from exc


@router.get(
    "/{job_id}/metrics",
    response_model=EpochMetricsPublic,
    responses=NOT_FOUND,
    dependencies=[query_names()],
)
def get_metrics(job_id: JobId, session: SessionDep) -> EpochMetricsPublic:
    """Per-epoch training and validation curves, epoch numbered from 1."""
    try:
        rows = queue.list_epoch_metrics(session, job_id)
    except queue.JobNotFound as exc:
        raise NotFound(str(exc)) from exc
    return EpochMetricsPublic(data=[EpochMetricPublic.from_row(r) for r in rows], count=len(rows))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={**NOT_FOUND, 409: {"model": ErrorResponse, "description": "Already finished"}},
    dependencies=[query_names()],
)
def cancel_job(job_id: JobId, request: Request, session: SessionDep) -> JobPublic:
    """Cancel: a queued job at once, a running one within seconds (see cancel_requested)."""
    try:
        job = queue.cancel_job(session, job_id)
    except queue.JobNotFound as exc:
        raise NotFound(str(exc)) from exc
    except queue.JobFinished as exc:
        raise Conflict(f"{exc}; only queued or running jobs can be cancelled") from exc
    except queue.JobBusy as exc:
        raise Busy(str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc
    drop_resume_checkpoint(request, job)
    return JobPublic.from_job(job)


def drop_resume_checkpoint(request: Request, job: Job) -> None:
    """After a cancel: a job that was queued to resume kept its last checkpoint (AlexNet's:
    178 MiB), which nothing will resume now. (A running job's worker removes its own.)"""
    if job.status == JobStatus.CANCELLED.value:
        artifacts.remove_checkpoint(request.app.state.settings.resolved_artifact_dir, job.id)
