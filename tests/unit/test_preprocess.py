"""Unit tests for models.to_model_input, the shared preprocessing."""

import pytest
import torch

from models import to_model_input


def _pixels(n: int = 3, side: int = 28) -> torch.Tensor:
    """Random uint8 images (n, side, side) that include both 0 and 255."""
    images = torch.randint(
        0, 256, (n, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images


def test_uint8_at_native_side_is_scaled_not_resized() -> None:
    images = _pixels()
    x = to_model_input(images, 28)
    assert x.shape == (3, 1, 28, 28)
    assert x.dtype == torch.float32
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert x[0, 0, 0, 1].item() == 1.0
    assert torch.equal(x[:, 0], images.float() / 255)


def test_resize_to_224() -> None:
    x = to_model_input(_pixels(), 224)
    assert x.shape == (3, 1, 224, 224)
    assert x.dtype == torch.float32
    assert x.min().item() >= 0.0 and x.max().item() <= 1.0


def test_shrink_keeps_range_and_constant_images() -> None:
    x = to_model_input(_pixels(side=224), 28)
    assert x.shape == (3, 1, 28, 28)
    assert x.min().item() >= 0.0 and x.max().item() <= 1.0
    flat = to_model_input(torch.full((1, 100, 100), 255, dtype=torch.uint8), 28)
    assert torch.allclose(flat, torch.ones(1, 1, 28, 28))


@pytest.mark.parametrize("side", [28, 224])
def test_float_input_matches_uint8(side: int) -> None:
    images = _pixels()
    from_uint8 = to_model_input(images, side)
    assert torch.equal(to_model_input(images.float(), side), from_uint8)
    assert torch.allclose(to_model_input(images.double(), side), from_uint8)
    assert to_model_input(images.double(), side).dtype == torch.float32


def test_channel_dimension_accepted() -> None:
    images = _pixels()
    assert torch.equal(to_model_input(images.unsqueeze(1), 224), to_model_input(images, 224))


@pytest.mark.parametrize("shape", [(28, 28), (2, 3, 28, 28), (1, 1, 1, 28, 28)])
def test_bad_shapes_raise(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected images"):
        to_model_input(torch.zeros(shape, dtype=torch.uint8), 28)


def test_empty_batch() -> None:
    assert to_model_input(torch.zeros(0, 28, 28, dtype=torch.uint8), 224).shape == (0, 1, 224, 224)
