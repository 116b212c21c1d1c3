"""Shared path and query parameters."""

from typing import Annotated

from fastapi import Path, Query

# Ids are 32-bit integers in the database; larger ones cannot exist.
JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Job id")]
ModelId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Model id (the id of its job)")]

# Paging of every list endpoint (GET /jobs, /models, /datasets, /sweeps): newest first.
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many rows")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="Rows to skip")]
