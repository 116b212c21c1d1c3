"""Helpers for the integration tests: images as PNG bytes, instances as JSON lists, a POST
with a header line as written."""

from __future__ import annotations

import io
import json
import socket

import httpx
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


def raw_post(client: httpx.Client, path: str, body: dict, header: str) -> tuple[int, dict]:
    """POST with a header line exactly as given, which httpx would refuse to send."""
    url = client.base_url
    data = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\ncontent-type: application/json\r\n"
        f"{header}\r\ncontent-length: {len(data)}\r\nconnection: close\r\n\r\n"
    ).encode() + data
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        sock.sendall(request)
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)
