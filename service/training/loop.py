"""The training loop of the image classifiers (regression has its own, in ``regression``).

It knows no HTTP and no SQL: progress goes out through ``on_epoch``, cancellation comes in through
``should_stop``. The whole uint8 dataset lives on the device; each batch is gathered with a
shuffled index and turned into model input by ``models.to_model_input`` (the preprocessing that
prediction uses too). Metrics are accumulated as device tensors and read once per epoch.
``train`` loads the data and splits it; ``fit`` trains on given splits (K-fold calls it per fold).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import models
from models.dropout import dropouts_drawn_by_rand
from models.pooling import avg_pools_as_convs
from service.training.augment import augment_batch
from service.training.autotune import FullBatchAutotunedSteps
from service.training.checkpoint_writer import CheckpointWriter, detached_copy
from service.training.compiled import full_batches_compiled, worth_compiling
from service.training.config import DEFAULT_INIT_STD, TrainConfig
from service.training.data import Splits, load_dataset, make_splits
from service.training.graphed import GraphedSteps, cuda_graphs_enabled
from service.training.optim import make_optimizer
from service.training.precision import plain_fp32_on_gpu, training_autocast
from service.training.steps import (
    EagerSteps,
    EpochMetrics,
    Objective,
    Shard,
    StepOutput,
    TrainingCancelled,
    TrainingDiverged,
    add_penalties,
    diverged,
    shuffling_generator,
    train_epoch,
)

__all__ = [
    "EpochMetrics",
    "TrainResult",
    "TrainingCancelled",
    "TrainingDiverged",
    "fit",
    "train",
]

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
EVAL_BATCH_MIN = 512


@dataclass
class TrainResult:
    model: nn.Module  # eval mode, on the CPU
    model_kwargs: dict[str, Any]  # models.build(config.model, **model_kwargs) rebuilds it
    input_side: int
    class_names: list[str]
    epochs: list[EpochMetrics] = field(default_factory=list)
    image_shape: tuple[int, int] | None = None  # (H, W) of the training images as stored
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


def model_kwargs_for(config: TrainConfig, num_classes: int, side: int) -> dict[str, Any]:
    """The architecture arguments that rebuild the network (stored with the trained model).
    LeNet's switches are only included when the job sets them."""
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "in_channels": 1,
        "dropout": config.dropout,
        "input_side": side,
    }
    if config.activation is not None:
        kwargs["activation"] = config.activation
    if config.pooling is not None:
        kwargs["pooling"] = config.pooling
    return kwargs


def input_side(config: TrainConfig) -> int:
    """The side images are resized to; raises ValueError when the model cannot take it."""
    side = int(config.resize or models.get_spec(config.model).input_side)
    models.check_input_side(config.model, side)
    return side


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d) for m in model.modules())


class _Runner:
    """Device placement, precision and input conversion for one model."""

    def __init__(self, model: nn.Module, device: torch.device, side: int, plain_fp32: bool):
        self.device = device
        self.side = side
        self.cuda = device.type == "cuda"
        self.convolutional = _has_conv(model)
        # channels_last pays on the CPU too (mkldnn): LeNet trains 1.2-1.4x faster with it on
        # 2 AVX2 cores (measured), the 224-px nets the same or faster. Not with plain fp32 on a
        # GPU (precision.plain_fp32_on_gpu), measured in NCHW.
        self.channels_last = self.convolutional and not plain_fp32
        self._autocast = training_autocast(device, self.convolutional, plain_fp32)

    def autocast(self) -> contextlib.AbstractContextManager:
        return self._autocast()

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
        for start in range(0, n, max(batch_size, EVAL_BATCH_MIN)):
            end = min(start + max(batch_size, EVAL_BATCH_MIN), n)
            if should_stop():
                raise TrainingCancelled("training cancelled")
            y = labels[start:end]
            with runner.autocast():
                logits = model(runner.inputs(images[start:end]))
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
    return loss_sum.item() / n, correct.item() / n


# -------------------------------------------------------------------------------- checkpoints


