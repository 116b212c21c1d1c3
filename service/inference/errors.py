"""Errors the inference package raises; the HTTP layer maps them to status codes."""

from __future__ import annotations


class InvalidInput(ValueError):
    """A request's input cannot be used for prediction (the router answers 422).

    ``field`` names the offending part of the request, e.g. ``"files[2]"``,
    ``"instances[0]"`` or ``"instances"``; ``reason`` says what is wrong with it.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self):  # keep pickling (e.g. across processes) working with two args
        return (type(self), (self.field, self.reason))


class OverPixelBudget(InvalidInput):
    """An image whose pixels (read from its header) would pass what its caller has left to
    decode: the predict request's budget, or an uploaded dataset's."""


class ModelNotAvailable(LookupError):
    """The job has no complete trained model on disk (missing or unreadable files)."""

    def __init__(self, job_id: int, reason: str = "no trained model files") -> None:
        super().__init__(f"job {job_id}: {reason}")
        self.job_id = job_id
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.job_id, self.reason))
