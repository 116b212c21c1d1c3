"""Uploaded files (images or .npy arrays) -> the model's input, one file at a time.

An image file may be small compressed and huge decoded (a blank 4096×4096 PNG is 16 KB
and 16.7 Mpx), so each file is brought to the model's input side (``LoadedModel.
prepare_pixels``, the preprocessing shared with training) as soon as it is decoded: a
request never holds more than one full-size image at a time, however many it uploads.
The files of one request may hold at most ``MAX_REQUEST_PIXELS`` pixels in all, checked from
each image's header before it is decoded. Runs in a thread: decoding is CPU work the event
loop must not wait on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from service.inference.arrays import decode_npy, is_npy
from service.inference.errors import InvalidInput
from service.inference.images import (
    MAX_PIXELS,
    MAX_REQUEST_PIXELS,
    decode_image,
    header_pixels,
    header_size,
    over_request_budget,
)
from service.inference.predictor import LoadedModel

# An upload: its file name (None when the client gave none) and its bytes.
Upload = tuple[str | None, bytes]


# A .npy array is prepared this many pixels at a time: its images' float copies stay small.
NPY_CHUNK_PIXELS = 4_000_000


def decode_cost(uploads: Sequence[Upload], *, budget_seconds: float = 0.05) -> int:
    """What decoding ``uploads`` costs, in pixels read from the image headers, at most what one
    request may decode (``MAX_REQUEST_PIXELS``). Where no header is read (a .npy file, a file
    whose header Pillow does not find in its first bytes, or once ``budget_seconds`` of header
    reading is spent on this request), its size in bytes stands in, up to one full image:
    nothing is ever decompressed here."""
    total = 0
    deadline = time.perf_counter() + budget_seconds
    for filename, data in uploads:
        pixels = None
        if not is_npy(data, filename) and time.perf_counter() < deadline:
            pixels = header_pixels(data)
        total += min(len(data), MAX_PIXELS) if pixels is None else pixels
        if total >= MAX_REQUEST_PIXELS:
            return MAX_REQUEST_PIXELS
    return total


def npy_body_to_model_input(loaded: LoadedModel, body: bytes, *, max_images: int) -> torch.Tensor:
    """float32 (N, 1, side, side) for a whole-body .npy array; InvalidInput names ``body``.
    Like files, its images reach the model's input side a few at a time, so a stack of large
    arrays never waits in the batcher (or is converted to float) at full size."""
    pixels = decode_npy(body, "body", max_images=max_images)
    step = max(1, NPY_CHUNK_PIXELS // (pixels.shape[1] * pixels.shape[2]))
    return torch.cat(
        [loaded.prepare_pixels(pixels[i : i + step]) for i in range(0, len(pixels), step)]
    )


def _refuse_past_the_budget_from_headers(
    uploads: Sequence[Upload], *, budget_seconds: float = 0.05
) -> None:
    """The budget's refusal before any file is decoded, where the headers already show it:
    17 blank 4096-px PNGs had 16 of them decoded (2 s of CPU) before the 17th was refused.
    Files without a readable header (and those past ``budget_seconds`` of header reading) are
    left to the decoding loop's own check."""
    total = 0
    deadline = time.perf_counter() + budget_seconds
    for i, (filename, data) in enumerate(uploads):
        if is_npy(data, filename) or time.perf_counter() >= deadline:
            continue
        size = header_size(data)
        if size is None or not 0 < size[0] * size[1] <= MAX_PIXELS:
            continue  # decode_image names what is wrong with it
        total += size[0] * size[1]
        if total > MAX_REQUEST_PIXELS:
            raise over_request_budget(f"files[{i}]", f"{size[0]}×{size[1]}")


def uploads_to_model_input(
    loaded: LoadedModel, uploads: Sequence[Upload], *, max_images: int
) -> torch.Tensor:
    """float32 (N, 1, side, side) for the images of ``uploads``, in order; InvalidInput names
    ``files[i]`` (or ``files`` for too many images)."""
    _refuse_past_the_budget_from_headers(uploads)
    prepared: list[torch.Tensor] = []
    count, pixels_left = 0, MAX_REQUEST_PIXELS
    for i, (filename, data) in enumerate(uploads):
        field = f"files[{i}]"
        if is_npy(data, filename):  # a .npy array: one image or a stack of them
            pixels = decode_npy(data, field, max_images=max_images)
            if pixels.size > pixels_left:
                raise over_request_budget(field, "×".join(map(str, pixels.shape)))
        else:
            pixels = decode_image(data, field, pixels_left=pixels_left)[None]  # (1, H, W)
        pixels_left -= pixels.size
        count += len(pixels)
        if count > max_images:
            raise InvalidInput("files", f"at most {max_images} images per request, got more")
        prepared.append(loaded.prepare_pixels(pixels))
        del pixels  # the full-size pixels go before the next file is decoded
    return torch.cat(prepared)
