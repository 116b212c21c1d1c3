"""What every training loop shares: one epoch of SGD steps over a batch plan, the penalties,
the fresh model + optimizer + shuffling stream of a run, and the ways a run ends early.

A task (classification in ``loop``, regression in ``regression``) supplies an *objective*: a
function from a batch's indices to the loss to minimise and the figures to report. The LR range
test (``lr_find``) and K-fold (``kfold``) reuse the same objectives.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from service.training.batching import plan_epoch
from service.training.config import TrainConfig
from service.training.optim import l1_penalty, penalised_parameters
from service.training.schedule import LrSchedule

SHUFFLE_SEED_OFFSET = 0x5EED  # the shuffling stream differs from the split's stream


class TrainingCancelled(Exception):
    """should_stop() returned true; the job stopped between two batches."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the model is useless and must not be saved."""


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # from 1
    train_loss: float  # mean per-example loss (penalties not included)
    train_acc: float  # NaN for regression
    val_loss: float
    val_acc: float  # NaN for regression
    examples_per_sec: float  # training examples / training seconds
    seconds: float  # the whole epoch, validation included
    lr: float | None = None  # the learning rate of the epoch's last step (see lr_schedule)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class StepOutput:
    objective: torch.Tensor  # what backward() runs on: the reduced loss plus penalties
    loss_sum: torch.Tensor  # detached: the data loss summed over the batch (for the curves)
    correct: torch.Tensor | None  # detached: correct predictions (classification only)


Objective = Callable[[torch.Tensor], StepOutput]  # (B,) indices into the training set


@dataclass
class EpochSums:
    loss_sum: torch.Tensor  # device scalars: read once per epoch
    correct: torch.Tensor
    examples: int  # examples stepped on (pad counts its fill, drop leaves some out)
    lr: float  # the learning rate of the last step


def _never_stop() -> bool:
    return False


def reduce_loss(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    """mean or sum over the batch. With sum the gradient is batch_size times the mean's, so
    the same step needs lr / batch_size (the course's `sgd` divides by batch_size for this)."""
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    raise ValueError(f"unknown loss_reduction {reduction!r} (known: mean, sum)")


def add_penalties(loss: torch.Tensor, model: nn.Module, config: TrainConfig) -> torch.Tensor:
    """The loss plus the L1 penalty (L2 weight decay is the optimizer's, not the loss's)."""
    if config.l1 <= 0:
        return loss
    params = penalised_parameters(model, config.decay_bias)
    return loss + config.l1 * l1_penalty(params).to(loss.device)


def shuffling_generator(config: TrainConfig) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed + SHUFFLE_SEED_OFFSET)


