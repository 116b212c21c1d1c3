"""Linear regression as the course teaches it: its generated datasets, its losses, its loop.

Data are feature vectors, not images: ``(N, D)`` float32 features and ``(N,)`` float32 targets,
kept on the device for the whole job. The loop shares the batch plans, penalties and optimizer
parameter groups of the classifiers (``steps``, ``optim``); its curves are losses only, so the
accuracy fields of its EpochMetrics are NaN.

Built-in sets (both ``y = Xw + b + noise``, X ~ N(0, 1), noise ~ N(0, 0.01^2)):
  linreg-synthetic  w = [2, -3.4], b = 4.2, 1000 training and 1000 test examples (chapter 3.1)
  linreg-highdim    w = 0.01 everywhere, 200 features, b = 0.05, 20 training and 100 test
                    examples: so few that an unregularised model overfits (weight decay, 3.7)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import models
from service.training.config import DEFAULT_INIT_STD, TrainConfig
from service.training.data import DatasetError, is_stored_id, load_stored_arrays, split_indices
from service.training.optim import make_optimizer
from service.training.steps import (
    EpochMetrics,
    Objective,
    StepOutput,
    add_penalties,
    reduce_loss,
    shuffling_generator,
    train_epoch,
)

REGRESSION_SEED = 20240608  # fixed: the generated data never depend on a job's seed
NOISE_STD = 0.01
# The result lists w itself up to this many features (the course's 200-feature set included),
# else only |w|: a job's result is stored with it and sent in every listing of it.
MAX_REPORTED_WEIGHTS = 1024
EVAL_BATCH = 4096


@dataclass(frozen=True)
class TabularDataset:
    name: str
    train_x: torch.Tensor  # (N, D) float32
    train_y: torch.Tensor  # (N,) float32
    test_x: torch.Tensor  # (M, D) float32
    test_y: torch.Tensor  # (M,) float32
    true_w: torch.Tensor | None = None  # (D,): the generating parameters, when known
    true_b: float | None = None

    @property
    def num_features(self) -> int:
        return int(self.train_x.shape[1])


@dataclass(frozen=True)
class TabularSplits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


# ------------------------------------------------------------------------------------ data


def synthetic_data(
    rng: np.random.Generator, w: np.ndarray, b: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The course's `synthetic_data`: X ~ N(0, 1), y = Xw + b + N(0, 0.01^2)."""
    x = rng.normal(0.0, 1.0, size=(n, len(w)))
    y = x @ w + b + rng.normal(0.0, NOISE_STD, size=n)
    return x.astype(np.float32), y.astype(np.float32)


def _generated(name: str, w: np.ndarray, b: float, n_train: int, n_test: int) -> TabularDataset:
    rng = np.random.default_rng(REGRESSION_SEED)
    train_x, train_y = synthetic_data(rng, w, b, n_train)
    test_x, test_y = synthetic_data(rng, w, b, n_test)
    return TabularDataset(
        name=name,
        train_x=torch.from_numpy(train_x),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
        true_w=torch.from_numpy(w.astype(np.float32)),
        true_b=float(b),
    )


@lru_cache(maxsize=2)
def _builtin(name: str) -> TabularDataset:
    if name == "linreg-synthetic":
        return _generated(name, np.array([2.0, -3.4]), 4.2, 1000, 1000)
    return _generated(name, np.full(200, 0.01), 0.05, 20, 100)


def load_tabular(name: str, datasets_dir: Path | None = None) -> TabularDataset:
    """A built-in regression set or a stored CSV upload."""
    if name in ("linreg-synthetic", "linreg-highdim"):
        return _builtin(name)
    if is_stored_id(name):
        arrays = load_stored_arrays(datasets_dir, name)
        if "train_x" not in arrays:
            raise DatasetError(f"dataset {name} holds images; model 'linear' needs a CSV dataset")
        return TabularDataset(
            name=name,
            train_x=torch.from_numpy(arrays["train_x"].astype(np.float32)),
            train_y=torch.from_numpy(arrays["train_y"].astype(np.float32)),
            test_x=torch.from_numpy(arrays["test_x"].astype(np.float32)),
            test_y=torch.from_numpy(arrays["test_y"].astype(np.float32)),
        )
    raise DatasetError(
        f"{name!r} is not a regression dataset; use linreg-synthetic, linreg-highdim "
        "or an uploaded CSV dataset"
    )


