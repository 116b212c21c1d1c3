"""Network in Network as the course builds it for 224x224 Fashion-MNIST."""

import torch
from torch import nn


def nin_block(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
) -> nn.Sequential:
    """One spatial conv followed by two 1x1 convs (per-pixel MLP), all with ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.ReLU(),
    )


class NiN(nn.Module):
    """NiN blocks ending in one channel per class, averaged globally; no Linear layers."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        dropout: float = 0.5,
        input_side: int = 224,
    ) -> None:
        super().__init__()
        # Global average pooling makes the weights independent of input_side; the argument
        # is kept so every family is built the same way.
        del input_side
        self.features = nn.Sequential(
            nin_block(in_channels, 96, kernel_size=11, stride=4, padding=0),  # (B, 96, 54, 54)
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 96, 26, 26)
            nin_block(96, 256, kernel_size=5, stride=1, padding=2),  # (B, 256, 26, 26)
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 12, 12)
            nin_block(256, 384, kernel_size=3, stride=1, padding=1),  # (B, 384, 12, 12)
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 384, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nin_block(384, num_classes, kernel_size=3, stride=1, padding=1),  # (B, 10, 5, 5)
            nn.AdaptiveAvgPool2d(1),  # (B, 10, 1, 1)
            nn.Flatten(),  # (B, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels -> (B, num_classes) logits."""
        return self.classifier(self.features(x))
