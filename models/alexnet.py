"""AlexNet as the course builds it for Fashion-MNIST upsampled to 224x224."""

import torch
from torch import nn

from models.shapes import flat_features


class AlexNet(nn.Module):
    """Five conv layers and three Linear layers with dropout, one-channel input."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        dropout: float = 0.5,
        input_side: int = 224,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1),  # (B, 96, 54, 54)
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 96, 26, 26)
            nn.Conv2d(96, 256, kernel_size=5, padding=2),  # (B, 256, 26, 26)
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 12, 12)
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # (B, 384, 12, 12)
            nn.ReLU(),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),  # (B, 384, 12, 12)
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # (B, 256, 12, 12)
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 6400)
            nn.Linear(flat_features(self.features, in_channels, input_side), 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels -> (B, num_classes) logits."""
        return self.classifier(self.features(x))
