"""Reading request bodies within a size limit (decompressed where they come compressed), and
JSON bodies with no key given twice."""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartParser

from service.api.params import decimal_int
from service.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType


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
    """The body, refused with 413 as soon as it passes the limit (chunked uploads too); a
    gzip or deflate body (Content-Encoding, as tritonclient sends) is decompressed, within the
    same limit."""
    encoding = content_encoding(request)
    if encoding is not None and encoding not in DECODERS:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not accepted; send gzip, deflate or no encoding"
        )
    async with aclosing(limited_stream(request, limit)) as stream:
        body = b"".join([chunk async for chunk in stream])
    if encoding is None:
        return body
    # Inflating up to the limit (200 MiB for a dataset) takes long: off the event loop.
    return await run_in_threadpool(_decompressed, body, encoding, limit)


# Content-Encoding -> zlib's wbits: gzip's header and trailer; HTTP's "deflate" is zlib-wrapped
# (RFC 9110), as tritonclient's zlib.compress sends it.
DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def content_encoding(request: Request) -> str | None:
    """The body's Content-Encoding in lowercase; None for none or ``identity``. Codings given
    in several headers, or in one as a list, are one list (RFC 9110): more than one is refused
    here rather than half decoded."""
    return encoding_of(request.headers.getlist("content-encoding"))


def encoding_of(values: list[str]) -> str | None:
    """The one content coding ``values`` (the Content-Encoding headers) name, or None."""
    codings = [c.strip().lower() for v in values for c in v.split(",")]
    codings = [c for c in codings if c not in ("", "identity")]
    if len(codings) > 1:
        raise UnsupportedMediaType(
            f"Content-Encoding {', '.join(codings)}: more than one coding is not accepted"
        )
    return codings[0] if codings else None


def refuse_encoded(request: Request) -> None:
    """415 for a compressed body where the body is parsed as it streams in (multipart)."""
    encoding = content_encoding(request)
    if encoding is not None:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not accepted here; send the body uncompressed"
        )


def _decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    """The body inflated, never past ``limit`` + 1 bytes; gzip members one after another (RFC
    1952: what ``gzip.decompress`` reads), nothing else after them."""
    parts: list[bytes] = []
    size, rest = 0, body
    for _ in range(MAX_GZIP_MEMBERS):
        decoder = zlib.decompressobj(DECODERS[encoding])
        try:
            part = decoder.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            reason = f"not valid {encoding} data ({exc})"
            raise InvalidRequest.for_fields([("body", reason)]) from None
        size += len(part)
        parts.append(part)
        if size > limit or decoder.unconsumed_tail:
            raise PayloadTooLarge(f"the body decompresses to over the limit of {limit} bytes")
        if not decoder.eof:
            raise InvalidRequest.for_fields([("body", f"the {encoding} data is cut short")])
        rest = decoder.unused_data
        if not rest:
            return b"".join(parts)
        if encoding == "deflate" or not rest.startswith(GZIP_MAGIC):
            reason = (
                f"{len(rest)} more byte{'s' if len(rest) > 1 else ''} after the {encoding} data"
            )
            raise InvalidRequest.for_fields([("body", reason)])
    reason = f"more than {MAX_GZIP_MEMBERS} gzip members; send one"
    raise InvalidRequest.for_fields([("body", reason)])


GZIP_MAGIC = b"\x1f\x8b"
# Each member copies what follows it (zlib's unused_data): a million empty 20-byte members
# took minutes. A client sends one (tritonclient, curl, gzip); a few concatenated files, more.
MAX_GZIP_MEMBERS = 16


async def read_form_limited(
    request: Request, limit: int, *, max_files: int, max_fields: int
) -> FormData:
    """A multipart body parsed as it streams in, the whole body held to ``limit``.

    ``request.form(max_part_size=...)`` bounds each part, not their sum, and a chunked body
    declares no length. Raises starlette's MultiPartException for a malformed body.
    """
    refuse_encoded(request)
    async with aclosing(limited_stream(request, limit)) as stream:
        parser = MultiPartParser(
            request.headers, stream, max_files=max_files, max_fields=max_fields,
            max_part_size=limit,
        )  # fmt: skip
        return await parser.parse()


async def require_json(request: Request) -> None:
    """415 for a body sent as anything but JSON (curl's -d alone sends a form, say); 422 for a
    JSON object that gives a key twice.

    Without a content type too: FastAPI would not parse the body, and its 422 ("Input should
    be a valid dictionary") would not tell the user what to change. FastAPI has parsed the body
    (a malformed one is its 422) before this runs; it is parsed once more for its keys.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"content type {content_type or '(none)'!r} is not accepted; send JSON with "
            "'content-type: application/json'"
        )
    body = await request.body()  # read already, and kept, by FastAPI
    if body:
        with suppress(ValueError):  # not JSON after all: FastAPI's own 422 says so
            parse_json(body)


REPEATED = "given more than once in the body"


class _Repeated(dict[str, Any]):
    """A JSON object in which some keys were given more than once (the last value kept)."""

    repeated: list[str]


def _repeats(value: Any, path: str) -> list[tuple[str, str]]:
    """(field, reason) for every key given twice in one object, at any depth: "epochs",
    "base.epochs", "inputs[0].name"."""
    found = []
    if isinstance(value, _Repeated):
        found += [(f"{path}.{k}" if path else k, REPEATED) for k in value.repeated]
    if isinstance(value, dict):
        children = [(f"{path}.{k}" if path else k, v) for k, v in value.items()]
    else:
        children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    for where, item in children:
        if isinstance(item, dict | list):
            found += _repeats(item, where)
    return found


def parse_json(body: bytes | str) -> Any:
    """``json.loads``, with a key given twice in one object refused: 422 naming it.

    JSON does not forbid it and json.loads keeps the last value, silently, so
    {"epochs": 1, "epochs": 200} would train whichever the client did not look at. Raises
    ValueError (JSONDecodeError, UnicodeDecodeError) for a body that is not JSON, or one nested
    too deeply to decode.
    """
    repeated = False

    def json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        repeated = True
        counts = Counter(k for k, _ in pairs)
        marked = _Repeated(obj)
        marked.repeated = [k for k in obj if counts[k] > 1]
        return marked

    try:
        value = json.loads(body, object_pairs_hook=json_object)
    except RecursionError:  # about 1,000 nested arrays: the decoder's recursion, not a 500
        raise ValueError("nested too deeply") from None
    if repeated:  # only then walk the tree: an image as nested lists is thousands of them
        raise InvalidRequest.for_fields(_repeats(value, ""))
    return value
