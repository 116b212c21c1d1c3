"""Weight initialisation: the course's `init_cnn` (Xavier), its N(0, sigma^2) draws, or torch's."""

from torch import nn

INITS: tuple[str, ...] = ("xavier", "normal", "default")


def init_xavier(model: nn.Module) -> nn.Module:
    """Xavier-uniform every Linear and Conv2d weight in place; biases keep torch's default."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
    return model


def init_normal(model: nn.Module, std: float) -> nn.Module:
    """N(0, std^2) weights and zero biases, as the course's from-scratch models start."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def initialise(model: nn.Module, init: str, std: float = 0.01) -> nn.Module:
    """Apply the named scheme in place; `default` keeps torch's (Kaiming-uniform) init."""
    if init == "xavier":
        return init_xavier(model)
    if init == "normal":
        return init_normal(model, std)
    if init == "default":
        return model
    raise ValueError(f"unknown init {init!r} (known: {', '.join(INITS)})")
