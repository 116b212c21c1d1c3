"""The diagnosis of a train job cancelled while it ran, from the epochs it recorded.

A cancelled job's curves are as telling as a finished one's: a user who stops a run that went
wrong wants to read why from the job. The job process is stopped by a signal and writes
nothing, so its worker draws the verdict from the epoch rows in the database, as the job
would have from its own (the same numbers), and says that it covers the epochs so far.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from service import datasets_store, queue
from service.datasets_store import DatasetNotFound
from service.training.config import TrainConfig
from service.training.data import CLASS_NAMES
from service.training.diagnosis import diagnose_epochs
from service.training.diagnosis_advice import run_facts


def _num_classes(session: Session, config: TrainConfig) -> int | None:
    if config.is_regression:
        return None
    if config.dataset in CLASS_NAMES:
        return len(CLASS_NAMES[config.dataset])
    try:
        return datasets_store.get_dataset(session, config.dataset).num_classes
    except DatasetNotFound:
        return None


def diagnosis_so_far(engine: Engine, job_id: int, config_data: dict[str, Any]) -> dict | None:
    """The diagnosis of the epochs a cancelled train job recorded; None without any (or for
    the kinds that record no epochs: lr_find, kfold)."""
    config = TrainConfig.from_dict(config_data)
    if config.kind != "train":
        return None
    with Session(engine) as session:
        rows = queue.list_epoch_metrics(session, job_id)
        if not rows:
            return None
        diagnosis = diagnose_epochs(rows, _num_classes(session, config), run_facts(config))
    if diagnosis is None:
        return None
    return {
        **diagnosis,
        "reason": f"so far (cancelled after {len(rows)} of {config.epochs} epochs): "
        + diagnosis["reason"],
        "cancelled_after_epochs": len(rows),
    }
