"""Pixel arrays from NumPy ``.npy`` files and from Open Inference Protocol tensors.

Either way the result is an (N, H, W) array of gray values 0-255 (uint8, or float32 when
some value is fractional), the same thing ``decode_image`` gives per uploaded image; the
model's preprocessing (``models.to_model_input``) happens later. A ``.npy`` file is read with
``allow_pickle=False``: object arrays are refused, nothing is ever unpickled.
"""

from __future__ import annotations

import io
import itertools
import math
import re

import numpy as np

from service.inference.errors import InvalidInput
from service.inference.images import MAX_PIXELS, MAX_SIDE

NPY_MAGIC = b"\x93NUMPY"
# The header np.save writes for a plain numeric C-order array, e.g.
# {'descr': '|u1', 'fortran_order': False, 'shape': (28, 28), }: read without ast.
_PLAIN_HEADER = re.compile(
    rb"\{'descr': '([<>|][uif][1248])', 'fortran_order': False, 'shape': \(([\d, ]*)\), \} *\n"
)


def is_npy(data: bytes, filename: str | None = None) -> bool:
    """Whether an upload is meant as a .npy array (by its magic bytes or its file name)."""
    return data.startswith(NPY_MAGIC) or (filename or "").lower().endswith(".npy")


def decode_npy(data: bytes, field: str, *, max_images: int) -> np.ndarray:
    """The images of one .npy upload: shape (H, W), (N, H, W) or (N, 1, H, W) -> (N, H, W)."""
    if not data.startswith(NPY_MAGIC):
        raise InvalidInput(field, "not a .npy file (it does not start with the NumPy magic)")
    array = _load_plain(data)
    try:
        if array is None:
            stream = io.BytesIO(data)
            array = np.load(stream, allow_pickle=False)
            if isinstance(array, np.ndarray) and stream.tell() != len(data):
                # np.load stops where the array ends; bytes after it mean a damaged or
                # concatenated upload, which we refuse rather than silently half-read.
                extra = len(data) - stream.tell()
                raise InvalidInput(field, f"{extra} unexpected byte(s) after the .npy array's data")
    except InvalidInput:
        raise
    except ValueError as exc:  # object arrays ("Object arrays cannot be loaded ...") and more
        raise InvalidInput(field, f"not a usable .npy array ({exc})") from None
    except Exception as exc:  # truncated or corrupt header/data
        raise InvalidInput(field, f"not a readable .npy file ({type(exc).__name__})") from None
    if not isinstance(array, np.ndarray):
        raise InvalidInput(field, "not a .npy array")
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 3 and array.shape[2] in (3, 4) and min(array.shape[:2]) >= 8:
        # (H, W, 3): one color image, which (N, H, W) would read as H images 3 pixels wide.
        # Only from 8 px a side: (1, 28, 3) is one image 3 px wide, as its N of 1 says.
        raise InvalidInput(
            field,
            f"shape {tuple(array.shape)} looks like one color image (H, W, channels); send "
            "gray images: (H, W), (N, H, W) or (N, 1, H, W)",
        )
    return pixel_images(array, field, max_images=max_images)


def _load_plain(data: bytes) -> np.ndarray | None:
    """The common case (format 1.0, numeric, C order) parsed directly; None: use np.load."""
    if data[6:8] != b"\x01\x00":
        return None
    end = 10 + int.from_bytes(data[8:10], "little")
    match = _PLAIN_HEADER.fullmatch(data, 10, end)
    if match is None:
        return None
    dtype = np.dtype(match[1].decode())
    shape = tuple(int(n) for n in match[2].split(b",") if n.strip())
    if len(data) - end != math.prod(shape) * dtype.itemsize:
        return None  # np.load says what is wrong
    return np.frombuffer(data, dtype=dtype, offset=end).reshape(shape)