class EagerSteps:
    """One optimizer step per call, run op by op; the metric sums stay on the device."""

    def __init__(self, objective: Objective, optimizer: torch.optim.Optimizer, device) -> None:
        self.objective, self.optimizer = objective, optimizer
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)

    def __call__(self, batch: torch.Tensor) -> None:
        self.step(batch)

    def step(self, batch: torch.Tensor) -> None:
        out = self.objective(batch)
        self.optimizer.zero_grad(set_to_none=True)
        out.objective.backward()
        self.optimizer.step()
        with torch.no_grad():  # in place: a captured CUDA graph adds into these same tensors
            self.loss_sum += out.loss_sum
            if out.correct is not None:
                self.correct += out.correct

    def take_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The sums since the last call (device tensors), and start again from zero."""
        sums = self.loss_sum.clone(), self.correct.clone()
        self.loss_sum.zero_()
        self.correct.zero_()
        return sums


def run_epoch(
    objective: Objective,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    n_train: int,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    epoch: int,
    should_stop: Callable[[], bool] = _never_stop,
    shard: Shard | None = None,
    steps: EagerSteps | None = None,
) -> EpochSums:
    """One pass of SGD steps in a freshly shuffled order, batched by config.last_batch, each at
    the lr that config.lr_schedule gives it.

    ``steps`` runs each batch's step (default: eagerly; ``graphed.GraphedSteps`` replays a CUDA
    graph); pass the same one to every epoch of a run. With a shard (data-parallel training)
    every rank draws the same order and steps on its slice of each global batch; DDP averages
    the gradients, and the sums come back global."""
    model.train()
    steps = steps if steps is not None else EagerSteps(objective, optimizer, device)
    order = torch.randperm(n_train, generator=generator)
    indices, bounds = plan_epoch(order, config.batch_size, config.last_batch, generator)
    indices = indices.to(device, non_blocking=True)
    # Every epoch of a run has the same number of batches, so this one's count fixes the run's.
    schedule = LrSchedule(config, len(bounds))
    examples = 0
    for step, (start, end) in enumerate(bounds):
        stop = should_stop() if shard is None else shard.agree_to_stop(should_stop, step)
        if stop:
            raise TrainingCancelled(f"training cancelled during epoch {epoch}")
        schedule.apply(optimizer, epoch, step)
        batch = indices[start:end]
        steps(batch if shard is None else batch[shard.rank :: shard.world_size])
        examples += end - start
    loss_sum, correct = steps.take_sums()
    if shard is not None:
        loss_sum, correct = shard.sum(loss_sum), shard.sum(correct)
    lr = float(optimizer.param_groups[0]["lr"])
    return EpochSums(loss_sum=loss_sum, correct=correct, examples=examples, lr=lr)


@dataclass
class TrainedEpoch:
    """One epoch's training pass, timed and checked; ``metrics`` completes its curve row once
    the task has validated the model."""

    config: TrainConfig
    epoch: int
    sums: EpochSums
    train_loss: float  # mean per example
    started: float  # time.perf_counter() at the epoch's start
    train_seconds: float

    def metrics(
        self, val_loss: float, *, train_acc: float = math.nan, val_acc: float = math.nan
    ) -> EpochMetrics:
        """The epoch's row (accuracies NaN for regression); raises TrainingDiverged if the
        validation loss is NaN or infinite."""
        if not math.isfinite(val_loss):
            raise diverged(self.config, self.epoch, "validation loss", val_loss)
        return EpochMetrics(
            epoch=self.epoch,
            train_loss=self.train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            examples_per_sec=self.sums.examples / max(self.train_seconds, 1e-9),
            seconds=time.perf_counter() - self.started,
            lr=self.sums.lr,
        )


def train_epoch(
    *args: Any,
    config: TrainConfig,
    epoch: int,
    should_stop: Callable[[], bool] = _never_stop,
    **kwargs: Any,
) -> TrainedEpoch:
    """``run_epoch`` (same arguments) between the checks every task's loop makes around it: a
    stop asked before the epoch, and a training loss that became NaN or infinite (read once,
    after the epoch)."""
    if should_stop():
        raise TrainingCancelled(f"training cancelled before epoch {epoch}")
    started = time.perf_counter()
    sums = run_epoch(*args, config=config, epoch=epoch, should_stop=should_stop, **kwargs)
    train_loss = sums.loss_sum.item() / sums.examples  # the epoch's one host sync
    train_seconds = time.perf_counter() - started
    if not math.isfinite(train_loss):
        raise diverged(config, epoch, "training loss", train_loss)
    return TrainedEpoch(config, epoch, sums, train_loss, started, train_seconds)


class Shard:
    """This process's place in a data-parallel run (torch.distributed is initialised)."""

    STOP_CHECK_EVERY = 10  # batches between agreements on stopping (each one syncs the host)

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device

    def local_size(self, batch_size: int) -> int:
        """How many of a global batch of ``batch_size`` this rank steps on (``run_epoch``)."""
        return len(range(self.rank, batch_size, self.world_size))

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def agree_to_stop(self, should_stop: Callable[[], bool], step: int) -> bool:
        """Every rank stops at the same batch, or a rank left behind would wait forever."""
        if step % self.STOP_CHECK_EVERY:
            return False
        import torch.distributed as dist

        flag = torch.tensor([1 if should_stop() else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def diverged(config: TrainConfig, epoch: int, what: str, value: float) -> TrainingDiverged:
    hints = [f"a lower learning rate (now {config.lr:g})"]
    if config.optimizer != "sgd":
        hints.append("plain `sgd`")
    if config.loss_reduction == "sum":
        hints.append(f"loss_reduction `mean` (sum multiplies the step by {config.batch_size})")
    hints.append("another seed or init (a different initialisation)")
    if config.weight_decay > 0:
        hints.append(f"smaller or no weight decay (now {config.weight_decay:g})")
    return TrainingDiverged(
        f"training diverged at epoch {epoch}: the {what} became {value}. "
        f"Try {', '.join(hints[:-1])} or {hints[-1]}."
    )
