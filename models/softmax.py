"""Softmax regression (the course's first classifier)."""

import torch
from torch import nn


class SoftmaxRegression(nn.Module):
    """One Linear layer on flattened pixels; softmax lives in the loss."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_side: int = 28) -> None:
        super().__init__()
        self.features = nn.Flatten()  # (B, C, H, W) -> (B, C*H*W)
        self.classifier = nn.Linear(in_channels * input_side * input_side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels -> (B, num_classes) logits."""
        return self.classifier(self.features(x))