def make_tabular_splits(dataset: TabularDataset, config: TrainConfig) -> TabularSplits:
    """The seeded train/validation split every job makes, plus the first test examples."""
    train_idx, val_idx = split_indices(
        len(dataset.train_y),
        seed=config.seed,
        val_fraction=config.val_fraction,
        train_examples=config.train_examples,
    )
    n_test = len(dataset.test_y) if config.test_examples is None else config.test_examples
    return TabularSplits(
        train_x=dataset.train_x[train_idx],
        train_y=dataset.train_y[train_idx],
        val_x=dataset.train_x[val_idx],
        val_y=dataset.train_y[val_idx],
        test_x=dataset.test_x[:n_test],
        test_y=dataset.test_y[:n_test],
    )


# ---------------------------------------------------------------------------------- losses


def per_example_loss(pred: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """(B,) losses. l2 is the course's squared loss (1/2)(y' - y)^2; huber is squared (with the
    same 1/2) inside |y' - y| <= 1 and absolute (minus 1/2, so it joins smoothly) beyond."""
    if loss == "l2":
        return 0.5 * (pred - y) ** 2
    if loss == "l1":
        return (pred - y).abs()
    if loss == "huber":
        return F.huber_loss(pred, y, reduction="none", delta=1.0)
    raise ValueError(f"unknown regression loss {loss!r} (known: l2, l1, huber)")


def mean_squared_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """(1/n) sum (y' - y)^2 over (x, y): twice the course's l2 loss; NaN for an empty set."""
    return 2 * evaluate_regression(model, x, y, "l2")


def evaluate_regression(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> float:
    """Mean per-example loss over (x, y), no autograd; NaN for an empty set."""
    if len(y) == 0:
        return math.nan
    model.eval()
    total = torch.zeros((), device=x.device)
    with torch.inference_mode():
        for start in range(0, len(y), EVAL_BATCH):
            end = start + EVAL_BATCH
            total += per_example_loss(model(x[start:end]), y[start:end], loss).sum()
    return total.item() / len(y)


# ------------------------------------------------------------------------------------ fit


@dataclass
class Regressor:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    objective: Objective
    n_train: int


def prepare_regressor(
    config: TrainConfig, train_x: torch.Tensor, train_y: torch.Tensor, device: torch.device
) -> Regressor:
    """Seeded model + optimizer for ``config`` on training data already on ``device``."""
    torch.manual_seed(config.seed)
    model = models.build_regression(
        config.model,
        num_features=int(train_x.shape[1]),
        init=config.init,
        init_std=config.init_std or DEFAULT_INIT_STD,
    ).to(device)
    loss_name = config.loss or "l2"

    def objective(idx: torch.Tensor) -> StepOutput:
        losses = per_example_loss(model(train_x[idx]), train_y[idx], loss_name)  # (B,)
        loss = reduce_loss(losses, config.loss_reduction)
        return StepOutput(add_penalties(loss, model, config), losses.detach().sum(), None)

    return Regressor(
        model=model,
        optimizer=make_optimizer(model, config),
        generator=shuffling_generator(config),
        objective=objective,
        n_train=len(train_y),
    )


@dataclass
class RegressionResult:
    model: nn.Module  # eval mode, on the CPU
    epochs: list[EpochMetrics] = field(default_factory=list)
    train_loss: float = math.nan
    val_loss: float = math.nan
    test_loss: float = math.nan
    report: dict[str, Any] = field(default_factory=dict)  # |w|, b, errors vs the true w, b
    # Mean squared error on the validation split, whatever the loss trained on: the yardstick
    # that ranks fits made with different losses (their val_loss is each in its own unit).
    val_mse: float = math.nan

    def metrics(self) -> dict[str, float]:
        return {
            "train_loss": self.train_loss,
            "train_acc": math.nan,
            "val_loss": self.val_loss,
            "val_acc": math.nan,
            "test_loss": self.test_loss,
            "test_acc": math.nan,
        }


def parameter_report(
    model: nn.Module, true_w: torch.Tensor | None, true_b: float | None
) -> dict[str, Any]:
    """‖w‖₂ and b; with known generating parameters, the errors w_true - w and b_true - b."""
    w = model.weight.detach().reshape(-1).to("cpu", torch.float64)  # (D,)
    b = float(model.bias.detach().reshape(-1)[0])
    report: dict[str, Any] = {"weight_norm": float(w.norm()), "bias": b}
    if len(w) <= MAX_REPORTED_WEIGHTS:
        report["weights"] = w.tolist()
    if true_w is not None and true_b is not None:
        error = true_w.to(torch.float64) - w
        report["weight_error_norm"] = float(error.norm())
        if len(w) <= MAX_REPORTED_WEIGHTS:
            report["weight_error"] = error.tolist()
        report["bias_error"] = true_b - b
    return report


def _never_stop() -> bool:
    return False


def _ignore(_: EpochMetrics) -> None:
    return None


def fit_regression(
    config: TrainConfig,
    splits: TabularSplits,
    *,
    device: str | torch.device = "cpu",
    true_w: torch.Tensor | None = None,
    true_b: float | None = None,
    on_epoch: Callable[[EpochMetrics], None] = _ignore,
    should_stop: Callable[[], bool] = _never_stop,
) -> RegressionResult:
    """Train a fresh linear model on ``splits``; the test split is evaluated once at the end."""
    device = torch.device(device)
    train_x, train_y = splits.train_x.to(device), splits.train_y.to(device)
    val_x, val_y = splits.val_x.to(device), splits.val_y.to(device)
    run = prepare_regressor(config, train_x, train_y, device)
    loss_name = config.loss or "l2"
    history: list[EpochMetrics] = []
    for epoch in range(1, config.epochs + 1):
        trained = train_epoch(
            run.objective,
            run.model,
            run.optimizer,
            n_train=run.n_train,
            config=config,
            generator=run.generator,
            device=device,
            epoch=epoch,
            should_stop=should_stop,
        )
        metrics = trained.metrics(evaluate_regression(run.model, val_x, val_y, loss_name))
        history.append(metrics)
        on_epoch(metrics)
    test_loss = evaluate_regression(
        run.model, splits.test_x.to(device), splits.test_y.to(device), loss_name
    )
    val_mse = mean_squared_error(run.model, val_x, val_y)
    model = run.model.to("cpu").eval()
    return RegressionResult(
        model=model,
        epochs=history,
        train_loss=history[-1].train_loss,
        val_loss=history[-1].val_loss,
        test_loss=test_loss,
        report=parameter_report(model, true_w, true_b),
        val_mse=val_mse,
    )


def train_regression(
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    datasets_dir: Path | None = None,
    on_epoch: Callable[[EpochMetrics], None] = _ignore,
    should_stop: Callable[[], bool] = _never_stop,
) -> RegressionResult:
    """Load ``config.dataset``, split it, and fit; raises like ``loop.train``."""
    if config.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {config.epochs}")
    dataset = load_tabular(config.dataset, datasets_dir)
    return fit_regression(
        config,
        make_tabular_splits(dataset, config),
        device=device,
        true_w=dataset.true_w,
        true_b=dataset.true_b,
        on_epoch=on_epoch,
        should_stop=should_stop,
    )
