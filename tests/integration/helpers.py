"""Helpers for the integration tests: images as PNG bytes, instances as JSON lists."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def as_instances(images: np.ndarray) -> list[list[list[int]]]:
    return np.asarray(images, dtype=np.uint8).astype(int).tolist()


def accuracy(predictions: list[dict], labels: np.ndarray) -> float:
    hits = sum(int(p["label"]) == int(y) for p, y in zip(predictions, labels, strict=True))
    return hits / len(labels)
