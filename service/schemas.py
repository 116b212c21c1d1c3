"""Request and response bodies of the HTTP API (pydantic v2)."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, Protocol, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
)

import models
from service.tables import EpochMetric, Job, JobStatus, StoredDataset, Sweep
from service.training.config import (
    DEFAULT_INIT_STD,
    DEFAULT_K,
    DEFAULT_LR_MAX,
    DEFAULT_LR_MIN,
    DEFAULT_LR_STEPS,
    MOMENTUM,
    TrainConfig,
)
from service.training.data import (
    IMAGE_DATASETS,
    KNOWN_DATASETS,
    REGRESSION_DATASETS,
    SYNTHETIC_TEST,
    SYNTHETIC_TRAIN,
    DatasetError,
    is_stored_id,
    split_indices,
)
from service.training.kfold import fold_indices
from service.training.regression import load_tabular

OptimizerName = Literal["sgd", "momentum", "adam"]
LrScheduleName = Literal["constant", "cosine", "onecycle"]
AugmentName = Literal["none", "flip", "flip_crop"]
JobKindName = Literal["train", "lr_find", "kfold"]
DatasetKindName = Literal["image", "regression"]
ALL_MODELS = models.list_models() + models.list_regression_models()
LENET_SWITCHES = ("activation", "pooling")
LR_FIND_FIELDS = ("lr_min", "lr_max", "steps")
# Fields a kind has no use for: given, they would be stored and shown but change nothing.
UNUSED_BY_KIND = {
    "lr_find": {
        "epochs": "it runs `steps` steps, not epochs",
        "lr": "it sweeps the lr from lr_min to lr_max",
        "test_examples": "it has no test set",
    },
    "kfold": {
        "val_fraction": "its folds are its validation sets",
        "test_examples": "it has no test set",
    },
}


def builtin_dataset_kind(name: str) -> DatasetKindName | None:
    """image | regression for a built-in dataset name; None for anything else."""
    if name in IMAGE_DATASETS:
        return "image"
    if name in KNOWN_DATASETS:
        return "regression"
    return None


class UploadedDataset(Protocol):
    """What validating a job needs to know of the uploaded dataset it names (the caller looks
    it up: datasets_store.stored_facts)."""

    @property
    def kind(self) -> str: ...

    @property
    def train_examples(self) -> int: ...

    @property
    def test_examples(self) -> int | None: ...


# The standard Fashion-MNIST training set (the IDX files data.find_fashion_mnist finds). A
# smaller set under TRAINSERVE_DATA_DIR only makes the submit-time checks miss a case that the
# job then reports itself.
FASHION_MNIST_TRAIN = 60_000
FASHION_MNIST_TEST = 10_000


@lru_cache(maxsize=len(KNOWN_DATASETS))
def builtin_sizes(name: str) -> tuple[int, int] | None:
    """(training, test) set sizes of a built-in dataset; None for anything else."""
    if name == "fashion-mnist":
        return FASHION_MNIST_TRAIN, FASHION_MNIST_TEST
    if name == "synthetic":
        return SYNTHETIC_TRAIN, SYNTHETIC_TEST
    if name in REGRESSION_DATASETS:
        table = load_tabular(name)  # generated, small and cached
        return len(table.train_y), len(table.test_y)
    return None


# The sizes below come from the very functions training splits with (with any seed: only the
# order depends on it), so a check at submit agrees with the run to the example.
@lru_cache(maxsize=1024)
def train_split_examples(n: int, val_fraction: float, train_examples: int | None) -> int:
    """How many of a training set of `n` a train or lr_find job trains on (after the
    validation split); raises DatasetError as the job would."""
    train, _ = split_indices(n, seed=0, val_fraction=val_fraction, train_examples=train_examples)
    return len(train)


@lru_cache(maxsize=1024)
def fewest_fold_train_examples(n: int, k: int, train_examples: int | None) -> int:
    """The fewest examples a round of a k-fold job on a training set of `n` trains on (all the
    folds but the largest); raises DatasetError as the job would (k above the examples)."""
    folds = fold_indices(n, k, seed=0, train_examples=train_examples)
    return sum(len(f) for f in folds) - max(len(f) for f in folds)


def exact_lr(value: float) -> float:
    """A computed lr as the decimal it stands for: 0.9 x 0.1 is 0.09, not 0.08999999999999998."""
    return float(f"{value:.12g}")


def default_lr(model: str, optimizer: str) -> float:
    """The course's SGD lr; scaled for momentum (same effective step); a tuned rate for Adam."""
    spec = models.get_spec(model)
    course_lr = spec.lr
    if optimizer == "adam":
        return spec.adam_lr
    if optimizer == "momentum":
        return exact_lr(course_lr * (1 - MOMENTUM))  # momentum multiplies the step by 1/(1-beta)
    return course_lr


