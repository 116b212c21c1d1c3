"""Sweeps: one job per point of a grid of job fields, compared by validation score, and
cancelled as one."""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import ValidationError

from service import datasets_store, queue
from service.api.jobs import drop_resume_checkpoint
from service.api.json_body_limit import JSON_BODY_ROUTE
from service.api.params import (
    IdempotencyKey,
    Limit,
    Offset,
    SweepId,
    idempotency_key_of,
    query_names,
)
from service.db import SessionDep
from service.errors import Busy, Conflict, InvalidRequest, NotFound
from service.schemas import (
    MAX_SWEEP_POINTS,
    ErrorResponse,
    JobCreate,
    SweepCreate,
    SweepPointPublic,
    SweepPublic,
    SweepsPublic,
    SweepSummaryPublic,
    finite_or_none,
    input_side_of,
)
from service.tables import Job, JobStatus
from service.training.config import TrainConfig

router = APIRouter(prefix="/sweeps", tags=["sweeps"])
NOT_FOUND = {404: {"model": ErrorResponse, "description": "No sweep with that id"}}
# Only a succeeded point is a result: a job cancelled as it finished, or failed late, may keep
# metrics but has no model to serve, so it never ranks above one that succeeded.
_ORDER = (
    "succeeded points by {} (one without it last among them), then running, queued, "
    "cancelled and failed points, whatever their metrics; ties by job id"
)
ORDER_CLASSIFICATION = _ORDER.format("val_acc descending")
ORDER_REGRESSION = _ORDER.format("val_loss ascending")
# Points trained with different regression losses: their val_loss values are in different units
# (l2 is half the squared error, l1 the absolute error), so they are ranked by one yardstick.
ORDER_REGRESSION_MSE = _ORDER.format(
    "val_mse ascending (mean squared error on the validation split, whatever loss each point "
    "trained on: the points' losses differ, so their val_loss values do not compare)"
)
_STATUS_RANK = {
    status.value: rank
    for rank, status in enumerate(
        (JobStatus.SUCCEEDED, JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.CANCELLED,
         JobStatus.FAILED)
    )
}  # fmt: skip
# A grid whose point count passes this is not multiplied out further: its count is only shown
# as "over" it (2 values for each of 15,000 keys is a 4,516-digit number, which str() refuses).
_COUNT_SHOWN_UP_TO = 10**12


def _points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def _hashable(value: Any) -> Any:
    """A JSON value as a hashable one that compares as the value does (1 and 1.0 are equal;
    [1] and [1.0] too; true is not 1): lists become tuples, objects frozensets of their items."""
    if isinstance(value, bool):  # Python's True == 1; JSON's true is no number
        return ("bool", value)
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return frozenset((k, _hashable(v)) for k, v in value.items())
    return value


def _first_repeat(values: list[Any]) -> int | None:
    """The index of the first value met a second time (1 and 1.0 count as one), else None.
    Infinities (1e400 parses as inf) are left to the field's own check, which refuses them."""
    seen: set[Any] = set()
    for i, value in enumerate(values):
        if isinstance(value, float) and not math.isfinite(value):
            continue
        key = _hashable(value)
        if key in seen:
            return i
        seen.add(key)
    return None


def _point_count(grid: dict[str, list[Any]]) -> int | None:
    """How many points the grid has, in O(keys); None when that passes _COUNT_SHOWN_UP_TO."""
    if any(not values for values in grid.values()):
        return 0
    count = 1
    for values in grid.values():
        count *= len(values)
        if count > _COUNT_SHOWN_UP_TO:
            return None
    return count


def _field_of(loc: tuple[Any, ...], grid: dict[str, list[Any]]) -> str:
    name = str(loc[0]) if loc else "base"
    return f"grid.{name}" if name in grid else f"base.{name}"


