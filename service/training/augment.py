"""Random changes to each training batch's images (a job's ``augment``), drawn on the device.

The usual Fashion-MNIST augmentations, on the uint8 images before they are resized (28x28
instead of 224x224, so they cost next to nothing): ``flip`` mirrors each image left-right with
probability 1/2 (a shirt or a boot seen from its other side is still one); ``flip_crop`` then
also shifts it by up to ``CROP_PAD`` pixels each way, filling with background (0): torchvision's
``RandomCrop(28, padding=2)``. Each image gets its own draws from the device's default
generator, which the job's seed seeds, and which CUDA-graph replays advance like dropout's.
Validation, test and predict see the images as they are.
"""

from __future__ import annotations

import torch

from service.training.config import AUGMENTS

CROP_PAD = 2  # pixels of the stored image (28 px for Fashion-MNIST)


def augment_batch(images: torch.Tensor, how: str) -> torch.Tensor:
    """``images`` (N, ..., H, W) with each image changed as ``how`` says; the same dtype."""
    if how == "none":
        return images
    if how not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, not {how!r}")
    images = random_flip(images)
    if how == "flip_crop":
        images = random_shift(images, CROP_PAD)
    return images


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5  # (N,)
    flip = flip.view(-1, *([1] * (images.dim() - 1)))
    return torch.where(flip, images.flip(-1), images)


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Each image moved by its own (dy, dx), each in [-pad, pad]; uncovered pixels are 0.

    The same as cropping the image back to its size at a random place after padding it with
    ``pad`` zeros on every side, without making the padded copy.
    """
    n, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    device = images.device
    dy, dx = torch.randint(-pad, pad + 1, (2, n, 1), device=device)  # each (N, 1)
    rows = torch.arange(height, device=device) + dy  # (N, H): source row of each output row
    cols = torch.arange(width, device=device) + dx  # (N, W)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None]
    flat = images.reshape(n, -1, height, width)  # (N, C, H, W), C = 1 for grey images
    picked = flat[
        torch.arange(n, device=device)[:, None, None, None],
        torch.arange(flat.shape[1], device=device)[None, :, None, None],
        rows.clamp(0, height - 1)[:, None, :, None],
        cols.clamp(0, width - 1)[:, None, None, :],
    ]  # (N, C, H, W)
    shifted = torch.where(inside[:, None], picked, torch.zeros_like(picked))
    return shifted.reshape(images.shape)