class JobCreate(BaseModel):
    """A training job. Omitted fields take the model's course defaults."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="Model to train: one of " + ", ".join(ALL_MODELS))
    dataset: str = Field(
        default="fashion-mnist",
        description="Dataset: " + " | ".join(KNOWN_DATASETS) + " | the id of an uploaded "
        "dataset (POST /datasets). linear needs a regression dataset, the others image data",
    )
    kind: JobKindName = Field(
        default="train",
        description="train: one model | lr_find: the learning-rate range test (loss vs lr, "
        "a suggested lr) | kfold: k-fold cross-validation (per-fold accuracy, mean ± std)",
    )
    weight_decay: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        allow_inf_nan=False,
        description="λ of the L2 penalty on weights (biases too with decay_bias)",
    )
    l1: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        allow_inf_nan=False,
        description="Coefficient of the L1 penalty sum|w| added to the loss (weights; biases "
        "too with decay_bias): it drives weights to exactly zero more than L2 does",
    )
    decay_bias: bool = Field(
        default=False, description="Apply weight_decay and l1 to biases too (the course: no)"
    )
    loss: Literal["l2", "l1", "huber"] | None = Field(
        default=None,
        description="linear only (default l2): l2 = (1/2)(y - y')², l1 = |y - y'|, huber = "
        "squared inside |y - y'| ≤ 1 and absolute beyond",
    )
    loss_reduction: Literal["mean", "sum"] = Field(
        default="mean",
        description="How a batch's losses are combined. sum makes every gradient batch_size "
        "times the mean's, so the same step needs lr / batch_size; the curves always report "
        "the mean loss per example",
    )
    last_batch: Literal["keep", "drop", "pad"] = Field(
        default="keep",
        description="A short last batch: keep it as is | drop it | pad it with examples drawn "
        "from the rest of the data",
    )
    init: Literal["xavier", "normal", "default"] = Field(
        default="xavier",
        description="Weight initialisation: xavier (uniform) | normal: N(0, init_std²) weights "
        "and zero biases | default: torch's",
    )
    init_std: float | None = Field(
        default=None,
        gt=0,
        le=10,
        allow_inf_nan=False,
        description=f"init normal only: the weights' standard deviation (default "
        f"{DEFAULT_INIT_STD}; the course's weight-decay chapter uses 1)",
    )
    activation: Literal["sigmoid", "relu"] | None = Field(
        default=None, description="lenet only: the course's sigmoid (default) or relu"
    )
    pooling: Literal["avg", "max"] | None = Field(
        default=None, description="lenet only: the course's avg (default) or max pooling"
    )
    k: int | None = Field(
        default=None, ge=2, le=10, description=f"kfold only: number of folds (default {DEFAULT_K})"
    )
    lr_min: float | None = Field(
        default=None,
        gt=0,
        le=100,
        allow_inf_nan=False,
        description=f"lr_find only: first lr (default {DEFAULT_LR_MIN:g})",
    )
    lr_max: float | None = Field(
        default=None,
        gt=0,
        le=100,
        allow_inf_nan=False,
        description=f"lr_find only: last lr (default {DEFAULT_LR_MAX:g})",
    )
    steps: int | None = Field(
        default=None,
        ge=20,
        le=2000,
        description=f"lr_find only: steps from lr_min to lr_max (default {DEFAULT_LR_STEPS})",
    )
    dropout: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="Drop probability of every dropout layer in training; default: the model's",
    )
    batch_size: int = Field(default=256, ge=1, le=4096)
    epochs: int = Field(default=10, ge=1, le=500)
    lr: float | None = Field(
        default=None,
        gt=0,
        le=100,
        allow_inf_nan=False,
        description="Learning rate; default: the model's course rate for sgd, "
        "that rate x (1 - 0.9) for momentum, the model's adam_lr for adam (GET /catalog)",
    )
    optimizer: OptimizerName = "sgd"
    lr_schedule: LrScheduleName = Field(
        default="constant",
        description="The lr of each step: constant | cosine: from lr down towards 0 over the "
        "run | onecycle: up from lr/25 to lr over the first 30% of the steps, then down to "
        "lr/250000 (torch's OneCycleLR shape, no momentum cycling). lr is the peak",
    )
    augment: AugmentName = Field(
        default="none",
        description="Random changes to each training image (image classifiers): none | flip: "
        "mirrored left-right with probability 1/2 | flip_crop: that, then shifted by up to 2 "
        "pixels each way (RandomCrop(28, padding=2)). Validation and test images are not changed",
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**31 - 1, description="Random seed; default: drawn and stored"
    )
    resize: int | None = Field(
        default=None, ge=1, le=512, description="Input side in pixels; default: the model's"
    )
    val_fraction: float = Field(
        default=0.1, gt=0, le=0.5, description="Share of the training set held out for curves"
    )
    train_examples: int | None = Field(
        default=None, ge=2, le=2**31 - 1,
        description="Train on only this many examples (a seeded subset; the set's size or "
        "more: all, stored as null)",
    )  # fmt: skip
    test_examples: int | None = Field(
        default=None, ge=1, le=2**31 - 1,
        description="Evaluate on only the first this many test examples (the set's size or "
        "more: all, stored as null)",
    )  # fmt: skip
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first")
    devices: int = Field(
        default=1, ge=1, le=16,
        description="Data-parallel processes (DistributedDataParallel): GPUs from the worker's "
        "own on a GPU worker, CPU processes (gloo) on a CPU worker. batch_size stays the global "
        "batch, split among them",
    )  # fmt: skip

    @field_validator("*", mode="before")
    @classmethod
    def _json_types_as_written(cls, value: Any, info: ValidationInfo) -> Any:
        """Numbers and booleans as JSON writes them, not coerced from another type.

        pydantic takes true as 1, "2" as 2, 256.0 as 256 and "yes" as true; each is more likely
        a client's mistake (a form value, a quoted number, a computed float) than what it meant.
        An integer field takes a JSON integer, as predict's mc_dropout does.
        """
        if info.field_name is None:
            return value
        problem = cls.json_type_problem(info.field_name, value)
        if problem is not None:
            raise ValueError(problem)
        if isinstance(value, float) and value == 0:
            return 0.0  # -0.0 (a computed zero) is stored and shown as 0.0
        return value

    @classmethod
    def json_type_problem(cls, field_name: str, value: Any) -> str | None:
        """Why `value` is the wrong JSON type for the field (None: it is not, or no such
        field): a boolean or string for a number, a float for an integer, a non-boolean for a
        boolean."""
        field = cls.model_fields.get(field_name)
        if field is None:
            return None
        types = {field.annotation, *get_args(field.annotation)}
        if types & {int, float} and isinstance(value, bool | str):
            return f"must be a number, not {json.dumps(value)}"
        if int in types and float not in types and isinstance(value, float):
            return f"must be an integer, not {json.dumps(value)}"
        if bool in types and not isinstance(value, bool):
            return f"must be true or false, not {json.dumps(value)}"
        return None

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in ALL_MODELS:
            raise ValueError(f"unknown model {value!r}; choose one of {ALL_MODELS}")
        return value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in KNOWN_DATASETS and not is_stored_id(value):
            raise ValueError(
                f"unknown dataset {value!r}; choose one of {list(KNOWN_DATASETS)} "
                "or the id of an uploaded dataset (ds_...)"
            )
        return value

    def resolve(
        self, stored: UploadedDataset | None = None
    ) -> tuple[TrainConfig, list[tuple[str, str]]]:
        """The fully resolved TrainConfig, or the (field, reason) pairs that make it invalid.

        `stored` is the uploaded dataset `dataset` names (None: no such dataset), its kind and
        training-set size; the caller looks it up, so this stays free of SQL.
        """
        spec = models.get_spec(self.model)
        train_size, test_size = self._set_sizes(stored)
        problems = self._combination_problems(spec, stored, train_size)
        dropout = spec.dropout if self.dropout is None else self.dropout
        if dropout > 0 and not spec.has_dropout:
            problems.append(("dropout", f"model {self.model!r} has no dropout layers; use 0"))
        if self.resize is not None and spec.task == "classification":
            try:
                models.check_input_side(self.model, self.resize)
            except ValueError as exc:
                problems.append(("resize", str(exc)))
        regression = spec.task == "regression"
        lenet = self.model == "lenet"
        # As many as the set has, or more, is the whole set: stored as null (all), so that the
        # job shows what it trains (and is tested) on, and a sweep sees 2,000 and null on
        # synthetic as one job.
        train_examples = _all_as_null(self.train_examples, train_size)
        test_examples = _all_as_null(self.test_examples, test_size)
        config = TrainConfig(
            model=self.model,
            dataset=self.dataset,
            weight_decay=self.weight_decay,
            dropout=dropout,
            batch_size=self.batch_size,
            epochs=self.epochs,
            lr=self.lr if self.lr is not None else default_lr(self.model, self.optimizer),
            optimizer=self.optimizer,
            lr_schedule=self.lr_schedule,
            augment=self.augment,
            seed=self.seed if self.seed is not None else random.randrange(2**31),
            resize=self.resize,
            val_fraction=self.val_fraction,
            train_examples=train_examples,
            test_examples=test_examples,
            kind=self.kind,
            loss=(self.loss or "l2") if regression else None,
            l1=self.l1,
            decay_bias=self.decay_bias,
            last_batch=self.last_batch,
            loss_reduction=self.loss_reduction,
            init=self.init,
            init_std=(self.init_std or DEFAULT_INIT_STD) if self.init == "normal" else None,
            activation=(self.activation or "sigmoid") if lenet else None,
            pooling=(self.pooling or "avg") if lenet else None,
            k=(self.k or DEFAULT_K) if self.kind == "kfold" else None,
            lr_min=(self.lr_min or DEFAULT_LR_MIN) if self.kind == "lr_find" else None,
            lr_max=(self.lr_max or DEFAULT_LR_MAX) if self.kind == "lr_find" else None,
            steps=(self.steps or DEFAULT_LR_STEPS) if self.kind == "lr_find" else None,
            devices=self.devices,
        )
        lr_range = (config.lr_min, config.lr_max)
        if None not in lr_range and lr_range[0] >= lr_range[1]:  # type: ignore[operator]
            problems.append(("lr_max", f"must be above lr_min ({config.lr_min:g})"))
        return config, problems

    def _set_sizes(self, stored: UploadedDataset | None) -> tuple[int | None, int | None]:
        """(training, test) set sizes of the dataset the job names; None where unknown."""
        builtin = builtin_sizes(self.dataset)
        if builtin is not None:
            return builtin
        if stored is not None:
            return stored.train_examples, stored.test_examples
        return None, None

    def _combination_problems(
        self, spec: models.ModelSpec, stored: UploadedDataset | None, train_size: int | None
    ) -> list[tuple[str, str]]:
        """Knobs that only mean something for some models, kinds or datasets."""
        problems: list[tuple[str, str]] = []
        given = self.model_fields_set
        data_kind: str | None = builtin_dataset_kind(self.dataset)
        if data_kind is None:
            if stored is None:
                problems.append(("dataset", f"no uploaded dataset has the id {self.dataset!r}"))
            else:
                data_kind = stored.kind
        if spec.task == "regression":
            if data_kind == "image":
                problems.append(
                    ("dataset", f"model {self.model!r} needs a regression dataset "
                     "(linreg-synthetic, linreg-highdim or an uploaded CSV), not images")
                )  # fmt: skip
            if self.resize is not None:
                problems.append(("resize", f"model {self.model!r} takes features, not images"))
            if self.augment != "none":
                problems.append(("augment", f"model {self.model!r} takes features, not images"))
        else:
            if data_kind == "regression":
                problems.append(
                    ("dataset", f"model {self.model!r} needs an image dataset; "
                     "regression datasets need model 'linear'")
                )  # fmt: skip
            if self.loss is not None:
                problems.append(("loss", "only for model 'linear' (classifiers use cross-entropy)"))
        if self.model != "lenet":
            for name in LENET_SWITCHES:
                if getattr(self, name) is not None:
                    problems.append((name, "only for model 'lenet'"))
        if self.init_std is not None and self.init != "normal":
            problems.append(("init_std", "only with init 'normal'"))
        if self.k is not None and self.kind != "kfold":
            problems.append(("k", "only for kind 'kfold'"))
        # A null is the field left out (its default), as for every field that takes one: a
        # job's GET shows a kind's unused fields as null, and may be sent back as it is.
        chosen = {name for name in given if getattr(self, name) is not None}
        for name, why in UNUSED_BY_KIND.get(self.kind, {}).items():
            if name in chosen:
                problems.append((name, f"not for kind {self.kind!r}: {why}"))
        if self.kind != "lr_find":
            problems += [(n, "only for kind 'lr_find'") for n in LR_FIND_FIELDS if n in chosen]
        elif self.lr_schedule != "constant":
            problems.append(("lr_schedule", "not for kind 'lr_find': it sweeps the lr itself"))
        if train_size is not None:
            problems += self._size_problems(train_size)
        if self.devices > 1:
            if self.kind != "train" or spec.task != "classification":
                problems.append(("devices", "more than 1 only for kind 'train' of a classifier"))
            if self.loss_reduction != "mean":
                problems.append(("devices", "more than 1 needs loss_reduction 'mean'"))
            if self.batch_size < self.devices:
                problems.append(
                    ("devices", f"batch_size {self.batch_size} cannot be split among "
                     f"{self.devices} devices")
                )  # fmt: skip
        return problems

    def _size_problems(self, train_size: int) -> list[tuple[str, str]]:
        """What a training set of `train_size` examples rules out, worked out as the job will
        split it: k folds need k examples, and last_batch 'drop' needs a full batch in what
        is left to train on (after the validation split; in every round of a kfold job)."""
        used = train_size if self.train_examples is None else min(self.train_examples, train_size)
        origin = (
            "train_examples"
            if self.train_examples is not None and self.train_examples <= train_size
            else f"the training set of dataset {self.dataset!r}"
        )
        try:
            if self.kind == "kfold":
                k = self.k or DEFAULT_K
                fewest = fewest_fold_train_examples(train_size, k, self.train_examples)
                left = f"as few as {fewest} are left to train on in a round of {k}-fold CV"
            else:
                fewest = train_split_examples(train_size, self.val_fraction, self.train_examples)
                left = f"{fewest} are left to train on after the validation split"
        except DatasetError as exc:  # too few examples for the folds or the split
            if self.kind != "kfold":
                return [("dataset", f"{exc} ({origin})")]
            default = f"; k defaults to {DEFAULT_K}" if self.k is None else ""
            return [("k", f"{exc} ({origin}){default}")]
        if self.last_batch != "drop" or self.batch_size <= fewest:
            return []
        return [
            ("batch_size", f"last_batch 'drop' with batch_size {self.batch_size} leaves no batch: "
             f"of the {used} training examples ({origin}), {left}; use a smaller batch_size "
             "or last_batch 'keep' or 'pad'")
        ]  # fmt: skip


def _all_as_null(asked: int | None, size: int | None) -> int | None:
    """``asked`` examples of a set of ``size``: None (all) when that is all of them."""
    return None if asked is not None and size is not None and asked >= size else asked


def _iso(value: datetime | None) -> str | None:
    """A database time as ISO 8601 UTC with milliseconds, always the same shape (isoformat
    alone drops a zero fraction). SQLite hands back naive datetimes; they are UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


