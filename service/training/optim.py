"""Optimizers (plain SGD, SGD with momentum, Adam) and the penalties on weights.

L2 weight decay follows the course: on weights, not biases (unless `decay_bias`); it lives in the
optimizer's parameter groups. The L1 penalty has no optimizer form, so the loop adds it to the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from service.training.config import MOMENTUM, OPTIMIZERS, TrainConfig


def penalised_parameters(model: nn.Module, decay_bias: bool = False) -> list[nn.Parameter]:
    """The parameters the penalties act on: weights (ndim > 1), plus biases if `decay_bias`."""
    return [p for p in model.parameters() if p.requires_grad and (decay_bias or p.ndim > 1)]


def param_groups(model: nn.Module, weight_decay: float, decay_bias: bool = False) -> list[dict]:
    """Two groups: weights (ndim > 1: conv kernels, linear matrices) get ``weight_decay``;
    biases and normalisation scales/shifts (ndim <= 1) get none unless ``decay_bias``.
    Empty groups are left out."""
    decayed = {id(p) for p in penalised_parameters(model, decay_bias)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if id(p) in decayed else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(
    model: nn.Module, config: TrainConfig, capturable: bool = False
) -> torch.optim.Optimizer:
    """``capturable``: the step may be captured in a CUDA graph (Adam then keeps its step count
    on the device; SGD has no such state)."""
    groups = param_groups(model, config.weight_decay, config.decay_bias)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr)
    if config.optimizer == "momentum":
        return torch.optim.SGD(groups, lr=config.lr, momentum=MOMENTUM)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, capturable=capturable)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}")


def l1_penalty(parameters: list[nn.Parameter]) -> torch.Tensor:
    """sum |w| over `parameters` (a scalar tensor; 0 when there are none)."""
    if not parameters:
        return torch.zeros(())
    return torch.stack([p.abs().sum() for p in parameters]).sum()
