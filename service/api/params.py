"""Shared path and query parameters."""

import re
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError
from starlette.datastructures import QueryParams

from service.errors import InvalidRequest

_PATH_INT = re.compile(r"-?[0-9]+")


def _plain_decimal(value: Any) -> Any:
    """A path id or paging number as written: ASCII digits (a minus sign too, for the range
    check to name).

    pydantic's lax int also reads ' 1', '1 ', '+1', '1.0' and '1_0', so /jobs/1%20 was job 1
    and a cache or log keyed by path saw many names for one resource. The error is pydantic's
    own for /jobs/abc, so every malformed id gets the one 422."""
    if isinstance(value, str) and not _PATH_INT.fullmatch(value):
        raise PydanticCustomError(
            "int_parsing", "Input should be a valid integer, unable to parse string as an integer"
        )
    return value


# Ids are 32-bit integers in the database; larger ones cannot exist. PlainDecimal runs before
# the int parse wherever it stands; after Path, so that OpenAPI still shows the bounds.
PlainDecimal = BeforeValidator(_plain_decimal)
JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Job id"), PlainDecimal]
ModelId = Annotated[
    int, Path(ge=1, le=2**31 - 1, description="Model id (the id of its job)"), PlainDecimal
]
SweepId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Sweep id"), PlainDecimal]

# Paging of every list endpoint (GET /jobs, /models, /datasets, /sweeps): newest first.
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many rows"), PlainDecimal]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="Rows to skip"), PlainDecimal]


# POST /jobs and POST /sweeps: a retry with the same key gets what the first request created.
IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=255)]


def idempotency_key_of(request: Request, raw: str | None) -> str | None:
    """The header's key, or None without one; 422 for a blank one, or for the header given
    twice (FastAPI reads the first, and the request may have meant the other).

    Whitespace around a header value is not part of it (RFC 9110): "kx " is the key "kx", or a
    retry that picked up a trailing space would create a second job or sweep."""
    if len(request.headers.getlist("idempotency-key")) > 1:
        raise InvalidRequest.for_fields([("Idempotency-Key", "given more than once")])
    if raw is None:
        return None
    key = raw.strip()
    if not key:
        raise InvalidRequest.for_fields([("Idempotency-Key", "must not be blank")])
    return key


def refuse_unknown_query(query: QueryParams, known: Sequence[str]) -> None:
    """A misspelt (?mc_droput=20, ?stauts=failed) or repeated (?status=a&status=b) parameter
    must not quietly give another answer than the one asked for: 422 naming it."""
    names = [name for name, _ in query.multi_items()]
    listed = f"known: {', '.join(known)}" if known else "this path takes none"
    unknown = f"unknown query parameter ({listed})"
    problems = [(n, unknown) for n in sorted(set(names) - set(known))]
    problems += [(n, "given more than once in the query")
                 for n in known if names.count(n) > 1]  # fmt: skip
    if problems:
        raise InvalidRequest.for_fields(problems)


def query_names(*known: str) -> Any:
    """A route dependency: only these query parameters, each at most once (else 422)."""

    def check(request: Request) -> None:
        refuse_unknown_query(request.query_params, known)

    return Depends(check)


# ASCII digits only: str.isdigit() also accepts '²' (int() then raises) and '٣' (int() reads 3).
# At most 18 digits: every int64 fits, and int() of thousands of digits raises ValueError.
_DECIMAL = re.compile(r"-?[0-9]{1,18}")


def decimal_int(raw: str) -> int | None:
    """``raw`` (surrounding spaces allowed) as a decimal integer of ASCII digits, else None."""
    text = raw.strip()
    return int(text) if _DECIMAL.fullmatch(text) else None
