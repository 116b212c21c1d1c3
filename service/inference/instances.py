"""Validate the JSON body ``{"instances": [...]}`` of a prediction request.

Each instance is a 2-D nested list of gray values 0-255 (row-major, as a Fashion-MNIST
image), H×W with (H, W) one of the allowed shapes. The payload arrives already
decoded from JSON (by the router); only ints and floats count as numbers — booleans,
strings, nulls, NaN and infinities are rejected.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np

from service.inference.errors import InvalidInput

_NUMBER_TYPES = frozenset({int, float})
_JSON_NAMES = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    type(None): "null",
    dict: "an object",
    list: "a list",
}


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(n) for n in shape)


def _expected(shapes: tuple[tuple[int, int], ...]) -> str:
    listed = " or ".join(_shape_text(s) for s in shapes)
    return f"expected a {listed} nested list of pixel values 0–255"


def _shape_problem(inst: Any, shapes: tuple[tuple[int, int], ...]) -> str | None:
    """None when ``inst`` is a rectangular H×W list of lists with (H, W) in ``shapes``."""
    if not isinstance(inst, list):
        return f"got {_json_name(inst)}"
    if not inst:
        return "got an empty list"
    row_is_list = [isinstance(row, list) for row in inst]
    if not any(row_is_list):
        return f"got shape {len(inst)} (a flat list)"
    if not all(row_is_list):
        return "got a list mixing rows and single values"
    lengths = sorted({len(row) for row in inst})
    if len(lengths) > 1:
        shown = ", ".join(str(n) for n in lengths)
        return f"got a ragged nested list ({len(inst)} rows of lengths {shown})"
    shape: tuple[int, ...] = (len(inst), lengths[0])
    if any(isinstance(v, list) for v in chain.from_iterable(inst)):
        try:  # report the depth numpy can see, e.g. 28×28×3
            deep = np.asarray(inst, dtype=object).shape
        except ValueError:
            deep = ()
        if len(deep) > 2:
            return f"got shape {_shape_text(deep)}"
        return "got a nested list deeper than 2-D"
    if shape not in shapes:
        return f"got shape {_shape_text(shape)}"
    return None


def _first_non_number(inst: list[list[Any]]) -> tuple[int, int, Any]:
    for i, row in enumerate(inst):
        for j, v in enumerate(row):
            if type(v) not in _NUMBER_TYPES:
                return i, j, v
    raise AssertionError("unreachable: caller saw a non-number")


def _parse_one(inst: Any, field: str, shapes: tuple[tuple[int, int], ...]) -> np.ndarray:
    problem = _shape_problem(inst, shapes)
    if problem is not None:
        raise InvalidInput(field, f"{_expected(shapes)}, {problem}")
    # Exact types: bool is an int subclass and must not pass as 0/1.
    if not set(map(type, chain.from_iterable(inst))) <= _NUMBER_TYPES:
        i, j, v = _first_non_number(inst)
        raise InvalidInput(
            field, f"pixel values must be numbers 0–255, got {_json_name(v)} at [{i}][{j}]"
        )
    try:
        arr = np.array(inst, dtype=np.float64)
    except (ValueError, OverflowError, TypeError):  # e.g. an int beyond float range
        arr = None
    if arr is None or arr.shape != (len(inst), len(inst[0])):
        raise InvalidInput(field, f"{_expected(shapes)}, got values numpy cannot read")
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > 255)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        v = inst[i][j]
        shown = repr(v) if isinstance(v, float) else str(v)
        raise InvalidInput(
            field, f"pixel values must be between 0 and 255, got {shown} at [{i}][{j}]"
        )
    if np.array_equal(arr, np.rint(arr)):
        return arr.astype(np.uint8)  # whole numbers: the same bytes a PNG upload would give
    return arr.astype(np.float32)


def parse_instances(
    payload: object,
    *,
    max_instances: int,
    shapes: tuple[tuple[int, int], ...] = ((28, 28),),
) -> list[np.ndarray]:
    """Validate ``{"instances": [...]}`` and return one (H, W) array per instance.

    Arrays are uint8 when every value is a whole number, float32 otherwise; values lie in
    0-255 either way. Raises InvalidInput naming ``"instances"`` or ``"instances[i]"``.
    """
    shapes = tuple(dict.fromkeys((int(h), int(w)) for h, w in shapes))
    if not isinstance(payload, dict):
        raise InvalidInput(
            "instances",
            f'expected a JSON object with an "instances" list, got {_json_name(payload)}',
        )
    if "instances" not in payload:
        raise InvalidInput("instances", 'missing: expected a JSON object with an "instances" list')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput("instances", f"expected a list, got {_json_name(instances)}")
    if not instances:
        raise InvalidInput("instances", "expected at least one instance, got an empty list")
    if len(instances) > max_instances:
        raise InvalidInput(
            "instances", f"at most {max_instances} instances per request, got {len(instances)}"
        )
    return [_parse_one(inst, f"instances[{k}]", shapes) for k, inst in enumerate(instances)]
