"""The learning-rate range test: raise the lr exponentially, step by step, and watch the loss.

From ``lr_min`` to ``lr_max`` over ``steps`` SGD steps on the job's own model, optimizer, batches
and loss (penalties included), the lr of step i being lr_min * (lr_max / lr_min)^(i / (steps - 1)).
The recorded loss is an exponential moving average (bias-corrected) of the batch losses over
about 3 % of the steps (at least 5), so one noisy batch does not end the test while the curve
lags the lr by little. The test stops early once that loss exceeds
4x the best so far, or is no longer finite: past that point the lr only blows the model up.

Suggested lr: the point of steepest descent of the smoothed loss against log(lr), looked for
before the minimum (where the loss falls fastest, training makes the most progress per step).
The slope spans half a decade of lr, and the search starts only once the loss has left its
start level (the median of the first tenth of the curve, the average still settling) for good,
so a noise dip in the flat start is no descent. The minimum itself is not a candidate, so the
suggestion is always below the min-loss lr. When the loss never fell 5 % below its start level
(the range shows no descent: raise lr_max, or lower lr_min where the loss rose from the
start), or the descent is too short for a slope (< 5 points
before the minimum), the rule falls back to the min-loss lr / 10. The result names the rule it
used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.training.batching import plan_epoch
from service.training.config import (
    DEFAULT_LR_MAX,
    DEFAULT_LR_MIN,
    DEFAULT_LR_STEPS,
    TrainConfig,
)
from service.training.data import load_dataset, make_splits
from service.training.loop import prepare_classifier
from service.training.regression import load_tabular, make_tabular_splits, prepare_regressor
from service.training.steps import Objective, TrainingCancelled

SMOOTHING_SHARE = 0.03  # the moving average spans this share of the steps
SMOOTHING_MIN_STEPS = 5
SKIP_SHARE = 0.1  # the steepest-descent search starts after this share of the curve
STOP_FACTOR = 4.0
MIN_POINTS_FOR_SLOPE = 5
# A curve whose minimum is less than 5 % below its start level has no descent to suggest from:
# softmax over lr 1e-6..1e-5 (Fashion-MNIST, 5000 examples) goes 2.52 -> 2.47 (1.6 %, noise);
# the shallowest real descent measured, softmax under weight decay 10 on the synthetic set,
# falls 6 % (2.33 -> 2.19).
DESCENT_SHARE = 0.05
# The search starts once the loss has left its start for good: after the last point before the
# minimum still above 20 % of the way down from the start level. The flat start's noise dips
# (LeNet 2.447 -> 2.430, weight-decayed softmax 2.424 -> 2.384) come back up.
LEFT_START = 0.2
# The slope is measured across half a decade of lr (14 points of a 200-step test over 1e-6..10),
# not between neighbouring points, whose differences in the flat start (+-0.02 over 1/28 of a
# decade) look as steep as the real descent (0.2 a decade).
SLOPE_SPAN_DECADES = 0.5


@dataclass
class LrCurve:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggested_lr: float
    rule: str  # how suggested_lr was chosen
    min_loss_lr: float
    stopped_early: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "lrs": self.lrs,
            "losses": self.losses,
            "suggested_lr": self.suggested_lr,
            "suggestion_rule": self.rule,
            "min_loss_lr": self.min_loss_lr,
            "stopped_early": self.stopped_early,
        }


def lr_schedule(lr_min: float, lr_max: float, steps: int) -> np.ndarray:
    return lr_min * (lr_max / lr_min) ** (np.arange(steps) / max(steps - 1, 1))


def _start_level(losses: list[float]) -> float:
    """The loss the curve starts from: the median of its first SKIP_SHARE (at least 1 point)."""
    return float(np.median(losses[: max(int(SKIP_SHARE * len(losses)), 1)]))


def _wide_slopes(lrs: list[float], losses: list[float], lo: int, hi: int, floor: int) -> np.ndarray:
    """The slope of the smoothed loss against ln(lr) at each point of [lo, hi), measured across
    SLOPE_SPAN_DECADES of lr (clipped to [floor, hi - 1]), not between neighbouring points."""
    log_lr = np.log(np.asarray(lrs, dtype=float))
    per_decade = (len(lrs) - 1) / max(math.log10(lrs[-1] / lrs[0]), 1e-12)
    half = max(1, round(SLOPE_SPAN_DECADES * per_decade / 2))
    y = np.asarray(losses, dtype=float)
    slopes = []
    for i in range(lo, hi):
        a, b = max(i - half, floor), min(i + half, hi - 1)
        slopes.append((y[b] - y[a]) / (log_lr[b] - log_lr[a]))
    return np.asarray(slopes)


def suggest(lrs: list[float], losses: list[float]) -> tuple[float, str, float]:
    """(suggested lr, the rule used, the min-loss lr); the suggestion is below the min-loss lr."""
    best = int(np.argmin(losses))
    min_loss_lr = lrs[best]
    level = _start_level(losses)
    fell = (level - losses[best]) / level if level > 0 else 0.0
    if fell < DESCENT_SHARE:
        # Which end of the range to move: a loss that climbed from the start was already too
        # large a step at lr_min; one that stayed flat never reached a useful lr.
        rose = level > 0 and losses[-1] > (1 + DESCENT_SHARE) * level
        widen = (
            "the loss rose from the start, so even lr_min steps too far: lower lr_min (the "
            "suggestion lies below the range tested)"
            if rose
            else "widen the range, raise lr_max"
        )
        return (
            min_loss_lr / 10,
            f"min-loss lr / 10 (no descent in the range: the smoothed loss fell {100 * fell:.1f}% "
            f"below its start, under {100 * DESCENT_SHARE:.0f}%; {widen})",
            min_loss_lr,
        )
    start = int(SKIP_SHARE * len(lrs))
    if best - start >= MIN_POINTS_FOR_SLOPE:  # points before the minimum
        # Search only where the loss has left its start for good: after the last point before
        # the minimum still above LEFT_START of the way down. A dip in the flat start comes
        # back up. The slopes take the minimum in (the span just before it needs it), but the
        # search leaves it out: there the one-sided slope is often the steepest, and the
        # suggestion would be the min-loss lr itself.
        bar = level - LEFT_START * (level - losses[best])
        above = [i for i in range(start, best) if losses[i] > bar]
        first = min(above[-1] + 1 if above else start, best - 1)
        slopes = _wide_slopes(lrs, losses, first, best + 1, start)
        steepest = first + int(np.argmin(slopes[:-1]))
        return lrs[steepest], "steepest descent of the smoothed loss", min_loss_lr
    return (
        min_loss_lr / 10,
        "min-loss lr / 10 (too few points before the minimum for a slope)",
        min_loss_lr,
    )


def range_test(
    objective: Objective,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    n_train: int,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    should_stop: Callable[[], bool],
) -> LrCurve:
    """Run the test on a prepared model (see the module docstring)."""
    lr_min = config.lr_min or DEFAULT_LR_MIN
    lr_max = config.lr_max or DEFAULT_LR_MAX
    steps = config.steps or DEFAULT_LR_STEPS
    schedule = lr_schedule(lr_min, lr_max, steps)
    beta = 1 - 1 / max(SMOOTHING_MIN_STEPS, SMOOTHING_SHARE * steps)
    model.train()
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    batches: list[torch.Tensor] = []
    stopped_early = False
    for step, lr in enumerate(schedule, start=1):
        if should_stop():
            raise TrainingCancelled(f"lr range test cancelled at step {step}")
        if not batches:  # a fresh shuffled epoch whenever the last one is used up
            order = torch.randperm(n_train, generator=generator)
            indices, bounds = plan_epoch(order, config.batch_size, config.last_batch, generator)
            batches = [indices[s:e].to(device) for s, e in reversed(bounds)]
        for group in optimizer.param_groups:
            group["lr"] = float(lr)
        out = objective(batches.pop())
        optimizer.zero_grad(set_to_none=True)
        out.objective.backward()
        optimizer.step()
        batch_loss = out.objective.item()  # a sync per step: the curve is the point here
        if not math.isfinite(batch_loss):
            stopped_early = True
            break
        average = beta * average + (1 - beta) * batch_loss
        smoothed = average / (1 - beta**step)
        lrs.append(float(lr))
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > STOP_FACTOR * best:
            stopped_early = True
            break
    if not lrs:
        raise ValueError(
            f"the loss was not finite even at lr_min {lr_min:g}; lower lr_min or check the data"
        )
    suggested, rule, min_loss_lr = suggest(lrs, losses)
    return LrCurve(lrs, losses, suggested, rule, min_loss_lr, stopped_early)


def find_lr(
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    data_dir: Path | None = None,
    datasets_dir: Path | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> LrCurve:
    """The range test for ``config`` on its dataset's training split (nothing is saved)."""
    device = torch.device(device)
    if config.is_regression:
        tabular = make_tabular_splits(load_tabular(config.dataset, datasets_dir), config)
        run: Any = prepare_regressor(
            config, tabular.train_x.to(device), tabular.train_y.to(device), device
        )
    else:
        dataset = load_dataset(config.dataset, data_dir, datasets_dir)
        splits = make_splits(
            dataset,
            seed=config.seed,
            val_fraction=config.val_fraction,
            train_examples=config.train_examples,
            test_examples=1,
        )
        run = prepare_classifier(
            config,
            splits.train_images.to(device),
            splits.train_labels.to(device),
            len(dataset.class_names),
            device,
        )
    return range_test(
        run.objective,
        run.model,
        run.optimizer,
        n_train=run.n_train,
        config=config,
        generator=run.generator,
        device=device,
        should_stop=should_stop,
    )
