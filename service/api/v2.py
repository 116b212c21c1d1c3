"""The Open Inference Protocol v2 (KServe / Triton HTTP/REST), JSON tensors only.

A model's name is its id (the job id), its one version "1". Input ``input``: FP32 or UINT8,
shape [N, 1, H, W] or [N, H, W], pixel values 0-255 (resized to the model's side like any
upload); output ``probabilities``: FP32 [N, classes]. Errors are ``{"error": "..."}``: 404 an
unknown model, 400 a model that is not ready (its job has not succeeded) or a bad request,
413 a body over the limit, 503 a full queue (with Retry-After).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.api.bodies import parse_json, read_limited, refuse_declared_oversize
from service.api.params import decimal_int
from service.api.trained_models import ensure_succeeded, servable_model
from service.artifacts import read_description
from service.errors import ApiError, Conflict, InvalidRequest, NotFound
from service.inference import (
    MAX_MC_PASSES,
    Abandoned,
    BatchStats,
    DecodeBusy,
    InvalidInput,
    ModelNotAvailable,
    QueueFull,
    Serving,
    tensor_pixels,
)
from service.inference.export import INPUT_NAME, OUTPUT_NAME

SERVER_NAME = "trainserve"
VERSION = "1"  # every model has this one version
STD_OUTPUT = "std"  # with parameters.mc_dropout: the standard deviation of the probabilities
ID_MAX = 2**31 - 1


def oip_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class OipRoute(APIRoute):
    """Answers every error of its route in the protocol's shape, ``{"error": "..."}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def oip_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                # v1's 409 (job not succeeded) and 422 (bad input) are the protocol's 400.
                status = 400 if exc.status in (409, 422) else exc.status
                return oip_error(status, exc.message, exc.headers)
            except RequestValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}"
                    for e in exc.errors()
                )
                return oip_error(400, problems or "invalid request")
            except StarletteHTTPException as exc:
                return oip_error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

        return oip_handler


router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], route_class=OipRoute)


def _model_id(name: str, version: str | None) -> int:
    job_id = decimal_int(name) if name.isdigit() else None  # no sign, no spaces
    if job_id is None or not 1 <= job_id <= ID_MAX:
        raise NotFound(f"unknown model {name!r}: model names are the ids of succeeded jobs")
    if version is not None and version != VERSION:
        raise NotFound(f"model {name!r} has no version {version!r} (only {VERSION!r})")
    return job_id


@router.get("")
def server_metadata(request: Request) -> dict[str, Any]:
    """Server metadata."""
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": []}


@router.get("/health/live")
def live() -> dict[str, bool]:
    """The server answers."""
    return {"live": True}


def _database_answers(request: Request) -> bool:
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    """Ready to serve: the database answers."""
    if not await run_in_threadpool(_database_answers, request):
        return oip_error(503, "not ready: the database does not answer")
    return JSONResponse({"ready": True})


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}", include_in_schema=False)
async def model_metadata(request: Request, name: str, version: str | None = None) -> JSONResponse:
    """Model metadata: its input and output tensors, and whether it is loaded (not loading it)."""
    job_id = _model_id(name, version)
    await ensure_succeeded(request, job_id)
    loaded = request.app.state.model_cache.peek(job_id)
    if loaded is not None:
        description = loaded.description
    else:
        artifact_dir = request.app.state.settings.resolved_artifact_dir
        try:
            description = await run_in_threadpool(read_description, artifact_dir, job_id)
        except (OSError, ValueError, TypeError) as exc:
            raise Conflict(f"model {name} has no usable description ({exc})") from exc
    side, classes = int(description.input_side), len(description.class_names)
    return JSONResponse(
        {
            "name": name,
            "versions": [VERSION],
            "platform": "pytorch",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 1, side, side]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, classes]}],
            "parameters": {
                "network": description.model,
                "class_names": list(description.class_names),
                "loaded": loaded is not None,
            },
        }
    )


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready", include_in_schema=False)
async def model_ready(request: Request, name: str, version: str | None = None) -> JSONResponse:
    """200 when the model can serve (its job succeeded and its files are there and sound;
    loaded on its first inference, not by this probe), else 400."""
    job_id = _model_id(name, version)
    await ensure_succeeded(request, job_id)
    try:
        await run_in_threadpool(request.app.state.model_cache.check_servable, job_id)
    except ModelNotAvailable as exc:
        raise Conflict(f"model {job_id} cannot be loaded: {exc}") from exc
    return JSONResponse({"name": name, "ready": True})


@router.get("/models/{name}/stats")
async def model_stats(request: Request, name: str) -> JSONResponse:
    """Batching statistics of the model since the server started (empty until it serves); 404
    for a model that does not exist, 400 for a job that has not succeeded, as for metadata."""
    job_id = _model_id(name, None)
    await ensure_succeeded(request, job_id)
    serving: Serving = request.app.state.serving
    stats = serving.stats()
    empty = {"queued": 0, **BatchStats().as_dict()}
    model = stats.pop("models", {}).get(str(job_id), empty)  # type: ignore[union-attr]
    return JSONResponse({"name": name, "version": VERSION, **stats, **model})


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message)


