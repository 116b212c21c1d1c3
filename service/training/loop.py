"""One training loop for every model.

It knows no HTTP and no SQL: progress goes out through ``on_epoch``, cancellation comes in through
``should_stop``. The whole uint8 dataset lives on the device; each batch is gathered with a
shuffled index and turned into model input by ``models.to_model_input`` (the preprocessing that
prediction uses too). Metrics are accumulated as device tensors and read once per epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import models
from service.training.config import TrainConfig
from service.training.data import load_dataset, make_splits
from service.training.optim import make_optimizer

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
EVAL_BATCH_MIN = 512
_SHUFFLE_SEED_OFFSET = 0x5EED  # the shuffling stream differs from the split's stream


class TrainingCancelled(Exception):
    """should_stop() returned true; the job stopped between two batches."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the model is useless and must not be saved."""


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # from 1
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    examples_per_sec: float  # training examples / training seconds
    seconds: float  # the whole epoch, validation included

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class TrainResult:
    model: nn.Module  # eval mode, on the CPU
    model_kwargs: dict[str, Any]  # models.build(config.model, **model_kwargs) rebuilds it
    input_side: int
    class_names: list[str]
    epochs: list[EpochMetrics] = field(default_factory=list)
    train_loss: float = math.nan
    train_acc: float = math.nan
    val_loss: float = math.nan
    val_acc: float = math.nan
    test_loss: float = math.nan
    test_acc: float = math.nan

    def metrics(self) -> dict[str, float]:
        """The final figures, as stored with the model."""
        return {
            "train_loss": self.train_loss,
            "train_acc": self.train_acc,
            "val_loss": self.val_loss,
            "val_acc": self.val_acc,
            "test_loss": self.test_loss,
            "test_acc": self.test_acc,
        }


def _never_stop() -> bool:
    return False


def _ignore(_: EpochMetrics) -> None:
    return None


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d) for m in model.modules())


def _batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch; the last partial batch is kept, but a lone trailing example
    is folded into the previous batch (BatchNorm cannot train on a batch of one)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


