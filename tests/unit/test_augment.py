"""Training-image augmentation: what each choice does to a batch, and that jobs with it learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from service.schemas import train_split_examples
from service.training import loop
from service.training.augment import augment_batch, random_flip, random_shift
from service.training.data import SYNTHETIC_TRAIN
from service.training.loop import train
from tests.unit.test_training import curve, synthetic


def _images(n: int = 64, side: int = 28) -> torch.Tensor:
    return torch.randint(1, 256, (n, side, side), dtype=torch.uint8)


def test_none_is_the_batch_itself() -> None:
    images = _images()
    assert augment_batch(images, "none") is images


def test_flip_mirrors_about_half_the_images_and_leaves_the_rest() -> None:
    torch.manual_seed(0)
    images = _images(2000)
    out = random_flip(images)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    kept = (out == images).flatten(1).all(1)
    assert bool((mirrored | kept).all())  # every image is one or the other, whole
    assert 0.45 < mirrored.float().mean().item() < 0.55
    assert out.dtype == torch.uint8


def test_shift_is_a_crop_of_the_zero_padded_image() -> None:
    torch.manual_seed(1)
    images = _images(500, side=9)
    out = random_shift(images, 2)
    padded = F.pad(images, (2, 2, 2, 2))  # (N, 13, 13), zeros around
    seen: set[tuple[int, int]] = set()
    for image, shifted in zip(padded, out, strict=True):
        # find the one window of the padded image that the output is
        windows = [
            (top, left)
            for top in range(5)
            for left in range(5)
            if torch.equal(image[top : top + 9, left : left + 9], shifted)
        ]
        assert len(windows) == 1
        seen.add(windows[0])
    assert len(seen) == 25  # every offset in [-2, 2]^2 comes up


def test_flip_crop_keeps_shape_and_dtype_of_channelled_batches() -> None:
    images = _images(8).unsqueeze(1)  # (N, 1, H, W)
    out = augment_batch(images, "flip_crop")
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="augment"):
        augment_batch(_images(2), "rotate")


def test_training_with_augmentation_learns_repeats_and_leaves_evaluation_alone(
    monkeypatch,
) -> None:
    seen: list[tuple[str, int]] = []
    real = loop.augment_batch

    def spy(images: torch.Tensor, how: str) -> torch.Tensor:
        seen.append((how, len(images)))
        return real(images, how)

    monkeypatch.setattr(loop, "augment_batch", spy)
    config = synthetic("mlp", lr=0.3, batch_size=64, epochs=3, augment="flip_crop")
    result = train(config)
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.val_acc > 0.2  # 10 classes: chance is 0.1
    # Each training example once per epoch, and nothing else: evaluation sees plain images.
    assert {how for how, _ in seen} == {"flip_crop"}
    assert sum(n for _, n in seen) == 3 * train_split_examples(SYNTHETIC_TRAIN, 0.1, None)
    assert curve(train(config)) == curve(result)  # the seed fixes the draws too
    plain = train(synthetic("mlp", lr=0.3, batch_size=64, epochs=3))
    assert curve(plain) != curve(result)
