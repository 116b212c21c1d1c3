"""Trained models (one per succeeded job; the model id is the job id) and prediction."""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import QueryParams, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from service import queue
from service.api.bodies import (
    parse_json,
    read_form_limited,
    read_limited,
    refuse_declared_oversize,
)
from service.api.params import (
    Limit,
    ModelId,
    Offset,
    decimal_int,
    query_names,
    refuse_unknown_query,
)
from service.db import SessionDep
from service.errors import (
    ApiError,
    Conflict,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from service.inference import (
    MAX_MC_PASSES,
    Abandoned,
    DecodeBusy,
    Inputs,
    InvalidInput,
    LoadedModel,
    ModelNotAvailable,
    QueueFull,
    Serving,
    parse_instances,
)
from service.inference.export import export_model
from service.schemas import (
    ErrorResponse,
    ModelPublic,
    ModelsPublic,
    PredictResponse,
)
from service.tables import Job
from service.training.config import REGRESSION_MODELS

router = APIRouter(prefix="/models", tags=["models"])
ERRORS = {
    404: {"model": ErrorResponse, "description": "No job with that id"},
    409: {"model": ErrorResponse, "description": "The job has not succeeded (yet)"},
}
PREDICT_BODY = {
    "parameters": [
        {
            "name": "mc_dropout",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
            "description": "Monte Carlo dropout: K passes with only the dropout layers "
            "sampling; each prediction then has the mean `probabilities`, their `std` and "
            "`mc_dropout`. 422 for a model without active dropout",
        },
        {
            "name": "seed",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
            "description": "seed of the MC dropout masks (default: drawn, and returned)",
        },
        {
            "name": "batching",
            "in": "query",
            "required": False,
            "schema": {"type": "boolean"},
            "description": "false: a forward pass of its own (default TRAINSERVE_BATCHING)",
        },
    ],
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
    },
}


class Overloaded(ApiError):
    """The model's queue is full (503 with Retry-After): the client should retry later."""

    status = 503
    code = "overloaded"


def _trained_job(session: Session, model_id: int) -> Job:
    try:
        job = queue.get_job(session, model_id)
    except queue.JobNotFound as exc:
        raise NotFound(f"model {model_id} does not exist (no job with that id)") from exc
    if job.kind != "train" or job.model in REGRESSION_MODELS:
        what = "a linear regression" if job.model in REGRESSION_MODELS else f"a {job.kind} job"
        raise NotFound(
            f"job {model_id} is {what}: it keeps no model to serve (see its result instead)"
        )
    if not queue.has_trained_model(job):
        raise Conflict(f"job {model_id} has no trained model: its status is {job.status!r}")
    return job


