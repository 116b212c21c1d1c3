"""The course's small VGG-11 (channels divided by 4) for 224x224 Fashion-MNIST."""

import torch
from torch import nn

from models.shapes import flat_features

# VGG-11's (num_convs, out_channels) per block. The course trains it with every width
# divided by RATIO so it fits a single GPU in reasonable time.
VGG11_ARCH: tuple[tuple[int, int], ...] = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
RATIO = 4
SMALL_ARCH: tuple[tuple[int, int], ...] = tuple((n, c // RATIO) for n, c in VGG11_ARCH)


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """`num_convs` same-size 3x3 conv+ReLU layers, then a 2x2 max pool that halves the side."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG blocks from a config table, then three Linear layers with dropout."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        dropout: float = 0.5,
        input_side: int = 224,
        arch: tuple[tuple[int, int], ...] = SMALL_ARCH,
    ) -> None:
        super().__init__()
        blocks = []
        channels = in_channels
        for num_convs, out_channels in arch:
            blocks.append(vgg_block(num_convs, channels, out_channels))
            channels = out_channels
        # Five blocks at 224: (B, 16, 112, 112) ... (B, 128, 7, 7)
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 6272)
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
