"""Serve trained models: decode inputs, load models once, predict with dropout off.

Knows no SQL and no HTTP framework; the API router maps ``InvalidInput`` to 422 and
``ModelNotAvailable`` to 404/409.
"""

from service.inference.cache import ModelCache
from service.inference.errors import InvalidInput, ModelNotAvailable
from service.inference.images import MAX_SIDE, decode_image
from service.inference.instances import parse_instances
from service.inference.predictor import LoadedModel, Prediction

__all__ = [
    "MAX_SIDE",
    "InvalidInput",
    "LoadedModel",
    "ModelCache",
    "ModelNotAvailable",
    "Prediction",
    "decode_image",
    "parse_instances",
]
