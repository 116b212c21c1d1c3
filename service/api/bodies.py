"""Reading request bodies within a size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import Request
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartParser

from service.api.params import decimal_int
from service.errors import PayloadTooLarge, UnsupportedMediaType


def refuse_declared_oversize(request: Request, limit: int) -> None:
    """413 at once for a Content-Length over the limit, before reading anything."""
    declared = request.headers.get("content-length")
    size = decimal_int(declared) if declared is not None else None
    if size is not None and size > limit:
        raise PayloadTooLarge(f"the body is {size} bytes; the limit is {limit} bytes")


async def limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, refused with 413 as soon as they pass the limit (chunked uploads too)."""
    refuse_declared_oversize(request, limit)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        yield chunk


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (chunked uploads too)."""
    async with aclosing(limited_stream(request, limit)) as stream:
        return b"".join([chunk async for chunk in stream])


async def read_form_limited(
    request: Request, limit: int, *, max_files: int, max_fields: int
) -> FormData:
    """A multipart body parsed as it streams in, the whole body held to ``limit``.

    ``request.form(max_part_size=...)`` bounds each part, not their sum, and a chunked body
    declares no length. Raises starlette's MultiPartException for a malformed body.
    """
    async with aclosing(limited_stream(request, limit)) as stream:
        parser = MultiPartParser(
            request.headers, stream, max_files=max_files, max_fields=max_fields,
            max_part_size=limit,
        )  # fmt: skip
        return await parser.parse()


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
