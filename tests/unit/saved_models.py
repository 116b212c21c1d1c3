"""Test helper: a freshly initialised network saved as a job's trained model."""

from __future__ import annotations

from pathlib import Path

import torch

import models
from service.artifacts import ModelDescription, save_trained_model


def save_model(
    artifact_dir: Path, job_id: int, name: str, class_names: list[str], **kwargs: object
) -> None:
    torch.manual_seed(job_id)
    model = models.build(name, **kwargs)  # type: ignore[arg-type]
    description = ModelDescription(
        job_id=job_id,
        model=name,
        model_kwargs=dict(kwargs),
        input_side=models.get_spec(name).input_side,
        class_names=list(class_names),
        config={"model": name},
        metrics={},
    )
    save_trained_model(artifact_dir, description, model)
