"""Uploaded datasets: their files under <artifact_dir>/datasets/<id>/ and their rows in SQL.

Datasets are not jobs, so their SQL lives here, not in service.queue. The id is generated here
(``ds_<16 hex>``) and is the only thing a path is built from; the user's name is a display label.
The file is the normalised ``data.npz`` that training reads (service.training.data), written
before the row is committed, so a listed dataset always has its file.
"""

from __future__ import annotations

import io
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.artifacts import atomic_write_bytes
from service.dataset_uploads import ParsedDataset
from service.queue import created_now
from service.tables import StoredDataset
from service.training.data import STORED_FILE, is_stored_id, stored_dataset_dir

MAX_NAME_CHARS = 100  # a display name; POST /datasets refuses a longer one


class DatasetNotFound(LookupError):
    pass


def datasets_dir(artifact_dir: Path) -> Path:
    return Path(artifact_dir) / "datasets"


def display_name(name: str | None, fallback: str) -> str:
    """The user's label cut down to letters, digits and ' _.-()', at most MAX_NAME_CHARS."""
    cleaned = re.sub(r"[^\w .()-]+", "_", name or "").strip()[:MAX_NAME_CHARS]
    return cleaned or fallback


def save_dataset(
    session: Session, artifact_dir: Path, parsed: ParsedDataset, name: str | None
) -> StoredDataset:
    """Write the arrays, then the row; on any failure nothing is left behind."""
    dataset_id = f"ds_{secrets.token_hex(8)}"
    directory = stored_dataset_dir(datasets_dir(artifact_dir), dataset_id)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **parsed.arrays)
    payload = buffer.getvalue()
    try:
        atomic_write_bytes(directory / STORED_FILE, payload)
        row = StoredDataset(
            id=dataset_id,
            created_at=created_now(session),
            name=display_name(name, f"{parsed.format} upload"),
            kind=parsed.kind,
            format=parsed.format,
            train_examples=parsed.train_examples,
            test_examples=parsed.test_examples,
            input_shape=parsed.input_shape,
            num_classes=parsed.num_classes,
            class_names=parsed.class_names,
            size_bytes=len(payload),
        )
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    session.refresh(row)
    return row


def get_dataset(session: Session, dataset_id: str) -> StoredDataset:
    row = session.get(StoredDataset, dataset_id) if is_stored_id(dataset_id) else None
    if row is None:
        raise DatasetNotFound(f"dataset {dataset_id!r} does not exist")
    return row


@dataclass(frozen=True)
class StoredFacts:
    """What validating a job needs to know of the uploaded dataset it names."""

    kind: str  # image | regression
    train_examples: int  # the size of its training set
    test_examples: int | None = None  # and of its test set


def stored_facts(session: Session, dataset: str) -> StoredFacts | None:
    """Kind and set sizes of the uploaded dataset `dataset`; None if there is none."""
    if not is_stored_id(dataset):
        return None
    row = session.get(StoredDataset, dataset)
    if row is None:
        return None
    return StoredFacts(row.kind, row.train_examples, row.test_examples)


def list_datasets(
    session: Session, *, limit: int = 50, offset: int = 0
) -> tuple[Sequence[StoredDataset], int]:
    """Newest first, with the total count."""
    count = session.scalar(select(func.count()).select_from(StoredDataset)) or 0
    rows = session.scalars(
        select(StoredDataset)
        .order_by(StoredDataset.created_at.desc(), StoredDataset.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return rows, count