@router.get("", response_model=ModelsPublic, dependencies=[query_names("limit", "offset")])
def list_models(
    request: Request,
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> ModelsPublic:
    """Trained models, newest first."""
    cache = request.app.state.model_cache
    jobs, count = queue.list_trained_models(session, limit=limit, offset=offset)
    return ModelsPublic(
        data=[ModelPublic.from_job(j, loaded=cache.is_loaded(j.id)) for j in jobs], count=count
    )


@router.get(
    "/{model_id}", response_model=ModelPublic, responses=ERRORS, dependencies=[query_names()]
)
def get_model(model_id: ModelId, request: Request, session: SessionDep) -> ModelPublic:
    """One trained model: network, configuration and test accuracy."""
    job = _trained_job(session, model_id)
    return ModelPublic.from_job(job, loaded=request.app.state.model_cache.is_loaded(job.id))


def _check_succeeded(session_factory: sessionmaker[Session], model_id: int) -> None:
    with session_factory() as session:
        _trained_job(session, model_id)


async def ensure_succeeded(request: Request, model_id: int) -> None:
    """NotFound: no such job; Conflict: it has not succeeded. A succeeded job never changes,
    so the database is asked once per id."""
    serving: Serving = request.app.state.serving
    if model_id not in serving.succeeded:
        await run_in_threadpool(_check_succeeded, request.app.state.session_factory, model_id)
        serving.succeeded.add(model_id)


async def servable_model(request: Request, model_id: int) -> LoadedModel:
    """The loaded model of a succeeded job (loaded now if need be); Conflict: no usable files."""
    await ensure_succeeded(request, model_id)
    return await loaded_model(request.app.state.serving, model_id)


async def loaded_model(serving: Serving, model_id: int) -> LoadedModel:
    loaded = serving.cache.peek(model_id)
    if loaded is not None:
        return loaded
    try:
        return await run_in_threadpool(serving.cache.get, model_id)
    except ModelNotAvailable as exc:
        raise Conflict(f"model {model_id} cannot be loaded: {exc}") from exc


async def _uploaded_files(request: Request, max_instances: int) -> list[tuple[str | None, bytes]]:
    """The (file name, bytes) of each multipart ``files`` part; the body is held to
    TRAINSERVE_MAX_UPLOAD_BYTES as a whole, chunked or not."""
    max_bytes = request.app.state.settings.max_upload_bytes
    try:
        form = await read_form_limited(
            request, max_bytes, max_files=max_instances, max_fields=max_instances
        )
    except MultiPartException as exc:
        detail = exc.message
        if "Too many files" in detail:
            reason = f"at most {max_instances} images per request ({detail})"
            raise InvalidRequest.for_fields([("files", reason)]) from exc
        if "exceeded" in detail.lower() or "size" in detail.lower():
            raise PayloadTooLarge(f"a part of the upload is too large ({detail})") from exc
        raise InvalidRequest.for_fields([("body", f"malformed multipart body ({detail})")]) from exc
    try:
        parts = form.getlist("files")
        # A part without a file name arrives as text (curl -F 'files=<x.png'): refused by its
        # place, not skipped, or the answer would leave out an image without saying so.
        texts = [i for i, v in enumerate(parts) if not isinstance(v, UploadFile)]
        if texts:
            reason = (
                "came as a text field, without a file name; send each image as a file "
                "(curl -F files=@image.png)"
            )
            raise InvalidRequest.for_fields([(f"files[{i}]", reason) for i in texts])
        uploads = [v for v in parts if isinstance(v, UploadFile)]
        others = sorted({k for k in form if k != "files"})
        if not uploads:
            reason = "upload one or more images in the multipart field 'files'"
            if others:
                reason += f" (got fields {others})"
            raise InvalidRequest.for_fields([("files", reason)])
        if others:  # mc_dropout and seed go in the query string with multipart
            reason = "unknown field: images go in 'files', mc_dropout and seed in the query"
            raise InvalidRequest.for_fields([(k, reason) for k in others])
        return [(u.filename, await u.read()) for u in uploads]
    finally:
        await form.close()


PREDICT_QUERY = ("mc_dropout", "seed", "batching")


def _query_int(query: QueryParams, name: str, low: int, high: int) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    value = decimal_int(raw) if raw == raw.strip() else None  # ' 2' is no more 2 than '+2'
    if value is None or not low <= value <= high:
        reason = f"must be an integer from {low} to {high}, got {raw!r}"
        raise InvalidRequest.for_fields([(name, reason)])
    return value


def _query_bool(query: QueryParams, name: str) -> bool | None:
    raw = query.get(name)
    if raw is None:
        return None
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if raw.lower() not in value:
        raise InvalidRequest.for_fields([(name, f"must be true or false, got {raw!r}")])
    return value[raw.lower()]


def _body_int(payload: object, name: str, low: int, high: int) -> int | None:
    """An optional integer field next to "instances" in the JSON body."""
    if not isinstance(payload, dict) or payload.get(name) is None:
        return None
    value = payload[name]
    if type(value) is not int or not low <= value <= high:
        reason = f"must be an integer from {low} to {high}, got {json.dumps(value)}"
        raise InvalidRequest.for_fields([(name, reason)])
    return value


JSON_BODY_KEYS = ("instances", "mc_dropout", "seed")


def _refuse_unknown_keys(payload: object) -> None:
    """A misspelt key ("mc_droput") must not quietly give a plain prediction."""
    if isinstance(payload, dict):
        unknown = sorted(k for k in payload if k not in JSON_BODY_KEYS)
        if unknown:
            known = ", ".join(JSON_BODY_KEYS)
            raise InvalidRequest.for_fields(
                [(k, f"unknown field (known: {known})") for k in unknown]
            )


def _one_of(name: str, query: int | None, body: int | None) -> int | None:
    """A parameter given in the query, the JSON body or both (then the same value)."""
    if query is not None and body is not None and query != body:
        reason = f"given twice with different values: {query} in the query, {body} in the body"
        raise InvalidRequest.for_fields([(name, reason)])
    return query if query is not None else body


NPY_TYPES = ("application/x-npy", "application/octet-stream")
SEED_MAX = 2**31 - 1


@router.post(
    "/{model_id}/predict",
    response_model=PredictResponse,
    responses={
        **ERRORS,
        413: {"model": ErrorResponse, "description": "Body too large"},
        415: {"model": ErrorResponse, "description": "Not multipart, JSON or .npy"},
        503: {"model": ErrorResponse, "description": "The model's queue is full; see Retry-After"},
    },
    openapi_extra=PREDICT_BODY,
)
async def predict(model_id: ModelId, request: Request) -> JSONResponse:
    """Classify images with dropout off: multipart `files` (images or .npy), JSON
    `{"instances": [...]}`, or an `application/x-npy` body."""
    settings = request.app.state.settings
    serving: Serving = request.app.state.serving
    # Query parameters by hand: FastAPI's per-parameter machinery costs more than the forward.
    query = request.query_params
    refuse_unknown_query(query, PREDICT_QUERY)
    mc_dropout = _query_int(query, "mc_dropout", 1, MAX_MC_PASSES)
    seed = _query_int(query, "seed", 0, SEED_MAX)
    batching = _query_bool(query, "batching")
    await ensure_succeeded(request, model_id)
    refuse_declared_oversize(request, settings.max_upload_bytes)
    loaded = await loaded_model(serving, model_id)

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    max_instances = settings.max_predict_instances
    images: Inputs
    try:
        if content_type == "multipart/form-data":
            uploads = await _uploaded_files(request, max_instances)
            # Decoded off the event loop, each file brought to the model's input at once.
            images = await serving.decode_uploads(loaded, uploads, max_images=max_instances)
        elif content_type in ("application/json", ""):
            body = await read_limited(request, settings.max_upload_bytes)
            payload, images = await serving.parse_body(
                body, lambda: _read_instances(body, max_instances, loaded.instance_shapes)
            )
            mc_dropout = _one_of(
                "mc_dropout", mc_dropout, _body_int(payload, "mc_dropout", 1, MAX_MC_PASSES)
            )
            seed = _one_of("seed", seed, _body_int(payload, "seed", 0, SEED_MAX))
        elif content_type in NPY_TYPES:
            body = await read_limited(request, settings.max_upload_bytes)
            images = await serving.decode_npy_body(loaded, body, max_images=max_instances)
        else:
            raise UnsupportedMediaType(
                f"content type {content_type!r} is not accepted; send multipart/form-data "
                "with 'files', application/json with 'instances', or application/x-npy"
            )
    except InvalidInput as exc:
        raise InvalidRequest.for_fields([(exc.field, exc.reason)]) from exc
    except DecodeBusy as exc:
        raise Overloaded(str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc

    if mc_dropout is not None:
        return await _predict_mc(request, serving, loaded, images, mc_dropout, seed)
    if seed is not None:  # dropout off: there is nothing to seed, and silence would mislead
        raise InvalidRequest.for_fields([("seed", "only with mc_dropout (plain predictions "
                                          "are deterministic)")])  # fmt: skip
    try:
        # Preprocessing happens with the forward pass, once per batch, off the event loop.
        probabilities = await serving.probabilities(loaded, images, batching=batching)
    except QueueFull as exc:
        raise Overloaded(str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc
    return JSONResponse({"model_id": model_id, "predictions": _predictions(loaded, probabilities)})


def _read_instances(
    body: bytes, max_instances: int, shapes: tuple[tuple[int, int], ...]
) -> tuple[Any, list[np.ndarray]]:
    """A JSON predict body -> (the payload, its instances as (H, W) pixel arrays)."""
    try:
        payload = parse_json(body)
    except ValueError as exc:
        raise InvalidRequest.for_fields([("body", f"not valid JSON ({exc})")]) from exc
    images = parse_instances(payload, max_instances=max_instances, shapes=shapes)
    _refuse_unknown_keys(payload)
    return payload, images


def _predictions(loaded: LoadedModel, probabilities: torch.Tensor) -> list[dict[str, Any]]:
    names = loaded.description.class_names
    labels = probabilities.argmax(dim=1).tolist()
    return [
        {"label": k, "class_name": names[k], "probabilities": row}
        for k, row in zip(labels, probabilities.tolist(), strict=True)
    ]


async def _predict_mc(
    request: Request,
    serving: Serving,
    loaded: LoadedModel,
    images: Inputs,
    passes: int,
    seed: int | None,
) -> JSONResponse:
    if not loaded.has_active_dropout:
        reason = (
            f"model {loaded.job_id} ({loaded.description.model}) has no active dropout "
            "layer (none, or p = 0): there is nothing to sample"
        )
        raise InvalidRequest.for_fields([("mc_dropout", reason)])
    if seed is None:
        seed = secrets.randbelow(SEED_MAX + 1)
    try:
        mean, std = await serving.mc_dropout(
            loaded, images, passes, seed, abandoned=request.is_disconnected
        )
    except QueueFull as exc:
        raise Overloaded(str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc
    except Abandoned as exc:  # nobody is left to answer: the error handler logs it as such
        raise ClientDisconnect() from exc
    predictions = _predictions(loaded, mean)
    for prediction, row in zip(predictions, std.tolist(), strict=True):
        prediction["std"] = row
        prediction["mc_dropout"] = passes
    return JSONResponse({"model_id": loaded.job_id, "predictions": predictions, "seed": seed})


EXPORT_FILES = {
    "onnx": ("onnx", "application/octet-stream"),
    "torchscript": ("torchscript.pt", "application/octet-stream"),
    "safetensors": ("safetensors", "application/octet-stream"),
}


@router.get(
    "/{model_id}/export",
    responses={
        **ERRORS,
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The model file. ONNX and TorchScript take `input` float32 "
            "(N, 1, side, side) pixel values 0-255 and give `probabilities` (N, 10), "
            "dynamic batch; safetensors is the stored state_dict",
        },
    },
    response_class=FileResponse,
    dependencies=[query_names("format")],
)
async def export(
    model_id: ModelId,
    request: Request,
    fmt: Annotated[
        Literal["onnx", "torchscript", "safetensors"],
        Query(alias="format", description="onnx, torchscript or safetensors"),
    ],
) -> FileResponse:
    """Download the trained model as ONNX, TorchScript or safetensors (dropout off)."""
    loaded = await servable_model(request, model_id)
    artifact_dir = request.app.state.settings.resolved_artifact_dir
    if fmt == "safetensors":  # the stored file itself: not one that changed since it was loaded
        try:
            cache = request.app.state.model_cache
            await run_in_threadpool(cache.check_servable, model_id, files_too=True)
        except ModelNotAvailable as exc:
            raise Conflict(f"model {model_id} cannot be exported: {exc}") from exc
    try:
        path = await run_in_threadpool(export_model, artifact_dir, loaded, fmt)
    except FileNotFoundError as exc:  # the weights went away under us
        raise Conflict(f"model {model_id} has no files to export ({exc})") from exc
    suffix, media_type = EXPORT_FILES[fmt]
    return FileResponse(
        path, media_type=media_type, filename=f"trainserve-model-{model_id}.{suffix}"
    )
