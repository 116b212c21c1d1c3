"""Shape helpers shared by the model families."""

import torch
from torch import nn


def flat_features(features: nn.Module, in_channels: int, input_side: int) -> int:
    """Number of values per example that `features` produces for a square input of `input_side`."""
    # A dummy forward is the one way to size the first Linear that stays right for every
    # input_side; doing it eagerly (not LazyLinear) keeps state_dicts complete at construction.
    with torch.no_grad():
        out = features(torch.zeros(1, in_channels, input_side, input_side))  # (1, C, H, W)
    return out[0].numel()