def _config_key(config: TrainConfig) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: everything but the epoch count, unless
    the lr follows a schedule, whose every step's rate depends on the run's length."""
    key = config.to_dict()
    if config.lr_schedule == "constant":
        key.pop("epochs", None)
    return key


def _same_config(state: dict[str, Any], config: TrainConfig) -> bool:
    """Whether the checkpoint was made by ``config`` (see ``_config_key`` for the epoch count).
    A field added to TrainConfig since the checkpoint was written takes its default, which
    reproduces the old behaviour, so a job running across an upgrade still resumes."""
    stored = state.get("config")
    if not isinstance(stored, dict):
        return False
    try:
        return TrainConfig.from_dict({"epochs": config.epochs, **stored}) == config
    except TypeError:  # not a config at all
        return False


# Writes one epoch's checkpoint state to a path (on the CheckpointWriter's thread).
SaveCheckpoint = Callable[[Path, dict[str, Any]], None]


def save_checkpoint(
    path: Path, state: dict[str, Any], *, still_wanted: Callable[[], bool] = lambda: True
) -> bool:
    """torch.save to a temp file in the same directory, fsync, atomic rename; whether it was
    put in place. ``still_wanted`` is asked just before the rename: a write that outlived the
    run's lease (a slow disk) must not replace, or outlast, the new owner's checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if not still_wanted():
            Path(tmp).unlink(missing_ok=True)
            return False
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint's contents, or None when absent, unreadable, or from another config."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION or not _same_config(state, config):
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
        "model": model.state_dict(),  # live tensors: CheckpointWriter.submit copies them
        "optimizer": optimizer.state_dict(),
        "rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state(runner.device) if runner.cuda else None,
        "generator_state": generator.get_state(),
        "metrics": [m.to_dict() for m in history],
    }


# ------------------------------------------------------------------------------------- train


@dataclass
class Classifier:
    """A fresh network, its optimizer, its shuffling stream and the objective of one batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    objective: Objective
    runner: _Runner
    model_kwargs: dict[str, Any]
    n_train: int
    graphs: bool  # replay each full batch's step as a CUDA graph (``graphed``)

    def steps(self, batch_size: int) -> EagerSteps:
        """The step runner for every epoch of this run."""
        device = self.runner.device
        if self.graphs:
            return GraphedSteps(self.objective, self.optimizer, device, batch_size)
        if self.runner.cuda and self.runner.convolutional:
            return FullBatchAutotunedSteps(self.objective, self.optimizer, device, batch_size)
        return EagerSteps(self.objective, self.optimizer, device)


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device])
    return DistributedDataParallel(model)


def prepare_classifier(
    config: TrainConfig,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    device: torch.device,
    shard: Shard | None = None,
) -> Classifier:
    """Seeded model + optimizer for ``config`` on training data already on ``device``."""
    side = input_side(config)
    model_kwargs = model_kwargs_for(config, num_classes, side)
    torch.manual_seed(config.seed)
    model = models.build(
        config.model,
        **model_kwargs,
        init=config.init,
        init_std=config.init_std or DEFAULT_INIT_STD,
    )
    model.to(device)
    runner = _Runner(model, device, side, plain_fp32_on_gpu(device, config.model, side))
    if runner.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        # The same pooling and dropout, computed faster on a CPU (LeNet's steps ~1.4x, the
        # MLP's ~1.2x); no parameters change, so checkpoints and serving are as before.
        avg_pools_as_convs(model)
        dropouts_drawn_by_rand(model)
    # Data-parallel: the forward goes through DDP, which averages gradients across ranks.
    forward: Callable[[torch.Tensor], torch.Tensor] = (
        model if shard is None else _data_parallel(model, device)
    )
    # A captured step holds its lr as a constant, so a run whose lr changes steps eagerly.
    graphs = (
        shard is None
        and config.lr_schedule == "constant"
        and cuda_graphs_enabled(device, config.model, side)
    )
    if not graphs and worth_compiling(
        device,
        config.model,
        runner.convolutional,
        side,
        examples_trained=config.epochs * len(train_y),
        data_parallel=shard is not None,
    ):
        forward = full_batches_compiled(model, config.batch_size)

    def objective(idx: torch.Tensor) -> StepOutput:
        x, y = runner.inputs(augment_batch(train_x[idx], config.augment)), train_y[idx]
        with runner.autocast():
            logits = forward(x)
            loss = F.cross_entropy(logits, y, reduction=config.loss_reduction)
        with torch.no_grad():
            batch_sum = loss.detach().float()
            if config.loss_reduction == "mean":
                batch_sum = batch_sum * len(idx)
            correct = (logits.detach().argmax(dim=1) == y).sum()
        return StepOutput(add_penalties(loss, model, config), batch_sum, correct)

    return Classifier(
        model=model,
        optimizer=make_optimizer(model, config, capturable=graphs),
        generator=shuffling_generator(config),
        objective=objective,
        runner=runner,
        model_kwargs=model_kwargs,
        n_train=len(train_y),
        graphs=graphs,
    )


def train(
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    data_dir: Path | None = None,
    datasets_dir: Path | None = None,
    on_epoch: Callable[[EpochMetrics], None] = _ignore,
    should_stop: Callable[[], bool] = _never_stop,
    checkpoint_path: Path | None = None,
    shard: Shard | None = None,
    save_checkpoint_fn: SaveCheckpoint | None = None,
    checkpoint_last_epoch: bool = True,
    checkpoint_seconds: float = 0.0,
    checkpoint_on_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``; see the module docstring.

    Raises TrainingCancelled, TrainingDiverged, data.DatasetError, ValueError (bad config).
    """
    _check(config)
    input_side(config)  # a bad resize fails before any data is read
    start = time.perf_counter()
    dataset = load_dataset(config.dataset, data_dir, datasets_dir)
    splits = make_splits(
        dataset,
        seed=config.seed,
        val_fraction=config.val_fraction,
        train_examples=config.train_examples,
        test_examples=config.test_examples,
    )
    log.info("data read and split in %.2f s", time.perf_counter() - start)
    return fit(
        config,
        splits,
        dataset.class_names,
        device=device,
        on_epoch=on_epoch,
        should_stop=should_stop,
        checkpoint_path=checkpoint_path,
        shard=shard,
        save_checkpoint_fn=save_checkpoint_fn,
        checkpoint_last_epoch=checkpoint_last_epoch,
        checkpoint_seconds=checkpoint_seconds,
        checkpoint_on_stop=checkpoint_on_stop,
    )


