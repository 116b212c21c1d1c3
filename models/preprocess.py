"""The single pixel-to-tensor conversion used by both training and prediction."""

import torch
import torch.nn.functional as F


def to_model_input(images: torch.Tensor, side: int) -> torch.Tensor:
    """Pixels 0-255, (N, H, W) or (N, 1, H, W), to float32 (N, 1, side, side) in [0, 1]."""
    if images.dim() == 3:
        images = images.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(
            f"expected images of shape (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}"
        )
    # Divide like the course's ToTensor, with no normalisation. Float input is read as
    # 0-255 pixel values too, so JSON numbers give the same tensor as uint8 arrays.
    x = images.to(torch.float32) / 255.0  # (N, 1, H, W)
    height, width = x.shape[-2:]
    if (height, width) != (side, side):
        # Antialiasing widens the filter to each output pixel's footprint; that only
        # matters when shrinking, where plain bilinear would skip input pixels.
        shrinking = height > side or width > side
        x = F.interpolate(
            x, size=(side, side), mode="bilinear", align_corners=False, antialias=shrinking
        )  # (N, 1, side, side); bilinear weights are non-negative, so values stay in [0, 1]
    return x
