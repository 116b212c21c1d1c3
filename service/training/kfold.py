"""K-fold cross-validation: k fresh models, each validated on the fold the others trained on.

The training set (or its seeded ``train_examples`` subset) is shuffled with the job's seed and cut
into k folds of near-equal size; ``val_fraction`` is ignored (each fold is the validation set of
its round) and the test set is not touched. Every round trains the job's configuration for its
epochs from the same seeded initialisation, so the spread across folds comes from the data.
The standard deviation is the population one (ddof = 0), as scikit-learn reports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.training.config import DEFAULT_K, TrainConfig
from service.training.data import DatasetError, Splits, load_dataset
from service.training.diagnosis import diagnose
from service.training.diagnosis_advice import RunFacts, run_facts
from service.training.loop import fit
from service.training.regression import TabularSplits, fit_regression, load_tabular
from service.training.steps import EpochMetrics


def fold_indices(
    n: int, k: int, *, seed: int, train_examples: int | None = None
) -> list[torch.Tensor]:
    """k disjoint index tensors covering a seeded permutation of the first `used` examples."""
    used = n if train_examples is None else min(int(train_examples), n)
    if not 2 <= k <= used:
        raise DatasetError(f"k = {k} folds need at least {k} training examples, got {used}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:used]
    return list(torch.tensor_split(perm, k))


@dataclass
class FoldResult:
    fold: int  # from 1
    train_examples: int
    val_examples: int
    epochs: list[EpochMetrics]
    val_mse: float = math.nan  # regression: see RegressionResult.val_mse

    def to_dict(self) -> dict[str, Any]:
        last = self.epochs[-1]
        mse = {} if math.isnan(self.val_mse) else {"val_mse": _or_none(self.val_mse)}
        return {
            "fold": self.fold,
            "train_examples": self.train_examples,
            "val_examples": self.val_examples,
            "train_loss": last.train_loss,
            "val_loss": last.val_loss,
            "train_acc": _or_none(last.train_acc),
            "val_acc": _or_none(last.val_acc),
            "val_loss_curve": [e.val_loss for e in self.epochs],
            **mse,
        }


def _or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class KFoldResult:
    k: int
    folds: list[FoldResult]
    num_classes: int | None  # None for regression
    facts: RunFacts | None = None  # the job's knobs, for the diagnosis's advice

    def _mean_std(self, key: str) -> tuple[float | None, float | None]:
        values = [getattr(f.epochs[-1], key) for f in self.folds]
        if not all(math.isfinite(v) for v in values):
            return None, None
        return float(np.mean(values)), float(np.std(values))

    def metrics(self) -> dict[str, float]:
        """The job's final figures: means over the folds (no test set)."""
        out = {}
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            mean, _ = self._mean_std(key)
            out[key] = math.nan if mean is None else mean
        return out

    def mean_curves(self) -> dict[str, list[float]]:
        """Per-epoch means over the folds, for the diagnosis."""
        keys = ("train_loss", "val_loss", "train_acc", "val_acc")
        epochs = len(self.folds[0].epochs)
        return {
            key: [
                float(np.mean([getattr(f.epochs[e], key) for f in self.folds]))
                for e in range(epochs)
            ]
            for key in keys
        }

    def to_dict(self) -> dict[str, Any]:
        acc_mean, acc_std = self._mean_std("val_acc")
        loss_mean, loss_std = self._mean_std("val_loss")
        curves = self.mean_curves()
        mse: dict[str, Any] = {}
        if self.num_classes is None:  # regression: the yardstick across losses
            values = [f.val_mse for f in self.folds]
            finite = all(math.isfinite(v) for v in values)
            mse["val_mse_mean"] = float(np.mean(values)) if finite else None
        return {
            "k": self.k,
            "folds": [f.to_dict() for f in self.folds],
            "val_acc_mean": acc_mean,
            "val_acc_std": acc_std,
            "val_loss_mean": loss_mean,
            "val_loss_std": loss_std,
            **mse,
            "diagnosis": diagnose(
                curves["train_loss"],
                curves["val_loss"],
                curves["train_acc"],
                curves["val_acc"],
                self.num_classes,
                self.facts,
            ),
        }


def cross_validate(
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    data_dir: Path | None = None,
    datasets_dir: Path | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_fold: Callable[[FoldResult], None] = lambda _: None,
) -> KFoldResult:
    """Train and validate k models; raises like ``loop.train``."""
    k = config.k or DEFAULT_K
    folds: list[FoldResult] = []
    if config.is_regression:
        tabular = load_tabular(config.dataset, datasets_dir)
        parts = fold_indices(
            len(tabular.train_y), k, seed=config.seed, train_examples=config.train_examples
        )
        for i, val_idx in enumerate(parts):
            train_idx = torch.cat([p for j, p in enumerate(parts) if j != i])
            empty = tabular.test_x[:0]
            splits = TabularSplits(
                train_x=tabular.train_x[train_idx],
                train_y=tabular.train_y[train_idx],
                val_x=tabular.train_x[val_idx],
                val_y=tabular.train_y[val_idx],
                test_x=empty,
                test_y=tabular.test_y[:0],
            )
            result = fit_regression(config, splits, device=device, should_stop=should_stop)
            folds.append(
                FoldResult(i + 1, len(train_idx), len(val_idx), result.epochs, result.val_mse)
            )
            on_fold(folds[-1])
        return KFoldResult(k, folds, None, run_facts(config))

    dataset = load_dataset(config.dataset, data_dir, datasets_dir)
    parts = fold_indices(
        len(dataset.train_labels), k, seed=config.seed, train_examples=config.train_examples
    )
    for i, val_idx in enumerate(parts):
        train_idx = torch.cat([p for j, p in enumerate(parts) if j != i])
        splits = Splits(
            train_images=dataset.train_images[train_idx],
            train_labels=dataset.train_labels[train_idx],
            val_images=dataset.train_images[val_idx],
            val_labels=dataset.train_labels[val_idx],
            test_images=dataset.test_images[:0],
            test_labels=dataset.test_labels[:0],
        )
        result = fit(config, splits, dataset.class_names, device=device, should_stop=should_stop)
        folds.append(FoldResult(i + 1, len(train_idx), len(val_idx), result.epochs))
        on_fold(folds[-1])
    return KFoldResult(k, folds, len(dataset.class_names), run_facts(config))
