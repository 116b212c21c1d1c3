"""The course's classic networks as plain torch.nn modules, a registry, and preprocessing."""

from models.preprocess import to_model_input
from models.registry import (
    ModelSpec,
    UnknownModelError,
    build,
    build_regression,
    check_input_side,
    dropout_layers,
    get_spec,
    list_models,
    list_regression_models,
)

__all__ = [
    "ModelSpec",
    "UnknownModelError",
    "build",
    "build_regression",
    "check_input_side",
    "dropout_layers",
    "get_spec",
    "list_models",
    "list_regression_models",
    "to_model_input",
]
