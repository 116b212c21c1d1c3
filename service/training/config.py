"""The frozen, fully resolved hyperparameters of one training job."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Optimizer = Literal["sgd", "momentum", "adam"]
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")
MOMENTUM = 0.9  # beta of the `momentum` optimizer


@dataclass(frozen=True)
class TrainConfig:
    """Everything a job needs; stored on the job row so a job can be re-run from it alone."""

    model: str
    dataset: str = "fashion-mnist"
    weight_decay: float = 0.0  # lambda of the L2 penalty, applied to weights, never biases
    dropout: float = 0.0  # drop probability of every dropout layer in training
    batch_size: int = 256  # examples per SGD step
    epochs: int = 10
    lr: float = 0.1  # learning rate
    optimizer: str = "sgd"
    seed: int = 0
    resize: int | None = None  # input side in pixels; None = the model's own
    val_fraction: float = 0.1  # share of the training set held out for per-epoch curves
    train_examples: int | None = None  # use only this many training examples (None = all)
    test_examples: int | None = None  # evaluate on only this many test examples (None = all)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a stored dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