def pixel_images(array: np.ndarray, field: str, *, max_images: int) -> np.ndarray:
    """Check an (N, H, W) or (N, 1, H, W) array of pixel values 0-255 and return (N, H, W)."""
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise InvalidInput(
            field,
            f"expected shape (H, W), (N, H, W) or (N, 1, H, W), got {tuple(array.shape)}",
        )
    n, height, width = (int(s) for s in array.shape)
    if n == 0 or height == 0 or width == 0:
        raise InvalidInput(field, f"no pixels: shape {tuple(array.shape)}")
    if n > max_images:
        raise InvalidInput(field, f"at most {max_images} images per request, got {n}")
    if height > MAX_SIDE or width > MAX_SIDE or height * width > MAX_PIXELS:
        raise InvalidInput(
            field, f"image too large: {width}×{height} pixels, at most {MAX_SIDE}×{MAX_SIDE}"
        )
    kind = array.dtype.kind
    if kind not in "uif" or array.dtype.itemsize > 8:
        raise InvalidInput(
            field, f"pixel values must be integers or floats 0–255, got dtype {array.dtype}"
        )
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if kind == "f":
        bad = ~np.isfinite(array) | (array < 0) | (array > 255)
    else:
        bad = (array < 0) | (array > 255)
    if bad.any():
        index = tuple(int(k) for k in np.argwhere(bad)[0])
        value = array[index].item()
        raise InvalidInput(
            field, f"pixel values must be between 0 and 255, got {value!r} at {list(index)}"
        )
    if kind == "f" and not np.array_equal(array, np.rint(array)):
        return np.ascontiguousarray(array, dtype=np.float32)
    return array.astype(np.uint8)


def tensor_pixels(
    data: object, shape: object, datatype: str, field: str, *, max_images: int
) -> np.ndarray:
    """An Open Inference Protocol input tensor (FP32 or UINT8, [N,1,H,W] or [N,H,W], data
    flat or nested, row-major) -> (N, H, W) pixel values 0-255. As Triton does, a nesting
    other than the shape's is read in row-major order; only the number of values must agree."""
    if datatype not in ("FP32", "UINT8"):
        raise InvalidInput(f"{field}.datatype", f"must be FP32 or UINT8, got {datatype!r}")
    if (
        not isinstance(shape, list)
        or not all(type(s) is int and s >= 0 for s in shape)
        or len(shape) not in (3, 4)
        or (len(shape) == 4 and shape[1] != 1)
    ):
        raise InvalidInput(f"{field}.shape", f"must be [N, 1, H, W] or [N, H, W], got {shape!r}")
    if not isinstance(data, list):
        raise InvalidInput(f"{field}.data", "must be a list of numbers (flat or nested)")
    try:
        if datatype == "FP32":
            array = np.asarray(data, dtype=np.float32)
        else:
            array = np.asarray(data, dtype=np.int64)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(
            f"{field}.data", f"must hold {datatype} numbers in a rectangular nested list"
        ) from None
    if array.dtype == object or _has_non_numbers(data, integers=datatype == "UINT8"):
        kind = "integers" if datatype == "UINT8" else "numbers"
        raise InvalidInput(f"{field}.data", f"must hold {kind} only ({datatype})")
    expected = math.prod(shape)
    if array.size != expected:
        raise InvalidInput(
            f"{field}.data",
            f"holds {array.size} values, but shape {shape} needs {expected}",
        )
    return pixel_images(array.reshape(shape), field, max_images=max_images)


def _has_non_numbers(data: list, *, integers: bool) -> bool:
    """numpy turns booleans and numeric strings into numbers (and truncates floats to ints):
    refuse them, as the JSON instances of the v1 predict do."""
    allowed = {int} if integers else {int, float}
    # Level by level, each element's type taken in C (map, set): a Python loop over 10 million
    # values took 0.24 s of a 20 MB request. numpy has already refused ragged nesting, so a
    # level holds either lists only or values only.
    level: list = data
    while True:
        types = set(map(type, level))
        if types <= allowed:
            return False
        if types != {list}:
            return True
        level = list(itertools.chain.from_iterable(level))