def _write_on_stop(writer: CheckpointWriter, state: dict[str, Any] | None) -> None:
    """The held-back checkpoint of a run asked to stop and keep its work; a failed write is
    logged (the run then resumes from its last written one), the stop goes on either way."""
    try:
        writer.submit(state)  # type: ignore[arg-type]
        writer.wait()
        log.info("checkpoint of epoch %s written as the job stops", state["epoch"])  # type: ignore[index]
    except Exception as exc:
        log.warning("could not write the checkpoint as the job stops: %s", exc)


def _check(config: TrainConfig) -> None:
    if config.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {config.batch_size}")


def fit(
    config: TrainConfig,
    splits: Splits,
    class_names: list[str],
    *,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[EpochMetrics], None] = _ignore,
    should_stop: Callable[[], bool] = _never_stop,
    checkpoint_path: Path | None = None,
    shard: Shard | None = None,
    save_checkpoint_fn: SaveCheckpoint | None = None,
    checkpoint_last_epoch: bool = True,
    checkpoint_seconds: float = 0.0,
    checkpoint_on_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a fresh network on ``splits`` for ``config.epochs``; the test split (which may be
    empty) is evaluated once at the end. With a shard, this is one rank of a data-parallel run:
    only rank 0 reports epochs and writes checkpoints, with ``save_checkpoint_fn`` (default
    ``save_checkpoint``; the worker's also shares the file with other machines).

    ``checkpoint_last_epoch=False`` skips the last epoch's checkpoint, for a caller that deletes
    the checkpoint once the run is recorded (the worker): it would be written only to be thrown
    away, and the run would wait for it (VGG's is 170 MB). A crash before the run is recorded
    then resumes from the epoch before and trains the last one again.

    ``checkpoint_seconds`` > 0 writes a checkpoint only after an epoch that ends at least that
    long after the last checkpoint (or the first epoch's start): copying the state off the GPU
    each epoch costs short epochs a noticeable share (VGG at 112 px: about 0.1 s of a 1.2-s
    epoch). 0 writes one after every epoch.

    ``checkpoint_on_stop``: asked when a stop comes (TrainingCancelled); true (a worker that
    shuts down and requeues the job) writes the last finished epoch's checkpoint before the
    stop goes on, if ``checkpoint_seconds`` had held it back, so that the job resumes from
    there. That epoch's state is kept for it as a copy on the device (a copy within GPU
    memory is cheap; off the GPU is what the throttle saves)."""
    _check(config)
    start = time.perf_counter()
    device = torch.device(device)
    train_x = splits.train_images.to(device)
    train_y = splits.train_labels.to(device)
    val_x, val_y = splits.val_images.to(device), splits.val_labels.to(device)

    def fresh() -> Classifier:
        return prepare_classifier(config, train_x, train_y, len(class_names), device, shard)

    lead = shard is None or shard.rank == 0

    # cudnn.benchmark stays off but for full training batches (``autotune``).
    run = fresh()

    history: list[EpochMetrics] = []
    start_epoch = 1
    if checkpoint_path is not None:
        checkpoint_path = Path(checkpoint_path)
        state = _load_checkpoint(checkpoint_path, config)
        if state is not None:
            try:
                run.model.load_state_dict(state["model"])
                run.optimizer.load_state_dict(state["optimizer"])
                torch.set_rng_state(state["rng_state"])
                if run.runner.cuda and state.get("cuda_rng_state") is not None:
                    torch.cuda.set_rng_state(state["cuda_rng_state"], device)
                run.generator.set_state(state["generator_state"])
                history = [EpochMetrics(**m) for m in state["metrics"]]
                start_epoch = int(state["epoch"]) + 1
                log.info("resuming %s from epoch %d", config.model, start_epoch)
            except Exception as exc:
                log.warning("checkpoint %s does not fit (%s); starting over", checkpoint_path, exc)
                run = fresh()
                history, start_epoch = [], 1

    model, runner = run.model, run.runner
    # A rank's full batch is its share of the global one (autotuning keys on that size).
    steps = run.steps(config.batch_size if shard is None else shard.local_size(config.batch_size))
    eval_batch = max(config.batch_size, EVAL_BATCH_MIN)
    writer = None  # the next epoch trains while the last one's checkpoint is written
    if checkpoint_path is not None and lead:
        writer = CheckpointWriter(checkpoint_path, save_checkpoint_fn or save_checkpoint)
    # The job's time outside its epochs, in its log (the epochs' own times are its metrics).
    log.info("%s set up on %s in %.2f s", config.model, device, time.perf_counter() - start)
    last_checkpoint = time.monotonic()
    unsaved: dict[str, Any] | None = None  # the last epoch's state, where no checkpoint has it
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            trained = train_epoch(
                run.objective,
                model,
                run.optimizer,
                n_train=run.n_train,
                config=config,
                generator=run.generator,
                device=device,
                epoch=epoch,
                should_stop=should_stop,
                shard=shard,
                steps=steps,
            )
            train_acc = trained.sums.correct.item() / trained.sums.examples
            val_loss, val_acc = evaluate(model, runner, val_x, val_y, eval_batch, should_stop)
            metrics = trained.metrics(val_loss, train_acc=train_acc, val_acc=val_acc)
            history.append(metrics)
            # Report first, checkpoint second: a crash in between redoes this epoch on resume and
            # overwrites its row (idempotent), where the other order would skip the row for good.
            if lead:
                on_epoch(metrics)
            now = time.monotonic()
            due = now - last_checkpoint >= checkpoint_seconds
            write = writer is not None and due and (checkpoint_last_epoch or epoch < config.epochs)
            hold = writer is not None and not write and checkpoint_on_stop is not None
            if write or hold:
                state = _checkpoint_state(
                    config, epoch, model, run.optimizer, run.generator, history, runner
                )
                if write:
                    writer.submit(state)  # type: ignore[union-attr]
                    last_checkpoint, unsaved = now, None
                else:
                    unsaved = detached_copy(state, device=None)

        del val_x, val_y
        test_loss, test_acc = math.nan, math.nan
        if len(splits.test_labels):
            start = time.perf_counter()
            test_x, test_y = splits.test_images.to(device), splits.test_labels.to(device)
            test_loss, test_acc = evaluate(model, runner, test_x, test_y, eval_batch, should_stop)
            if not math.isfinite(test_loss):
                raise diverged(config, config.epochs, "test loss", test_loss)
            log.info("test set evaluated in %.2f s", time.perf_counter() - start)
    except BaseException as exc:
        if writer is not None:
            keep = isinstance(exc, TrainingCancelled) and unsaved is not None
            if keep and checkpoint_on_stop is not None and checkpoint_on_stop():
                _write_on_stop(writer, unsaved)
            writer.close(raise_errors=False)  # the error on its way matters more
        raise
    if writer is not None:
        start = time.perf_counter()
        writer.close()
        log.info("checkpoint writes finished %.2f s after the test", time.perf_counter() - start)

    model.to("cpu")
    if runner.channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    last = history[-1]
    return TrainResult(
        model=model,
        model_kwargs=run.model_kwargs,
        input_side=runner.side,
        class_names=list(class_names),
        epochs=history,
        train_loss=last.train_loss,
        train_acc=last.train_acc,
        val_loss=last.val_loss,
        val_acc=last.val_acc,
        test_loss=test_loss,
        test_acc=test_acc,
        image_shape=(int(train_x.shape[-2]), int(train_x.shape[-1])),
    )