def _parse_parameters(parameters: object) -> tuple[int | None, int | None]:
    if parameters is None:
        return None, None
    if not isinstance(parameters, dict):
        raise _bad("parameters: must be an object")
    values = []
    for key, low, high in (("mc_dropout", 1, MAX_MC_PASSES), ("seed", 0, ID_MAX)):
        value = parameters.get(key)
        if value is not None and (type(value) is not int or not low <= value <= high):
            raise _bad(f"parameters.{key}: must be an integer from {low} to {high}")
        values.append(value)
    mc_dropout, seed = values
    if seed is not None and mc_dropout is None:  # dropout off: nothing to seed, as in v1
        raise _bad("parameters.seed: only with parameters.mc_dropout (plain inference is "
                   "deterministic)")  # fmt: skip
    return mc_dropout, seed


def _wants_binary(parameters: object) -> bool:
    return isinstance(parameters, dict) and bool(
        parameters.get("binary_data") or parameters.get("binary_data_size")
    )


BINARY_UNSUPPORTED = (
    "binary tensor data is not supported: send JSON tensors (tritonclient: binary_data=False)"
)


@dataclass
class InferRequest:
    """What an infer body asks for, checked."""

    payload: dict[str, Any]
    pixels: np.ndarray
    mc_dropout: int | None
    seed: int | None
    wanted: list[str]  # output names, in the order to answer them


def _wanted_outputs(outputs: object, mc_dropout: int | None) -> list[str]:
    known = [OUTPUT_NAME, STD_OUTPUT] if mc_dropout is not None else [OUTPUT_NAME]
    if outputs is None:
        return known
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise _bad("outputs: expected a list of objects with a 'name'")
    if not outputs:  # as Triton: none named is every output
        return known
    wanted = [o.get("name") for o in outputs]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise _bad(f"outputs: unknown output {unknown[0]!r} (known: {sorted(known)})")
    repeated = [w for i, w in enumerate(wanted) if w in wanted[:i]]
    if repeated:
        raise _bad(f"outputs: {repeated[0]!r} is named twice")
    if any(_wants_binary(o.get("parameters")) for o in outputs):
        raise _bad(BINARY_UNSUPPORTED)
    return wanted


def read_infer_body(body: bytes, *, max_images: int) -> InferRequest:
    """The body of an infer request, checked and turned into (N, H, W) pixels; raises
    InvalidRequest (400 here) naming what is wrong."""
    try:
        payload = parse_json(body)
    except ValueError as exc:
        raise _bad(f"the body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise _bad("the body must be a JSON object with 'inputs'")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _bad(f"inputs: expected a list with one tensor named {INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise _bad(f"inputs[0].name: expected {INPUT_NAME!r}, got {tensor.get('name')!r}")
    if _wants_binary(tensor.get("parameters")):
        raise _bad(BINARY_UNSUPPORTED)
    if "id" in payload and not isinstance(payload["id"], str):  # the protocol's id is a string
        raise _bad(f"id: expected a string, got {json.dumps(payload['id'])[:40]}")
    mc_dropout, seed = _parse_parameters(payload.get("parameters"))
    wanted = _wanted_outputs(payload.get("outputs"), mc_dropout)
    try:
        pixels = tensor_pixels(
            tensor.get("data"),
            tensor.get("shape"),
            tensor.get("datatype"),
            "inputs[0]",
            max_images=max_images,
        )
    except InvalidInput as exc:
        raise _bad(str(exc)) from None
    return InferRequest(payload, pixels, mc_dropout, seed, wanted)


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer", include_in_schema=False)
async def infer(request: Request, name: str, version: str | None = None) -> JSONResponse:
    """Inference: one input tensor of pixels -> class probabilities, dropout off (or MC)."""
    job_id = _model_id(name, version)
    settings = request.app.state.settings
    serving: Serving = request.app.state.serving
    loaded = await servable_model(request, job_id)
    if request.headers.get("inference-header-content-length") is not None:
        raise _bad(BINARY_UNSUPPORTED)
    refuse_declared_oversize(request, settings.max_upload_bytes)
    body = await read_limited(request, settings.max_upload_bytes)
    max_images = settings.max_predict_instances
    try:
        asked = await serving.parse_body(body, lambda: read_infer_body(body, max_images=max_images))
    except DecodeBusy as exc:
        return oip_error(503, str(exc), {"Retry-After": str(exc.retry_after)})
    mc_dropout, seed = asked.mc_dropout, asked.seed
    results = {}
    if mc_dropout is None:
        try:
            results[OUTPUT_NAME] = await serving.probabilities(loaded, asked.pixels)
        except QueueFull as exc:
            return oip_error(503, str(exc), {"Retry-After": str(exc.retry_after)})
    else:
        if not loaded.has_active_dropout:
            raise _bad(f"parameters.mc_dropout: model {name} has no active dropout layer")
        seed = secrets.randbelow(ID_MAX + 1) if seed is None else seed
        try:
            mean, std = await serving.mc_dropout(
                loaded, asked.pixels, mc_dropout, seed, abandoned=request.is_disconnected
            )
        except QueueFull as exc:
            return oip_error(503, str(exc), {"Retry-After": str(exc.retry_after)})
        except Abandoned as exc:  # nobody is left to answer: the error handler logs it as such
            raise ClientDisconnect() from exc
        results = {OUTPUT_NAME: mean, STD_OUTPUT: std}
    response: dict[str, Any] = {"model_name": name, "model_version": VERSION}
    if "id" in asked.payload:
        response["id"] = asked.payload["id"]
    if mc_dropout is not None:
        response["parameters"] = {"mc_dropout": mc_dropout, "seed": seed}
    response["outputs"] = [
        {
            "name": out,
            "datatype": "FP32",
            "shape": list(results[out].shape),
            "data": results[out].float().flatten().tolist(),
        }
        for out in asked.wanted
    ]
    return JSONResponse(response)
