"""A size limit for the JSON bodies FastAPI parses itself (POST /jobs, POST /sweeps).

The upload endpoints read their bodies with ``bodies.read_limited``; these two let FastAPI
read the whole body before any of our code runs, so the limit must sit in front of the app.
A job or a sweep is a few hundred bytes: without a limit, one 150 MB body cost the API
process ~440 MB while it was parsed, and a few at once could take it down.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.bodies import encoding_of, require_json
from service.api.params import decimal_int, query_names
from service.errors import ApiError, PayloadTooLarge, UnsupportedMediaType, error_body
from service.schemas import ErrorResponse

MAX_JSON_BODY_BYTES = 1024 * 1024
LIMITED_PATHS = frozenset({"/jobs", "/sweeps"})
# The route options of those two POSTs: a JSON body (else 415) within the limit (else 413), no
# query parameters (else 422).
JSON_BODY_ROUTE: dict[str, Any] = {
    "dependencies": [Depends(require_json), query_names()],
    "responses": {
        413: {"model": ErrorResponse, "description": "Body over 1 MiB"},
        415: {"model": ErrorResponse, "description": "Not JSON"},
    },
}


class JsonBodyLimit:
    """413 for a POST to ``LIMITED_PATHS`` whose body passes ``limit`` bytes, chunked or not;
    415 for one sent compressed (Content-Encoding)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_JSON_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"].rstrip("/") not in LIMITED_PATHS
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        codings = [v.decode("latin-1") for k, v in scope["headers"] if k == b"content-encoding"]
        declared = decimal_int(headers.get(b"content-length", b"").decode("latin-1"))
        try:
            encoding = encoding_of(codings)
        except UnsupportedMediaType as exc:
            await _refusal(exc)(scope, receive, send)
            return
        if encoding is not None:  # FastAPI would parse the compressed bytes as JSON
            reason = (
                f"Content-Encoding {encoding!r} is not accepted here; send the JSON uncompressed"
            )
            await _refusal(UnsupportedMediaType(reason))(scope, receive, send)
            return
        if declared is not None and declared > self.limit:
            reason = self._reason(f"the body is {declared} bytes")
            await _refusal(PayloadTooLarge(reason))(scope, receive, send)
            return
        size = 0

        async def limited_receive() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    # Raised inside FastAPI's body read; errors.py answers it as itself.
                    raise PayloadTooLarge(self._reason(f"the body passed {self.limit} bytes"))
            return message

        await self.app(scope, limited_receive, send)

    def _reason(self, what: str) -> str:
        return f"{what}; the limit for a job or sweep is {self.limit} bytes"


def _refusal(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error.status, error.code, error.message, []),
        status_code=error.status,
        headers={"connection": "close"},  # the unread body is not waited for
    )
