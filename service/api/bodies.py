"""Reading request bodies within a size limit."""

from __future__ import annotations

from fastapi import Request

from service.errors import PayloadTooLarge, UnsupportedMediaType


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (chunked uploads too)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def require_json(request: Request) -> None:
    """415 for a body sent as anything but JSON (curl's -d alone sends a form, say).

    Without a content type too: FastAPI would not parse the body, and its 422 ("Input should
    be a valid dictionary") would not tell the user what to change.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"content type {content_type or '(none)'!r} is not accepted; send JSON with "
            "'content-type: application/json'"
        )
