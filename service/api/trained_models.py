"""Trained models (one per succeeded job; the model id is the job id) and prediction."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import queue
from service.api.params import ModelId
from service.db import SessionDep
from service.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from service.inference import InvalidInput, ModelNotAvailable, decode_image, parse_instances
from service.schemas import (
    ErrorResponse,
    ModelPublic,
    ModelsPublic,
    PredictionPublic,
    PredictResponse,
)
from service.tables import Job, JobStatus

router = APIRouter(prefix="/models", tags=["models"])
ERRORS = {
    404: {"model": ErrorResponse, "description": "No job with that id"},
    409: {"model": ErrorResponse, "description": "The job has not succeeded (yet)"},
}
PREDICT_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["files"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "instances": {
                            "type": "array",
                            "description": "28x28 (or input_side x input_side) nested lists "
                            "of pixel values 0-255",
                            "items": {"type": "array", "items": {"type": "array"}},
                        }
                    },
                    "required": ["instances"],
                }
            },
        },
        "required": True,
    }
}


def _trained_job(session: Session, model_id: int) -> Job:
    try:
        job = queue.get_job(session, model_id)
    except queue.JobNotFound as exc:
        raise NotFound(f"model {model_id} does not exist (no job with that id)") from exc
    if job.status != JobStatus.SUCCEEDED.value:
        raise Conflict(f"job {model_id} has no trained model: its status is {job.status!r}")
    return job


@router.get("", response_model=ModelsPublic)
def list_models(
    request: Request,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ModelsPublic:
    """Trained models, newest first."""
    cache = request.app.state.model_cache
    jobs, count = queue.list_trained_models(session, limit=limit, offset=offset)
    return ModelsPublic(
        data=[ModelPublic.from_job(j, loaded=cache.is_loaded(j.id)) for j in jobs], count=count
    )


@router.get("/{model_id}", response_model=ModelPublic, responses=ERRORS)
def get_model(model_id: ModelId, request: Request, session: SessionDep) -> ModelPublic:
    """One trained model: network, configuration and test accuracy."""
    job = _trained_job(session, model_id)
    return ModelPublic.from_job(job, loaded=request.app.state.model_cache.is_loaded(job.id))


async def _images_from_files(request: Request, max_instances: int) -> list[Any]:
    max_bytes = request.app.state.settings.max_upload_bytes
    try:
        form = await request.form(
            max_files=max_instances, max_fields=max_instances, max_part_size=max_bytes
        )
    except StarletteHTTPException as exc:  # starlette reports multipart limits as a 400
        detail = str(exc.detail)
        if "Too many files" in detail:
            reason = f"at most {max_instances} images per request ({detail})"
            raise InvalidRequest.for_fields([("files", reason)]) from exc
        if "exceeded" in detail.lower() or "size" in detail.lower():
            raise PayloadTooLarge(f"a part of the upload is too large ({detail})") from exc
        raise InvalidRequest.for_fields([("body", f"malformed multipart body ({detail})")]) from exc
    try:
        uploads = [v for v in form.getlist("files") if isinstance(v, UploadFile)]
        others = sorted({k for k in form if k != "files"})
        if not uploads:
            reason = "upload one or more images in the multipart field 'files'"
            if others:
                reason += f" (got fields {others})"
            raise InvalidRequest.for_fields([("files", reason)])
        contents = [await u.read() for u in uploads]
    finally:
        await form.close()
    return [decode_image(data, f"files[{i}]") for i, data in enumerate(contents)]


@router.post(
    "/{model_id}/predict",
    response_model=PredictResponse,
    responses={
        **ERRORS,
        413: {"model": ErrorResponse, "description": "Body too large"},
        415: {"model": ErrorResponse, "description": "Neither multipart nor JSON"},
    },
    openapi_extra=PREDICT_BODY,
)
async def predict(model_id: ModelId, request: Request, session: SessionDep) -> PredictResponse:
    """Classify images with dropout off: multipart `files`, or JSON `{"instances": [...]}`."""
    settings = request.app.state.settings
    job = await run_in_threadpool(_trained_job, session, model_id)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"the body is {declared} bytes; the limit is {settings.max_upload_bytes} bytes"
        )
    cache = request.app.state.model_cache
    try:
        loaded = await run_in_threadpool(cache.get, job.id)
    except ModelNotAvailable as exc:
        raise Conflict(f"model {model_id} cannot be loaded: {exc}") from exc

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    max_instances = settings.max_predict_instances
    try:
        if content_type == "multipart/form-data":
            images = await _images_from_files(request, max_instances)
        elif content_type in ("application/json", ""):
            body = await _read_limited(request, settings.max_upload_bytes)
            try:
                payload = json.loads(body)
            except ValueError as exc:
                raise InvalidRequest.for_fields([("body", f"not valid JSON ({exc})")]) from exc
            sides = tuple(sorted({28, loaded.input_side}))
            images = parse_instances(payload, max_instances=max_instances, sides=sides)
        else:
            raise UnsupportedMediaType(
                f"content type {content_type!r} is not accepted; send multipart/form-data "
                "with 'files', or application/json with 'instances'"
            )
    except InvalidInput as exc:
        raise InvalidRequest.for_fields([(exc.field, exc.reason)]) from exc
    predictions = await run_in_threadpool(loaded.predict, images)
    return PredictResponse(
        model_id=job.id,
        predictions=[
            PredictionPublic(label=p.label, class_name=p.class_name, probabilities=p.probabilities)
            for p in predictions
        ],
    )


async def _read_limited(request: Request, limit: int) -> bytes:
    """Read the body, stopping as soon as it passes the limit (chunked uploads too)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
