"""Unit tests for the model registry and the model families."""

import math

import pytest
import torch
from torch import nn

import models

NAMES = models.list_models()
WITH_DROPOUT = [n for n in NAMES if models.get_spec(n).has_dropout]
WITHOUT_DROPOUT = [n for n in NAMES if not models.get_spec(n).has_dropout]


def _batch(side: int, channels: int = 1) -> torch.Tensor:
    """Two random images of pixels in [0, 1], (2, C, side, side)."""
    return torch.rand(2, channels, side, side, generator=torch.Generator().manual_seed(0))


def test_registry_lists_the_course_models() -> None:
    assert NAMES == ["alexnet", "lenet", "mlp", "nin", "softmax", "vgg"]
    assert WITHOUT_DROPOUT == ["softmax"]


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_consistent(name: str) -> None:
    spec = models.get_spec(name)
    assert spec.name == name
    assert spec.description and "\n" not in spec.description
    assert spec.lr > 0
    assert 1 <= spec.min_side <= spec.input_side
    assert spec.has_dropout or spec.dropout == 0.0
    built = models.build(name)
    assert bool(models.dropout_layers(built)) == spec.has_dropout
    assert all(layer.p == spec.dropout for layer in models.dropout_layers(built))


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_at_course_side(name: str) -> None:
    spec = models.get_spec(name)
    model = models.build(name).eval()
    with torch.no_grad():
        assert model(_batch(spec.input_side)).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_other_classes_and_channels(name: str) -> None:
    spec = models.get_spec(name)
    # The smallest side keeps the big networks fast; the course side is covered above.
    model = models.build(name, num_classes=5, in_channels=3, input_side=spec.min_side).eval()
    with torch.no_grad():
        assert model(_batch(spec.min_side, channels=3)).shape == (2, 5)


@pytest.mark.parametrize("name", NAMES)
def test_non_default_input_side(name: str) -> None:
    spec = models.get_spec(name)
    # Odd on purpose, to exercise the floor in every conv/pool output size.
    side = max(spec.min_side, spec.input_side // 2) + 3
    model = models.build(name, input_side=side).eval()
    with torch.no_grad():
        assert model(_batch(side)).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_min_side_is_accepted_and_tight(name: str) -> None:
    spec = models.get_spec(name)
    model = models.build(name, input_side=spec.min_side).eval()
    with torch.no_grad():
        assert model(_batch(spec.min_side)).shape == (2, 10)
    if spec.min_side > 1:
        # One pixel less must really break the architecture, or min_side is too strict.
        side = spec.min_side - 1
        with pytest.raises(RuntimeError), torch.no_grad():
            spec.factory(input_side=side).eval()(_batch(side))


@pytest.mark.parametrize("name", NAMES)
def test_too_small_input_side_raises(name: str) -> None:
    spec = models.get_spec(name)
    too_small = spec.min_side - 1
    message = f"input side {too_small} too small for {name} (minimum {spec.min_side})"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        models.check_input_side(name, too_small)
    with pytest.raises(ValueError, match="too small"):
        models.build(name, input_side=too_small)
    models.check_input_side(name, spec.min_side)


@pytest.mark.parametrize("name", WITH_DROPOUT)
def test_dropout_only_acts_in_train_mode(name: str) -> None:
    spec = models.get_spec(name)
    torch.manual_seed(0)
    side = max(spec.min_side, 28)  # small for speed, yet enough activations to drop
    model = models.build(name, dropout=0.5, input_side=side)
    assert all(layer.p == 0.5 for layer in models.dropout_layers(model))
    x = _batch(side)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", WITHOUT_DROPOUT)
def test_dropout_on_model_without_dropout_raises(name: str) -> None:
    with pytest.raises(ValueError, match="no dropout"):
        models.build(name, dropout=0.5)
    models.build(name, dropout=0.0)  # zero is simply "none"


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_out_of_range_raises(p: float) -> None:
    with pytest.raises(ValueError, match="dropout"):
        models.build("mlp", dropout=p)


@pytest.mark.parametrize("name", NAMES)
def test_xavier_init(name: str) -> None:
    torch.manual_seed(0)
    model = models.build(name)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert layers
    for layer in layers:
        weight = layer.weight.detach()
        receptive = weight[0, 0].numel()  # kernel area for a conv, 1 for a Linear
        fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        largest = weight.abs().max().item()
        assert largest <= bound * (1 + 1e-6)  # float32 rounding of the sampled bound
        if weight.numel() >= 100:
            # torch's default bound is 1/sqrt(fan_in), well below Xavier's for these shapes.
            assert largest > 0.9 * bound


def test_unknown_model_error_lists_known_names() -> None:
    with pytest.raises(models.UnknownModelError) as info:
        models.get_spec("resnet")
    assert isinstance(info.value, KeyError)
    text = str(info.value)
    assert "resnet" in text
    assert all(name in text for name in NAMES)
    with pytest.raises(models.UnknownModelError):
        models.build("resnet")
    with pytest.raises(models.UnknownModelError):
        models.check_input_side("resnet", 28)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_lenet_variants(activation: str, pooling: str) -> None:
    model = models.build("lenet", activation=activation, pooling=pooling).eval()
    kinds = {type(m) for m in model.modules()}
    assert {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}[activation] in kinds
    assert {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[pooling] in kinds
    with torch.no_grad():
        assert model(_batch(28)).shape == (2, 10)


def test_lenet_rejects_unknown_knob_values() -> None:
    with pytest.raises(ValueError, match="activation"):
        models.build("lenet", activation="tanh")
    with pytest.raises(ValueError, match="pooling"):
        models.build("lenet", pooling="median")
