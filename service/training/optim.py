"""Optimizers: plain SGD, SGD with momentum, Adam; L2 weight decay on weights only."""

from __future__ import annotations

import torch
from torch import nn

from service.training.config import MOMENTUM, OPTIMIZERS, TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (ndim > 1: conv kernels, linear matrices) get ``weight_decay``;
    biases and normalisation scales/shifts (ndim <= 1) get none. Empty groups are left out."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr)
    if config.optimizer == "momentum":
        return torch.optim.SGD(groups, lr=config.lr, momentum=MOMENTUM)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
