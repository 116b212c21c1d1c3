"""The table of trainable models, their course defaults, and the one way to build them."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from models.alexnet import AlexNet
from models.init import initialise
from models.lenet import LeNet
from models.linear import LinearRegression
from models.mlp import MLP
from models.nin import NiN
from models.softmax import SoftmaxRegression
from models.vgg import VGG


@dataclass(frozen=True)
class ModelSpec:
    """A model's registry entry: how to build it and the course's defaults for training it."""

    name: str  # registry name
    description: str  # one line
    input_side: int  # the course's input side in pixels
    lr: float  # the course's SGD learning rate
    adam_lr: float  # default Adam learning rate (the SGD rates above make Adam diverge)
    dropout: float  # default dropout probability (0.0 without dropout layers)
    has_dropout: bool  # whether the network contains any nn.Dropout layers
    min_side: int  # smallest input side the architecture accepts
    factory: Callable[..., nn.Module]
    # classification: images -> class logits (listed by list_models, served by /models);
    # regression: feature vectors -> one number (list_regression_models; never served)
    task: str = "classification"


class UnknownModelError(KeyError):
    """Raised for a model name that is not in the registry."""

    def __init__(self, name: str) -> None:
        self.name = name
        known = list_models() + list_regression_models()
        self.message = f"unknown model {name!r} (known: {', '.join(known)})"
        super().__init__(self.message)

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; show the plain message instead.
        return self.message


_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="softmax",
            description="Softmax regression (one Linear layer on flattened pixels)",
            input_side=28,
            lr=0.1,
            adam_lr=0.01,
            dropout=0.0,
            has_dropout=False,
            min_side=1,  # any image flattens
            factory=SoftmaxRegression,
        ),
        ModelSpec(
            name="mlp",
            description="MLP with two hidden layers of 256 units and dropout (course version)",
            input_side=28,
            lr=0.5,
            adam_lr=0.001,
            dropout=0.5,
            has_dropout=True,
            min_side=1,  # any image flattens
            factory=MLP,
        ),
        ModelSpec(
            name="lenet",
            description="LeNet-5 (course version: sigmoid, average pooling)",
            input_side=28,
            lr=0.9,
            # sigmoid LeNet with dropout sits on a plateau for an epoch or more at 1e-3
            adam_lr=0.005,
            dropout=0.0,
            has_dropout=True,
            # conv5 pad2 keeps s, pool -> s//2, conv5 -> s//2-4, pool -> (s//2-4)//2 >= 1
            min_side=12,
            factory=LeNet,
        ),
        ModelSpec(
            name="alexnet",
            description="AlexNet (course version: one input channel, 224x224)",
            input_side=224,
            lr=0.01,
            adam_lr=0.0001,
            dropout=0.5,
            has_dropout=True,
            # conv11/4 pad1 -> (s-9)//4+1 = 15 at 65, then three 3/2 max pools 15 -> 7 -> 3 -> 1;
            # at 64 the last pool gets 2x2 and yields nothing.
            min_side=65,
            factory=AlexNet,
        ),
        ModelSpec(
            name="vgg",
            description="VGG-11 with channels divided by 4 (course version, 224x224)",
            input_side=224,
            lr=0.05,
            adam_lr=0.0005,
            dropout=0.5,
            has_dropout=True,
            min_side=32,  # five 2x2 max pools: 32 -> 1
            factory=VGG,
        ),
        ModelSpec(
            name="nin",
            description="Network in Network (course version, global average pooling, 224x224)",
            input_side=224,
            lr=0.1,
            adam_lr=0.0005,
            dropout=0.5,
            has_dropout=True,
            # conv11/4 pad0 -> (s-11)//4+1 = 15 at 67, then three 3/2 max pools 15 -> 7 -> 3 -> 1;
            # at 66 the last pool gets 2x2 and yields nothing.
            min_side=67,
            factory=NiN,
        ),
        ModelSpec(
            name="linear",
            description="Linear regression y = Xw + b on feature vectors (course chapter 3)",
            input_side=1,  # not an image model; no side applies
            lr=0.03,
            adam_lr=0.01,
            dropout=0.0,
            has_dropout=False,
            min_side=1,
            factory=LinearRegression,
            task="regression",
        ),
    )
}


def list_models() -> list[str]:
    """The image classifiers' names, sorted (the networks /models can serve)."""
    return sorted(n for n, s in _SPECS.items() if s.task == "classification")


def list_regression_models() -> list[str]:
    """The regression models' names, sorted."""
    return sorted(n for n, s in _SPECS.items() if s.task == "regression")


def get_spec(name: str) -> ModelSpec:
    """The registry entry for `name`; raises UnknownModelError."""
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownModelError(name) from None


def check_input_side(name: str, side: int) -> None:
    """Raise ValueError when `side` is below what model `name` accepts (no model is built)."""
    spec = get_spec(name)
    if side < spec.min_side:
        raise ValueError(f"input side {side} too small for {name} (minimum {spec.min_side})")


def build(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    dropout: float | None = None,
    input_side: int | None = None,
    init: str = "xavier",
    init_std: float = 0.01,
    **extra: Any,
) -> nn.Module:
    """A freshly initialised image classifier `name` (Xavier unless `init` says otherwise);
    None arguments take the spec's defaults."""
    spec = get_spec(name)
    if spec.task != "classification":
        raise ValueError(f"{name} is a regression model; build it with build_regression")
    side = spec.input_side if input_side is None else input_side
    check_input_side(name, side)
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_side": side,
        **extra,
    }
    p = spec.dropout if dropout is None else dropout
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    if spec.has_dropout:
        kwargs["dropout"] = p
    elif p > 0.0:
        # Silently ignoring it would make a run look regularised when it is not.
        raise ValueError(f"{name} has no dropout layers; dropout must be 0, got {p}")
    return initialise(spec.factory(**kwargs), init, init_std)


def build_regression(
    name: str, *, num_features: int, init: str = "xavier", init_std: float = 0.01
) -> nn.Module:
    """A freshly initialised regression model `name` for `num_features` inputs."""
    spec = get_spec(name)
    if spec.task != "regression":
        raise ValueError(f"{name} is an image classifier; build it with build")
    if num_features < 1:
        raise ValueError(f"num_features must be at least 1, got {num_features}")
    return initialise(spec.factory(num_features=num_features), init, init_std)


def dropout_layers(model: nn.Module) -> list[nn.Dropout]:
    """Every nn.Dropout in `model`, in module order (to change p after building)."""
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]
