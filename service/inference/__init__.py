"""Serve trained models: decode inputs, load models once, batch requests, predict with dropout
off (or MC dropout on request), export.

Knows no SQL and no HTTP framework; the API routers map ``InvalidInput`` to 422 (v2: 400),
``ModelNotAvailable`` to 404/409 and ``QueueFull`` (or ``DecodeBusy``) to 503 with Retry-After.
"""

from service.inference.arrays import decode_npy, is_npy, pixel_images, tensor_pixels
from service.inference.batcher import Abandoned, Batcher, BatchStats, QueueFull
from service.inference.cache import ModelCache
from service.inference.errors import InvalidInput, ModelNotAvailable
from service.inference.images import MAX_SIDE, decode_image
from service.inference.instances import parse_instances
from service.inference.predictor import MAX_MC_PASSES, Inputs, LoadedModel, Prediction
from service.inference.serving import DecodeBusy, Serving

__all__ = [
    "MAX_MC_PASSES",
    "Abandoned",
    "MAX_SIDE",
    "Batcher",
    "BatchStats",
    "DecodeBusy",
    "Inputs",
    "InvalidInput",
    "LoadedModel",
    "ModelCache",
    "ModelNotAvailable",
    "Prediction",
    "QueueFull",
    "Serving",
    "decode_image",
    "decode_npy",
    "is_npy",
    "parse_instances",
    "pixel_images",
    "tensor_pixels",
]
