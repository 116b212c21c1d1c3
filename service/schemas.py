"""Request and response bodies of the HTTP API (pydantic v2)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

import models
from service.tables import EpochMetric, Job, JobStatus
from service.training.config import MOMENTUM, TrainConfig
from service.training.data import KNOWN_DATASETS

OptimizerName = Literal["sgd", "momentum", "adam"]


def default_lr(model: str, optimizer: str) -> float:
    """The course's SGD lr; scaled for momentum (same effective step); a tuned rate for Adam."""
    spec = models.get_spec(model)
    course_lr = spec.lr
    if optimizer == "adam":
        return spec.adam_lr
    if optimizer == "momentum":
        return course_lr * (1 - MOMENTUM)  # momentum multiplies the step by 1/(1-beta)
    return course_lr


class JobCreate(BaseModel):
    """A training job. Omitted fields take the model's course defaults."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="Network to train: one of " + ", ".join(models.list_models()))
    dataset: str = Field(
        default="fashion-mnist", description="Dataset name: " + " | ".join(KNOWN_DATASETS)
    )
    weight_decay: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        allow_inf_nan=False,
        description="λ of the L2 penalty on weights (not biases)",
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
        default=None, ge=2, description="Train on only this many examples (a seeded subset)"
    )
    test_examples: int | None = Field(
        default=None, ge=1, description="Evaluate on only the first this many test examples"
    )
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in models.list_models():
            raise ValueError(f"unknown model {value!r}; choose one of {models.list_models()}")
        return value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in KNOWN_DATASETS:
            raise ValueError(f"unknown dataset {value!r}; choose one of {list(KNOWN_DATASETS)}")
        return value

    def resolve(self) -> tuple[TrainConfig, list[tuple[str, str]]]:
        """The fully resolved TrainConfig, or the (field, reason) pairs that make it invalid."""
        spec = models.get_spec(self.model)
        problems: list[tuple[str, str]] = []
        dropout = spec.dropout if self.dropout is None else self.dropout
        if dropout > 0 and not spec.has_dropout:
            problems.append(("dropout", f"model {self.model!r} has no dropout layers; use 0"))
        if self.resize is not None:
            try:
                models.check_input_side(self.model, self.resize)
            except ValueError as exc:
                problems.append(("resize", str(exc)))
        config = TrainConfig(
            model=self.model,
            dataset=self.dataset,
            weight_decay=self.weight_decay,
            dropout=dropout,
            batch_size=self.batch_size,
            epochs=self.epochs,
            lr=self.lr if self.lr is not None else default_lr(self.model, self.optimizer),
            optimizer=self.optimizer,
            seed=self.seed if self.seed is not None else random.randrange(2**31),
            resize=self.resize,
            val_fraction=self.val_fraction,
            train_examples=self.train_examples,
            test_examples=self.test_examples,
        )
        return config, problems


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they are UTC (the database clock).
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


class JobPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    status: JobStatus
    model: str
    dataset: str
    weight_decay: float
    dropout: float
    batch_size: int
    epochs: int
    lr: float
    optimizer: str
    seed: int
    resize: int | None
    input_side: int
    val_fraction: float
    train_examples: int | None
    test_examples: int | None
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

    @field_serializer("created_at", "started_at", "finished_at")
    def _serialize_time(self, value: datetime | None) -> str | None:
        value = _utc(value)
        return value.isoformat() if value else None

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        config = TrainConfig.from_dict(job.config)
        return cls(
            id=job.id,
            status=JobStatus(job.status),
            **{k: v for k, v in config.to_dict().items()},
            input_side=config.resize or models.get_spec(config.model).input_side,
            priority=job.priority,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            epochs_done=job.epochs_done,
            error=job.error,
            train_loss=_finite(job.train_loss),
            train_acc=_finite(job.train_acc),
            val_loss=_finite(job.val_loss),
            val_acc=_finite(job.val_acc),
            test_loss=_finite(job.test_loss),
            test_acc=_finite(job.test_acc),
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

    @classmethod
    def from_row(cls, row: EpochMetric) -> EpochMetricPublic:
        return cls(
            epoch=row.epoch,
            **{
                k: _finite(getattr(row, k))
                for k in (
                    "train_loss",
                    "train_acc",
                    "val_loss",
                    "val_acc",
                    "examples_per_sec",
                    "seconds",
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
        value = _utc(value)
        return value.isoformat() if value else None

    @classmethod
    def from_job(cls, job: Job, *, loaded: bool) -> ModelPublic:
        config = TrainConfig.from_dict(job.config)
        return cls(
            id=job.id,
            model=config.model,
            dataset=config.dataset,
            input_side=config.resize or models.get_spec(config.model).input_side,
            config=config.to_dict(),
            train_acc=_finite(job.train_acc),
            val_acc=_finite(job.val_acc),
            test_loss=_finite(job.test_loss),
            test_acc=_finite(job.test_acc),
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
