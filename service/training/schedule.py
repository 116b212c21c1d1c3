"""Learning-rate schedules: the lr of each optimizer step, as a pure function of the step.

constant: ``lr`` throughout (the course's loops).
cosine: from ``lr`` down towards 0 along half a cosine, over all the run's steps.
onecycle: up from lr / 25 to ``lr`` over the first 30% of the steps, then down to
lr / 250,000, both along half cosines: the shape of torch's ``OneCycleLR`` with its defaults,
without its momentum cycling (the optimizer stays the one the job asked for).

The lr depends only on the step's index in the run and the run's length, so a job resumed from
a checkpoint goes on with the same rates, and nothing but the epoch needs saving.
"""

from __future__ import annotations

import math

import torch

from service.training.config import TrainConfig

ONECYCLE_WARMUP = 0.3  # share of the steps spent rising (torch's pct_start)
ONECYCLE_START_DIVISOR = 25.0  # the first lr is lr / this (torch's div_factor)
ONECYCLE_END_DIVISOR = 1e4  # the last lr is the first / this (torch's final_div_factor)


def _cosine(start: float, end: float, fraction: float) -> float:
    """From start (fraction 0) to end (fraction 1) along half a cosine."""
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The multiple of the job's lr for step ``step`` (from 0) of ``total_steps``."""
    if schedule == "constant":
        return 1.0
    last = max(total_steps - 1, 1)
    step = min(max(step, 0), last)
    if schedule == "cosine":
        return _cosine(1.0, 0.0, step / total_steps)  # the last step still moves a little
    if schedule == "onecycle":
        low = 1 / ONECYCLE_START_DIVISOR
        peak = ONECYCLE_WARMUP * last
        if step <= peak:
            return _cosine(low, 1.0, step / peak if peak else 1.0)
        return _cosine(1.0, low / ONECYCLE_END_DIVISOR, (step - peak) / (last - peak))
    raise ValueError(f"unknown lr_schedule {schedule!r} (known: constant, cosine, onecycle)")


class LrSchedule:
    """Sets every parameter group's lr before each step of a run of ``steps_per_epoch`` x
    ``config.epochs`` steps."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.schedule, self.base_lr = config.lr_schedule, config.lr
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * config.epochs

    @property
    def varies(self) -> bool:
        return self.schedule != "constant"

    def lr(self, epoch: int, step: int) -> float:
        """The lr of batch ``step`` (from 0) of ``epoch`` (from 1)."""
        index = (epoch - 1) * self.steps_per_epoch + step
        return self.base_lr * lr_factor(self.schedule, index, self.total_steps)

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> None:
        if not self.varies:
            return
        lr = self.lr(epoch, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
