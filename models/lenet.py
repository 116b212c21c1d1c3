"""LeNet-5 as the course builds it (sigmoid, average pooling), with optional modern knobs."""

import torch
from torch import nn

from models.shapes import flat_features

ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
POOLINGS: dict[str, type[nn.Module]] = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


def _choice(kind: str, value: str, table: dict[str, type[nn.Module]]) -> type[nn.Module]:
    """Look `value` up in `table`, naming the allowed values when it is not there."""
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"unknown LeNet {kind} {value!r} (known: {', '.join(table)})") from None


class LeNet(nn.Module):
    """Two conv/pool stages and three Linear layers; dropout defaults to 0 as in the course."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        dropout: float = 0.0,
        input_side: int = 28,
        activation: str = "sigmoid",
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        act = _choice("activation", activation, ACTIVATIONS)
        pool = _choice("pooling", pooling, POOLINGS)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),  # (B, 6, 28, 28)
            act(),
            pool(kernel_size=2, stride=2),  # (B, 6, 14, 14)
            nn.Conv2d(6, 16, kernel_size=5),  # (B, 16, 10, 10)
            act(),
            pool(kernel_size=2, stride=2),  # (B, 16, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 400)
            nn.Linear(flat_features(self.features, in_channels, input_side), 120),
            act(),
            # The Dropout layers exist even at p=0 so a run can turn dropout on without
            # changing the module layout (and so state_dict keys) of the course network.
            nn.Dropout(dropout),
            nn.Linear(120, 84),
            act(),
            nn.Dropout(dropout),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels -> (B, num_classes) logits."""
        return self.classifier(self.features(x))
