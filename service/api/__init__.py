"""The FastAPI application: routers for jobs, trained models (predict) and health."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from service.api import catalog, datasets, health, jobs, sweeps, trained_models, v2
from service.api.head_requests import HeadAsGet
from service.api.json_body_limit import JsonBodyLimit
from service.api.reaper import reap_forever
from service.config import Settings, check_inference_device, get_settings
from service.db import make_engine, make_session_factory
from service.errors import install_error_handlers
from service.inference import ModelCache, Serving
from service.schemas import ErrorResponse

DESCRIPTION = """Train the classic networks of *Dive into Deep Learning* (softmax regression,
MLP, LeNet, AlexNet, VGG, NiN) on Fashion-MNIST, follow their curves, and call the trained
models over HTTP with dropout off. Every 4xx has the body `{"error": {...}}` documented below."""


def create_app(
    settings: Settings | None = None,
    *,
    on_shutdown: Callable[[], None] | None = None,
    on_queued: Callable[[], None] | None = None,
) -> FastAPI:
    """The app; `on_shutdown` (blocking, run in a thread) runs when the server stops gracefully,
    before the process exits: `serve` stops its worker pool there. `on_queued` (quick) runs
    after a request has queued jobs: `serve` wakes its idle workers there."""
    settings = settings or get_settings()
    check_inference_device(settings.inference_device)  # fail at start, not on the first predict

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(reap_forever(engine, settings))
        yield
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper
        if on_shutdown is not None:
            await anyio.to_thread.run_sync(on_shutdown)

    app = FastAPI(
        lifespan=lifespan,
        title="trainserve",
        version="0.1.0",
        description=DESCRIPTION,
        responses={422: {"model": ErrorResponse, "description": "Invalid request"}},
    )
    engine = make_engine(settings.resolved_database_url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.on_queued = on_queued or (lambda: None)
    app.state.session_factory = make_session_factory(engine)
    app.state.model_cache = ModelCache(
        settings.resolved_artifact_dir,
        settings.model_cache_size,
        max_bytes=settings.model_cache_bytes,
        device=settings.inference_device,
    )
    app.state.serving = Serving(
        app.state.model_cache,
        batching=settings.batching,
        max_batch_size=settings.batch_max_size,
        max_delay_ms=settings.batch_max_delay_ms,
        max_queue=settings.batch_queue_size,
        threads=settings.inference_threads,
    )
    install_error_handlers(app)
    app.add_middleware(JsonBodyLimit)
    app.add_middleware(HeadAsGet)
    app.include_router(health.router)
    app.include_router(catalog.router)
    app.include_router(jobs.router)
    app.include_router(sweeps.router)
    app.include_router(datasets.router)
    app.include_router(trained_models.router)
    app.include_router(v2.router)
    return app
