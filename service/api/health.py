"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from service.db import SessionDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request, session: SessionDep) -> dict[str, object]:
    """The service is up and its database answers."""
    session.execute(text("SELECT 1"))
    return {
        "status": "ok",
        "database": request.app.state.engine.dialect.name,
        "models_loaded": len(request.app.state.model_cache),
    }
