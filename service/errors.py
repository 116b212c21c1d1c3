"""One error hierarchy, one handler, one JSON error shape:

{"error": {"status": 422, "code": "invalid_request", "message": "dropout: ...",
           "fields": [{"field": "dropout", "reason": "..."}]}}
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

log = logging.getLogger(__name__)
DATABASE_RETRY_AFTER_SECONDS = 5
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")  # HEAD: wherever GET is


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        fields: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or []
        self.headers = headers


class InvalidRequest(ApiError):
    status = 422
    code = "invalid_request"

    @classmethod
    def for_fields(cls, problems: list[tuple[str, str]]) -> InvalidRequest:
        return cls("; ".join(f"{f}: {r}" for f, r in problems), fields=problems)


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class Busy(ApiError):
    """Something the request needs is busy for a moment (503 with Retry-After)."""

    status = 503
    code = "busy"


def error_body(
    status: int, code: str, message: str, fields: list[tuple[str, str]]
) -> dict[str, Any]:
    return {
        "error": {
            "status": status,
            "code": code,
            "message": message,
            "fields": [{"field": f, "reason": r} for f, r in fields],
        }
    }


def _field_name(loc: tuple[Any, ...]) -> str:
    # ("body", "dropout") -> "dropout"; ("query", "limit") -> "limit"; ("body",) -> "body";
    # ("header", "idempotency-key") -> "Idempotency-Key", as the README and clients write it
    if len(loc) == 2 and loc[0] == "header":
        return "-".join(word.capitalize() for word in str(loc[1]).split("-"))
    parts = (
        [str(p) for p in loc[1:]]
        if len(loc) > 1 and loc[0] in ("body", "query", "path", "header")
        else [str(p) for p in loc]
    )
    return ".".join(parts) or "body"


def _reason(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
    if error.get("type") == "missing":
        return "this field is required"
    if error.get("type") == "extra_forbidden":
        return "unknown field"
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [
        (
            "body" if e.get("type") == "json_invalid" else _field_name(tuple(e.get("loc", ()))),
            _reason(e),
        )
        for e in exc.errors()
    ]
    err = InvalidRequest.for_fields(problems)
    return JSONResponse(error_body(err.status, err.code, err.message, err.fields), status_code=422)


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.status, exc.code, exc.message, exc.fields),
        status_code=exc.status,
        headers=exc.headers,
    )


# FastAPI's answer to a body its JSON parser could not even start on (bytes that are not UTF-8,
# say), raised from the cause; a body that is not JSON gets a validation error instead.
UNPARSED_BODY = "There was an error parsing the body"


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.detail == UNPARSED_BODY:
        cause = exc.__cause__
        if isinstance(cause, ApiError):  # raised while the body was read (its size limit)
            return await _api_error(request, cause)
        reason = f"the body is not valid JSON ({cause})" if cause else "the body is not valid JSON"
        return await _api_error(request, InvalidRequest.for_fields([("body", reason)]))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path only (POST for /jobs);
        # RFC 9110 wants every method the resource takes.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return _error_response(request, exc.status_code, code, str(exc.detail), headers=headers or None)


# The Open Inference Protocol's paths (service/api/v2.py), whose errors are {"error": "..."}.
# Its routes answer so themselves; these handlers do for what reaches no route (an unknown
# path or method under /v2) and for what no route catches (the database, a bug), which
# clients such as tritonclient cannot read in the REST shape.
OIP_PREFIX = "/v2"


def _error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    path = request.url.path
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse(error_body(status, code, message, []), status_code=status, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    # Asked of the routes method by method: FastAPI nests included routers, whose own
    # `methods` say nothing, but every route answers whether it fully matches a scope.
    allowed = []
    for method in HTTP_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    if "GET" in allowed:
        allowed.insert(1, "HEAD")  # api/head_requests.py answers HEAD for every GET
    return allowed


async def _database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
    # The database is down, restarting or (SQLite) locked past the busy timeout: the request
    # may well succeed in a moment, which a 500 would not say.
    log.warning("database unavailable: %s", str(exc.orig or exc).strip().splitlines()[0])
    return _error_response(
        request,
        503,
        "database_unavailable",
        "the database does not answer; retry shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


async def _client_gone(request: Request, _: ClientDisconnect) -> JSONResponse:
    # The client closed the connection before its body had arrived (a timeout, a cancelled
    # upload), or while its MC dropout passes ran: nothing went wrong here, and nobody is left
    # to answer. Handled here, not by the catch-all below, it is neither logged as an error
    # nor re-raised to the server.
    log.info("%s %s: the client went away; no answer", request.method, request.url.path)
    return _error_response(request, 400, "client_disconnected", "the client went away")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    # Starlette re-raises the error once this is sent, and the server then drops the
    # connection: say so, or a keep-alive client (tritonclient) fails its next request.
    return _error_response(
        request,
        500,
        "internal_error",
        "internal server error; see the server log",
        headers={"Connection": "close"},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(OperationalError, _database_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, _client_gone)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
