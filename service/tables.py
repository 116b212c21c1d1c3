"""The database schema: jobs, their per-epoch metrics, sweeps of jobs, and uploaded datasets
(SQLAlchemy 2.0 typed ORM)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints let Alembic create, compare and drop them by name on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for a worker (new, or requeued after a lost lease)
    RUNNING = "running"  # claimed: a worker holds its lease
    SUCCEEDED = "succeeded"  # finished; its model is served
    FAILED = "failed"  # finished with an error (see Job.error)
    CANCELLED = "cancelled"  # stopped on request; never retried


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
_STATUS_VALUES = ", ".join(f"'{s.value}'" for s in JobStatus)


class JobKind(enum.StrEnum):
    TRAIN = "train"  # train one model (a classifier's is served under /models)
    LR_FIND = "lr_find"  # the learning-rate range test: a loss-vs-lr curve, no model
    KFOLD = "kfold"  # k-fold cross-validation: k models, per-fold accuracy, none kept


_KIND_VALUES = ", ".join(f"'{k.value}'" for k in JobKind)


class DatasetKind(enum.StrEnum):
    IMAGE = "image"  # (N, H, W) uint8 images with class labels
    REGRESSION = "regression"  # (N, D) features with one numeric target


_DATASET_KIND_VALUES = ", ".join(f"'{k.value}'" for k in DatasetKind)


class Sweep(Base):
    """A grid of job configurations submitted together; its jobs point back to it."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base: Mapped[dict[str, Any]] = mapped_column(JSON)  # the JobCreate fields every point shares
    grid: Mapped[dict[str, Any]] = mapped_column(JSON)  # field -> list of values
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp()
    )


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_VALUES})", name="status"),
        CheckConstraint(f"kind IN ({_KIND_VALUES})", name="kind"),
        # The claim query: queued jobs by priority, then age.
        Index("ix_jobs_claim", "status", "priority", "created_at"),
        Index("ix_jobs_created_at", "created_at"),
        Index("ix_jobs_sweep_id", "sweep_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    model: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # the whole TrainConfig
    kind: Mapped[str] = mapped_column(
        String(16), default=JobKind.TRAIN.value, server_default=JobKind.TRAIN.value
    )
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"))
    priority: Mapped[int] = mapped_column(Integer, default=0)  # higher runs first
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)

    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # retry backoff
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_acc: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_acc: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_acc: Mapped[float | None] = mapped_column(Float)
    # What the job found beyond the metrics: lr curve, folds, |w|, the diagnosis (JSON, no NaN).
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)  # from 1
    train_loss: Mapped[float] = mapped_column(Float)
    train_acc: Mapped[float | None] = mapped_column(Float)  # NULL for regression
    val_loss: Mapped[float] = mapped_column(Float)
    val_acc: Mapped[float | None] = mapped_column(Float)  # NULL for regression
    examples_per_sec: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)  # the last step's; NULL in rows before 0003
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp()
    )


class StoredDataset(Base):
    """An uploaded dataset; its arrays live in <artifact_dir>/datasets/<id>/data.npz."""

    __tablename__ = "datasets"
    __table_args__ = (CheckConstraint(f"kind IN ({_DATASET_KIND_VALUES})", name="kind"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # ds_<16 hex>, generated
    name: Mapped[str] = mapped_column(String(100))  # the user's label, for display only
    kind: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(8))  # npz | idx | zip | csv: what was uploaded
    train_examples: Mapped[int] = mapped_column(Integer)
    test_examples: Mapped[int] = mapped_column(Integer)
    input_shape: Mapped[list[int]] = mapped_column(JSON)  # [H, W] images, [D] features
    num_classes: Mapped[int | None] = mapped_column(Integer)  # images only
    class_names: Mapped[list[str] | None] = mapped_column(JSON)  # images only
    size_bytes: Mapped[int] = mapped_column(Integer)  # size of the stored file
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp()
    )


class Deployment(Base):
    """One row: this database's id, drawn when it was created. Its artifact directory is
    stamped with it (service/deployment.py), so that a second database cannot take the
    directory over: model files are named by job id, and each database numbers from 1."""

    __tablename__ = "deployment"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
