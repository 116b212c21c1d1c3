"""The frozen, fully resolved hyperparameters of one training job."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Optimizer = Literal["sgd", "momentum", "adam"]
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")
MOMENTUM = 0.9  # beta of the `momentum` optimizer

JOB_KINDS: tuple[str, ...] = ("train", "lr_find", "kfold")
REGRESSION_MODELS: tuple[str, ...] = ("linear",)  # models whose jobs fit numbers, not classes
REGRESSION_LOSSES: tuple[str, ...] = ("l2", "l1", "huber")
LAST_BATCH_POLICIES: tuple[str, ...] = ("keep", "drop", "pad")
LOSS_REDUCTIONS: tuple[str, ...] = ("mean", "sum")
INITS: tuple[str, ...] = ("xavier", "normal", "default")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "onecycle")  # see training/schedule.py
AUGMENTS: tuple[str, ...] = ("none", "flip", "flip_crop")  # see training/augment.py

DEFAULT_INIT_STD = 0.01  # `init: normal` draws N(0, 0.01^2), the course's scratch implementations
DEFAULT_K = 5
DEFAULT_LR_MIN = 1e-6
DEFAULT_LR_MAX = 10.0
DEFAULT_LR_STEPS = 200


@dataclass(frozen=True)
class TrainConfig:
    """Everything a job needs; stored on the job row so a job can be re-run from it alone.

    Fields added after the first release have defaults that reproduce the old behaviour, so
    rows stored before them still load (``from_dict``) and still train the same way.
    """

    model: str
    dataset: str = "fashion-mnist"
    weight_decay: float = 0.0  # lambda of the L2 penalty on weights (biases: see decay_bias)
    dropout: float = 0.0  # drop probability of every dropout layer in training
    batch_size: int = 256  # examples per SGD step
    epochs: int = 10
    lr: float = 0.1  # learning rate
    optimizer: str = "sgd"
    lr_schedule: str = "constant"  # constant | cosine | onecycle: the lr of each step
    augment: str = "none"  # none | flip | flip_crop: random changes to training images
    seed: int = 0
    resize: int | None = None  # input side in pixels; None = the model's own
    val_fraction: float = 0.1  # share of the training set held out for per-epoch curves
    train_examples: int | None = None  # use only this many training examples (None = all)
    test_examples: int | None = None  # evaluate on only this many test examples (None = all)
    # --- the course's other experiments ---------------------------------------------------
    kind: str = "train"  # train | lr_find | kfold
    loss: str | None = None  # linear only: l2 (1/2 squared error) | l1 | huber; None: classes
    l1: float = 0.0  # coefficient of the L1 penalty sum|w| on the decayed parameters
    decay_bias: bool = False  # apply weight_decay and l1 to biases too
    last_batch: str = "keep"  # keep | drop | pad: what to do with a short last batch
    loss_reduction: str = "mean"  # mean | sum over the batch (sum: gradient x batch size)
    init: str = "xavier"  # xavier | normal (N(0, init_std^2)) | default (torch's)
    init_std: float | None = None  # init normal only; None = DEFAULT_INIT_STD
    activation: str | None = None  # lenet only: sigmoid | relu; None = the model's own
    pooling: str | None = None  # lenet only: avg | max; None = the model's own
    k: int | None = None  # kfold only: number of folds
    lr_min: float | None = None  # lr_find only: first learning rate of the range
    lr_max: float | None = None  # lr_find only: last learning rate of the range
    steps: int | None = None  # lr_find only: number of steps from lr_min to lr_max
    # --- scale ------------------------------------------------------------------------------
    devices: int = 1  # data-parallel processes (DistributedDataParallel); the batch is global

    @property
    def is_regression(self) -> bool:
        return self.model in REGRESSION_MODELS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a stored dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
