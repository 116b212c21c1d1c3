"""Shared path and query parameters."""

import re
from typing import Annotated

from fastapi import Path, Query

# Ids are 32-bit integers in the database; larger ones cannot exist.
JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Job id")]
ModelId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Model id (the id of its job)")]

# Paging of every list endpoint (GET /jobs, /models, /datasets, /sweeps): newest first.
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many rows")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="Rows to skip")]


# ASCII digits only: str.isdigit() also accepts '²' (int() then raises) and '٣' (int() reads 3).
# At most 18 digits: every int64 fits, and int() of thousands of digits raises ValueError.
_DECIMAL = re.compile(r"-?[0-9]{1,18}")


def decimal_int(raw: str) -> int | None:
    """``raw`` (surrounding spaces allowed) as a decimal integer of ASCII digits, else None."""
    text = raw.strip()
    return int(text) if _DECIMAL.fullmatch(text) else None