def _resolve_points(body: SweepCreate, session: Any) -> list[TrainConfig]:
    """Every point's resolved config, or a 422 naming grid.<field> / base.<field>."""
    # First, from the lists' lengths alone: a grid too large is refused before any check that
    # reads its values (a 1 MiB body holds 100,000 of them).
    count = _point_count(body.grid)
    if count is None or count > MAX_SWEEP_POINTS:
        shown = f"over {_COUNT_SHOWN_UP_TO:,}" if count is None else str(count)
        raise InvalidRequest.for_fields([("grid", f"{shown} points; at most {MAX_SWEEP_POINTS}")])
    problems: list[tuple[str, str]] = []
    for key, values in body.grid.items():
        if key in body.base:
            problems.append((f"grid.{key}", "also given in base; give it in one place"))
        if not values:
            problems.append((f"grid.{key}", "needs at least one value"))
        # Every job field is one value; a list or an object (500 deep, it made _hashable
        # recurse past Python's limit) is refused, and not compared.
        scalars = [v for v in values if not isinstance(v, list | dict)]
        if len(scalars) < len(values):
            problems.append(
                (f"grid.{key}", "each value is a number, string, boolean or null, not a list "
                 "or an object")
            )  # fmt: skip
        # A value of the wrong type is named for its type, not as a repeat of its equal
        # (1.0 for an integer field is not "1 given twice"), and takes no part in the check.
        type_problems = [JobCreate.json_type_problem(key, v) for v in scalars]
        first_wrong = next((p for p in type_problems if p is not None), None)
        if first_wrong is not None:
            problems.append((f"grid.{key}", first_wrong))
            scalars = [v for v, p in zip(scalars, type_problems, strict=True) if p is None]
        repeat = _first_repeat(scalars)
        if repeat is not None:
            shown = json.dumps(scalars[repeat])  # JSON's true/null, not Python's True/None
            problems.append((f"grid.{key}", f"{shown} is given twice (points would repeat)"))
        if key == "priority":
            problems.append(("grid.priority", "a sweep's jobs share the base's priority"))
    if body.base.get("kind") == "lr_find" or "lr_find" in body.grid.get("kind", []):
        problems.append(
            ("grid.kind" if "kind" in body.grid else "base.kind",
             "a sweep ranks its points by validation score and an lr_find job has none; "
             "submit lr_find jobs one by one (POST /jobs) and compare their suggested_lr")
        )  # fmt: skip
    if problems:
        raise InvalidRequest.for_fields(problems)
    # Points differ only in the grid's knobs: without a seed, they all share one drawn seed.
    seed = {} if "seed" in body.base or "seed" in body.grid else {"seed": random.randrange(2**31)}
    configs: list[TrainConfig] = []
    seen: dict[str, dict[str, Any]] = {}  # resolved config -> the first point that gave it
    for point in _points(body.grid):
        try:
            job = JobCreate.model_validate({**body.base, **seed, **point})
        except ValidationError as exc:
            for error in exc.errors():
                reason = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
                if error.get("type") == "missing":
                    reason = "this field is required"
                elif error.get("type") == "extra_forbidden":
                    reason = "unknown field"
                problems.append((_field_of(tuple(error.get("loc", ())), body.grid), reason))
            break
        config, point_problems = job.resolve(datasets_store.stored_facts(session, job.dataset))
        if point_problems:
            problems += [
                (f"grid.{f}" if f in body.grid else f"base.{f}", f"{r} (at point {point})")
                for f, r in point_problems
            ]
            break
        effective = {**config.to_dict(), "resize": input_side_of(config)}  # null: the default
        key = json.dumps(effective, sort_keys=True, default=str)
        if key in seen:  # e.g. null (the model's default) and that default's value
            first = seen[key]
            problems += [
                (
                    f"grid.{f}",
                    f"points {json.dumps(first)} and {json.dumps(point)} train the same job",
                )
                for f in point
                if point[f] != first[f]
            ]
            break
        seen[key] = point
        configs.append(config)
    if problems:
        raise InvalidRequest.for_fields(problems)
    return configs


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SweepPublic,
    **JSON_BODY_ROUTE,
)
def create_sweep(
    body: SweepCreate,
    request: Request,
    session: SessionDep,
    idempotency_key: IdempotencyKey = None,
) -> SweepPublic:
    """Validate every point of the grid, then queue one job per point in one transaction."""
    key = idempotency_key_of(request, idempotency_key)
    configs = _resolve_points(body, session)
    priority = int(body.base.get("priority", 0))
    try:
        sweep, _ = queue.create_sweep(
            session,
            base=body.base,
            grid=body.grid,
            configs=[c.to_dict() for c in configs],
            priority=priority,
            max_attempts=request.app.state.settings.max_attempts,
            idempotency_key=key,
        )
    except queue.IdempotencyKeyReused as exc:
        # As for POST /jobs (the IETF idempotency-key draft): another payload is a 422.
        raise InvalidRequest.for_fields([("Idempotency-Key", str(exc))]) from exc
    request.app.state.on_queued()
    return _sweep_public(session, sweep.id)