def finite_or_none(value: float | None) -> float | None:
    """NaN and infinities (a regression's accuracy, an unfinished run) become null."""
    return value if value is None or math.isfinite(value) else None


def input_side_of(config: TrainConfig) -> int | None:
    """The side images are resized to; None for a regression model (no images)."""
    if config.is_regression:
        return None
    return config.resize or models.get_spec(config.model).input_side


class JobPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    status: JobStatus
    kind: JobKindName
    model: str
    dataset: str
    weight_decay: float
    dropout: float
    batch_size: int
    epochs: int | None  # None for lr_find (UNUSED_BY_KIND), as for the fields below
    lr: float | None
    optimizer: str
    lr_schedule: str
    augment: str
    seed: int
    resize: int | None
    input_side: int | None  # None for linear (feature vectors, no images)
    val_fraction: float | None
    train_examples: int | None
    test_examples: int | None
    loss: str | None
    l1: float
    decay_bias: bool
    last_batch: str
    loss_reduction: str
    init: str
    init_std: float | None
    activation: str | None
    pooling: str | None
    k: int | None
    lr_min: float | None
    lr_max: float | None
    steps: int | None
    devices: int
    sweep_id: int | None
    priority: int
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    epochs_done: int
    error: str | None
    train_loss: float | None
    train_acc: float | None
    val_loss: float | None
    val_acc: float | None
    test_loss: float | None
    test_acc: float | None
    result: dict[str, Any] | None = Field(
        description="What the job found, once succeeded. train: diagnosis (and for linear: "
        "weight_norm ‖w‖₂, bias, weights, and on generated data weight_error_norm, "
        "bias_error against the true w, b); lr_find: lrs, losses (smoothed), suggested_lr, "
        "suggestion_rule, min_loss_lr, stopped_early; kfold: k, folds, val_acc_mean, "
        "val_acc_std, val_loss_mean, val_loss_std, diagnosis. A train job cancelled while it "
        "ran: the diagnosis of its epochs so far"
    )
    diagnosis: dict[str, Any] | None = Field(
        description="Verdict from the curves of a succeeded train or kfold job, or of a train "
        "job cancelled after an epoch (its epochs so far): underfitting, overfitting or good "
        "fit, with the reason and the numbers (losses, gap, trend)"
    )

    @field_serializer("created_at", "started_at", "finished_at")
    def _serialize_time(self, value: datetime | None) -> str | None:
        return _iso(value)

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        config = TrainConfig.from_dict(job.config)
        result = job.result
        # A field the job's kind does not use shows as null, as k or steps do on other kinds
        # (the stored config keeps its default: rows stay loadable by older versions).
        unused = UNUSED_BY_KIND.get(config.kind, {})
        return cls(
            id=job.id,
            status=JobStatus(job.status),
            **{k: (None if k in unused else v) for k, v in config.to_dict().items()},
            input_side=input_side_of(config),
            sweep_id=job.sweep_id,
            result=result,
            diagnosis=result.get("diagnosis") if result else None,
            priority=job.priority,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            epochs_done=job.epochs_done,
            error=job.error,
            train_loss=finite_or_none(job.train_loss),
            train_acc=finite_or_none(job.train_acc),
            val_loss=finite_or_none(job.val_loss),
            val_acc=finite_or_none(job.val_acc),
            test_loss=finite_or_none(job.test_loss),
            test_acc=finite_or_none(job.test_acc),
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int  # jobs matching the filter, all pages together


class EpochMetricPublic(BaseModel):
    epoch: int
    train_loss: float | None
    train_acc: float | None
    val_loss: float | None
    val_acc: float | None
    examples_per_sec: float | None
    seconds: float | None
    lr: float | None = Field(description="The learning rate of the epoch's last step")

    @classmethod
    def from_row(cls, row: EpochMetric) -> EpochMetricPublic:
        return cls(
            epoch=row.epoch,
            **{
                k: finite_or_none(getattr(row, k))
                for k in (
                    "train_loss",
                    "train_acc",
                    "val_loss",
                    "val_acc",
                    "examples_per_sec",
                    "seconds",
                    "lr",
                )
            },
        )


class EpochMetricsPublic(BaseModel):
    data: list[EpochMetricPublic]
    count: int


class ModelPublic(BaseModel):
    """A trained model: one per succeeded job; its id is the job id."""

    model_config = ConfigDict(protected_namespaces=())

    id: int
    model: str
    dataset: str
    input_side: int
    config: dict[str, Any]
    train_acc: float | None
    val_acc: float | None
    test_loss: float | None
    test_acc: float | None
    finished_at: datetime | None
    loaded: bool  # in the predict cache now

    @field_serializer("finished_at")
    def _serialize_time(self, value: datetime | None) -> str | None:
        return _iso(value)

    @classmethod
    def from_job(cls, job: Job, *, loaded: bool) -> ModelPublic:
        config = TrainConfig.from_dict(job.config)
        return cls(
            id=job.id,
            model=config.model,
            dataset=config.dataset,
            input_side=config.resize or models.get_spec(config.model).input_side,
            config=config.to_dict(),
            train_acc=finite_or_none(job.train_acc),
            val_acc=finite_or_none(job.val_acc),
            test_loss=finite_or_none(job.test_loss),
            test_acc=finite_or_none(job.test_acc),
            finished_at=job.finished_at,
            loaded=loaded,
        )


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class PredictionPublic(BaseModel):
    label: int
    class_name: str
    probabilities: list[float]


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: int
    predictions: list[PredictionPublic]


class DatasetPublic(BaseModel):
    """An uploaded dataset; use its id as a job's `dataset`."""

    id: str
    name: str
    kind: DatasetKindName
    format: str  # what was uploaded: npz | idx | zip | csv
    train_examples: int
    test_examples: int
    input_shape: list[int]  # [H, W] for images, [D] features for regression
    num_classes: int | None
    class_names: list[str] | None
    bytes: int  # size of the stored (normalised) file
    created_at: datetime

    @field_serializer("created_at")
    def _serialize_time(self, value: datetime) -> str | None:
        return _iso(value)

    @classmethod
    def from_row(cls, row: StoredDataset) -> DatasetPublic:
        return cls(
            id=row.id,
            name=row.name,
            kind=row.kind,  # type: ignore[arg-type]
            format=row.format,
            train_examples=row.train_examples,
            test_examples=row.test_examples,
            input_shape=list(row.input_shape),
            num_classes=row.num_classes,
            class_names=row.class_names,
            bytes=row.size_bytes,
            created_at=row.created_at,
        )


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


MAX_SWEEP_POINTS = 256


class SweepCreate(BaseModel):
    """A grid search: one job per combination of the grid's values, on top of `base`."""

    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any] = Field(
        description="JobCreate fields every point shares (model required here or in the grid)"
    )
    grid: dict[str, list[Any]] = Field(
        min_length=1,
        description='JobCreate field -> the values to try, e.g. {"weight_decay": [0, 1e-4], '
        f'"dropout": [0, 0.5]}} (distinct values); at most {MAX_SWEEP_POINTS} points in all. '
        "Without a seed in base or grid, every point gets the same drawn seed",
    )


