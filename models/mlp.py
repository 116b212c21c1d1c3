"""Multilayer perceptron from the course's dropout chapter."""

import torch
from torch import nn


class MLP(nn.Module):
    """Two hidden ReLU layers of 256 units, each followed by dropout."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        dropout: float = 0.5,
        input_side: int = 28,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self.features = nn.Flatten()  # (B, C, H, W) -> (B, C*H*W)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * input_side * input_side, hidden),  # 784 -> 256 at 28x28
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels -> (B, num_classes) logits."""
        return self.classifier(self.features(x))
