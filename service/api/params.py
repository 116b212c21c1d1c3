"""Shared path parameters."""

from typing import Annotated

from fastapi import Path

# Ids are 32-bit integers in the database; larger ones cannot exist.
JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Job id")]
ModelId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Model id (the id of its job)")]
