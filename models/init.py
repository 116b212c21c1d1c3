"""Weight initialisation matching the course's `init_cnn`."""

from torch import nn


def init_xavier(model: nn.Module) -> nn.Module:
    """Xavier-uniform every Linear and Conv2d weight in place; biases keep torch's default."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
    return model
