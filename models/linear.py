"""Linear regression, the course's first model: y = Xw + b."""

import torch
from torch import nn


class LinearRegression(nn.Module):
    """One Linear layer from `num_features` inputs to one output."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.net = nn.Linear(num_features, 1)

    @property
    def weight(self) -> torch.Tensor:
        return self.net.weight  # (1, num_features)

    @property
    def bias(self) -> torch.Tensor:
        return self.net.bias  # (1,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, num_features) -> (B,) predictions."""
        return self.net(x).squeeze(-1)