class _Runner:
    """Device placement, precision and input conversion for one model."""

    def __init__(self, model: nn.Module, device: torch.device, side: int):
        self.device = device
        self.side = side
        self.cuda = device.type == "cuda"
        self.channels_last = self.cuda and _has_conv(model)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cuda:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def inputs(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = models.to_model_input(images_uint8, self.side)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def evaluate(
    model: nn.Module,
    runner: _Runner,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    should_stop: Callable[[], bool] = _never_stop,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy with dropout off (eval mode), no autograd."""
    n = len(labels)
    if n == 0:
        return math.nan, math.nan
    model.eval()
    loss_sum = torch.zeros((), device=runner.device, dtype=torch.float32)
    correct = torch.zeros((), device=runner.device, dtype=torch.int64)
    with torch.inference_mode():
        for start, end in _batch_bounds(n, max(batch_size, EVAL_BATCH_MIN)):
            if should_stop():
                raise TrainingCancelled("training cancelled")
            y = labels[start:end]
            with runner.autocast():
                logits = model(runner.inputs(images[start:end]))
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
    return loss_sum.item() / n, correct.item() / n


def _diverged(config: TrainConfig, epoch: int, what: str, value: float) -> TrainingDiverged:
    hints = [f"a lower learning rate (now {config.lr:g})"]
    if config.optimizer != "sgd":
        hints.append("plain `sgd`")
    hints.append("another seed (a different initialisation)")
    if config.weight_decay > 0:
        hints.append(f"smaller or no weight decay (now {config.weight_decay:g})")
    return TrainingDiverged(
        f"training diverged at epoch {epoch}: the {what} became {value}. "
        f"Try {', '.join(hints[:-1])} or {hints[-1]}."
    )


# -------------------------------------------------------------------------------- checkpoints


def _config_key(config: TrainConfig) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (everything but the epoch count)."""
    key = config.to_dict()
    key.pop("epochs", None)
    return key


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file in the same directory, fsync, atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint's contents, or None when absent, unreadable, or from another config."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION or state.get("config") != _config_key(config):
            log.warning("checkpoint %s belongs to another configuration; starting over", path)
            return None
        for key in ("model", "optimizer", "epoch", "rng_state", "generator_state", "metrics"):
            if key not in state:
                raise KeyError(key)
        if not 1 <= int(state["epoch"]) <= config.epochs:
            raise ValueError(f"checkpoint is at epoch {state['epoch']} of {config.epochs}")
        return state
    except Exception as exc:  # corrupt, truncated, foreign: start over
        log.warning("cannot resume from checkpoint %s (%s); starting over", path, exc)
        return None


def _checkpoint_state(
    config: TrainConfig,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    history: list[EpochMetrics],
    runner: _Runner,
) -> dict[str, Any]:
    """Everything needed to continue exactly where this epoch ended (loadable weights_only)."""
    return {
        "version": CHECKPOINT_VERSION,
        "config": _config_key(config),
        "epoch": epoch,
        "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state(runner.device) if runner.cuda else None,
        "generator_state": generator.get_state(),
        "metrics": [m.to_dict() for m in history],
    }


# ------------------------------------------------------------------------------------- train


def train(
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    data_dir: Path | None = None,
    on_epoch: Callable[[EpochMetrics], None] = _ignore,
    should_stop: Callable[[], bool] = _never_stop,
    checkpoint_path: Path | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``; see the module docstring.

    Raises TrainingCancelled, TrainingDiverged, data.DatasetError, ValueError (bad config).
    """
    if config.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {config.batch_size}")
    device = torch.device(device)
    spec = models.get_spec(config.model)
    side = int(config.resize or spec.input_side)
    models.check_input_side(config.model, side)

    dataset = load_dataset(config.dataset, data_dir)
    splits = make_splits(
        dataset,
        seed=config.seed,
        val_fraction=config.val_fraction,
        train_examples=config.train_examples,
        test_examples=config.test_examples,
    )
    train_x = splits.train_images.to(device)
    train_y = splits.train_labels.to(device)
    val_x, val_y = splits.val_images.to(device), splits.val_labels.to(device)
    n_train = len(train_y)

    model_kwargs = {
        "num_classes": len(dataset.class_names),
        "in_channels": 1,
        "dropout": config.dropout,
        "input_side": side,
    }

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
        torch.manual_seed(config.seed)
        net = models.build(config.model, **model_kwargs)
        net.to(device)
        if _has_conv(net) and device.type == "cuda":
            net.to(memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(config.seed + _SHUFFLE_SEED_OFFSET)
        return net, make_optimizer(net, config), gen

    model, optimizer, generator = fresh()
    runner = _Runner(model, device, side)
    if runner.cuda:
        torch.backends.cudnn.benchmark = True

    history: list[EpochMetrics] = []
    start_epoch = 1
    if checkpoint_path is not None:
        checkpoint_path = Path(checkpoint_path)
        state = _load_checkpoint(checkpoint_path, config)
        if state is not None:
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                torch.set_rng_state(state["rng_state"])
                if runner.cuda and state.get("cuda_rng_state") is not None:
                    torch.cuda.set_rng_state(state["cuda_rng_state"], device)
                generator.set_state(state["generator_state"])
                history = [EpochMetrics(**m) for m in state["metrics"]]
                start_epoch = int(state["epoch"]) + 1
                log.info("resuming %s from epoch %d", config.model, start_epoch)
            except Exception as exc:
                log.warning("checkpoint %s does not fit (%s); starting over", checkpoint_path, exc)
                model, optimizer, generator = fresh()
                history, start_epoch = [], 1

    bounds = _batch_bounds(n_train, config.batch_size)
    eval_batch = max(config.batch_size, EVAL_BATCH_MIN)
    for epoch in range(start_epoch, config.epochs + 1):
        if should_stop():
            raise TrainingCancelled(f"training cancelled before epoch {epoch}")
        epoch_start = time.perf_counter()
        model.train()
        perm = torch.randperm(n_train, generator=generator).to(device, non_blocking=True)
        loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for start, end in bounds:
            if should_stop():
                raise TrainingCancelled(f"training cancelled during epoch {epoch}")
            idx = perm[start:end]
            x, y = runner.inputs(train_x[idx]), train_y[idx]
            with runner.autocast():
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += loss.detach().float() * (end - start)
                correct += (logits.detach().argmax(dim=1) == y).sum()
        train_loss = loss_sum.item() / n_train  # the epoch's one host sync
        train_acc = correct.item() / n_train
        train_seconds = time.perf_counter() - epoch_start
        if not math.isfinite(train_loss):
            raise _diverged(config, epoch, "training loss", train_loss)
        val_loss, val_acc = evaluate(model, runner, val_x, val_y, eval_batch, should_stop)
        if not math.isfinite(val_loss):
            raise _diverged(config, epoch, "validation loss", val_loss)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            examples_per_sec=n_train / max(train_seconds, 1e-9),
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(metrics)
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                _checkpoint_state(config, epoch, model, optimizer, generator, history, runner),
            )
        on_epoch(metrics)

    del train_x, train_y, val_x, val_y
    test_x, test_y = splits.test_images.to(device), splits.test_labels.to(device)
    test_loss, test_acc = evaluate(model, runner, test_x, test_y, eval_batch, should_stop)
    if not math.isfinite(test_loss):
        raise _diverged(config, config.epochs, "test loss", test_loss)

    model.to("cpu")
    if runner.channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    last = history[-1]
    return TrainResult(
        model=model,
        model_kwargs=model_kwargs,
        input_side=side,
        class_names=list(dataset.class_names),
        epochs=history,
        train_loss=last.train_loss,
        train_acc=last.train_acc,
        val_loss=last.val_loss,
        val_acc=last.val_acc,
        test_loss=test_loss,
        test_acc=test_acc,
    )