class SweepPointPublic(BaseModel):
    job_id: int
    status: JobStatus
    params: dict[str, Any]  # this point's grid values
    val_acc: float | None
    val_loss: float | None
    # Regression points: mean squared error on the validation split (K-fold: mean over folds),
    # comparable across losses; null for classification.
    val_mse: float | None = None
    test_acc: float | None


class SweepPublic(BaseModel):
    id: int
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    created_at: datetime
    status_counts: dict[str, int]  # status -> number of the sweep's jobs
    order: str  # how points are sorted
    best_job_id: int | None  # the first point if it succeeded (with a score); else null
    points: list[SweepPointPublic]

    @field_serializer("created_at")
    def _serialize_time(self, value: datetime) -> str | None:
        return _iso(value)


class SweepSummaryPublic(BaseModel):
    id: int
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    created_at: datetime
    status_counts: dict[str, int]

    @field_serializer("created_at")
    def _serialize_time(self, value: datetime) -> str | None:
        return _iso(value)

    @classmethod
    def from_row(cls, sweep: Sweep, status_counts: dict[str, int]) -> SweepSummaryPublic:
        return cls(
            id=sweep.id,
            base=sweep.base,
            grid=sweep.grid,
            created_at=sweep.created_at,
            status_counts=status_counts,
        )


class SweepsPublic(BaseModel):
    data: list[SweepSummaryPublic]
    count: int


class FieldError(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str
    fields: list[FieldError] = []


class ErrorResponse(BaseModel):
    """The one error shape of every 4xx and 5xx."""

    error: ErrorBody