def val_mse(job: Job) -> float | None:
    """A regression job's validation MSE (a K-fold job's mean over its folds), if recorded."""
    result = job.result or {}
    value = result.get("val_mse", result.get("val_mse_mean"))
    return float(value) if isinstance(value, int | float) else None


def _score(job: Job, order: str) -> float | None:
    """The figure ``order`` ranks by, oriented so that lower is better."""
    if order == ORDER_CLASSIFICATION:
        return None if job.val_acc is None else -job.val_acc
    return job.val_loss if order == ORDER_REGRESSION else val_mse(job)


def _sort_key(job: Job, order: str) -> tuple[int, int, float, int]:
    """ORDER_*: (status rank, no score, score, job id)."""
    rank = _STATUS_RANK.get(job.status, len(_STATUS_RANK))
    score = _score(job, order)
    if rank != 0 or score is None or not math.isfinite(score):
        return (rank, 1, 0.0, job.id)  # a succeeded point without a score; or not succeeded
    return (0, 0, score, job.id)


def _order(configs: list[TrainConfig]) -> str:
    if not configs or not all(c.is_regression for c in configs):
        return ORDER_CLASSIFICATION
    return ORDER_REGRESSION if len({c.loss or "l2" for c in configs}) == 1 else ORDER_REGRESSION_MSE


def _sweep_public(session: Any, sweep_id: int) -> SweepPublic:
    sweep, jobs = queue.get_sweep(session, sweep_id)
    order = _order([TrainConfig.from_dict(j.config) for j in jobs])
    regression = order != ORDER_CLASSIFICATION
    ranked = sorted(jobs, key=lambda j: _sort_key(j, order))
    # The best point: a succeeded one with a score, never a cancelled or failed one's metrics.
    best = ranked[0] if ranked and _sort_key(ranked[0], order)[:2] == (0, 0) else None
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return SweepPublic(
        id=sweep.id,
        base=sweep.base,
        grid=sweep.grid,
        created_at=sweep.created_at,
        status_counts=counts,
        order=order,
        best_job_id=best.id if best is not None else None,
        points=[
            SweepPointPublic(
                job_id=job.id,
                status=JobStatus(job.status),
                params={key: job.config.get(key) for key in sweep.grid},
                val_acc=finite_or_none(job.val_acc),
                val_loss=finite_or_none(job.val_loss),
                val_mse=finite_or_none(val_mse(job)) if regression else None,
                test_acc=finite_or_none(job.test_acc),
            )
            for job in ranked
        ],
    )


@router.get("", response_model=SweepsPublic, dependencies=[query_names("limit", "offset")])
def list_sweeps(
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> SweepsPublic:
    """Sweeps, newest first, with how many of their jobs are in each status."""
    sweeps, count = queue.list_sweeps(session, limit=limit, offset=offset)
    counts = queue.count_sweep_jobs(session, [s.id for s in sweeps])
    return SweepsPublic(
        data=[SweepSummaryPublic.from_row(s, counts[s.id]) for s in sweeps], count=count
    )


@router.get(
    "/{sweep_id}", response_model=SweepPublic, responses=NOT_FOUND, dependencies=[query_names()]
)
def get_sweep(sweep_id: SweepId, session: SessionDep) -> SweepPublic:
    """The sweep's points with their status: succeeded ones first, best first (val_acc;
    val_loss for regression), then the others (see `order`)."""
    try:
        return _sweep_public(session, sweep_id)
    except queue.SweepNotFound as exc:
        raise NotFound(str(exc)) from exc


@router.post(
    "/{sweep_id}/cancel",
    response_model=SweepPublic,
    responses={
        **NOT_FOUND,
        409: {"model": ErrorResponse, "description": "Every job of the sweep already finished"},
    },
    dependencies=[query_names()],
)
def cancel_sweep(sweep_id: SweepId, request: Request, session: SessionDep) -> SweepPublic:
    """Cancel every unfinished job of the sweep, as POST /jobs/{id}/cancel does each: queued
    ones at once, running ones within seconds; finished ones keep their outcome."""
    try:
        jobs = queue.cancel_sweep(session, sweep_id)
    except queue.SweepNotFound as exc:
        raise NotFound(str(exc)) from exc
    except queue.SweepFinished as exc:
        raise Conflict(f"{exc}; only queued or running jobs can be cancelled") from exc
    except queue.JobBusy as exc:
        raise Busy(str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc
    for job in jobs:
        if job.started_at is not None:  # one that never ran has no checkpoint: no remote delete
            drop_resume_checkpoint(request, job)
    return _sweep_public(session, sweep_id)
