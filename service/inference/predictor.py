"""A trained network ready to classify gray images, dropout off."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

import models
from service.artifacts import ModelDescription

DEFAULT_BATCH_SIZE = 64  # images per forward pass; bounds memory for the large-input networks


@dataclass(frozen=True)
class Prediction:
    label: int  # index into class_names
    class_name: str
    probabilities: list[float]  # softmax over all classes, len == number of classes


class LoadedModel:
    """A network in eval mode plus its description; ``predict`` may be called from threads."""

    def __init__(
        self,
        model: torch.nn.Module,
        description: ModelDescription,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        model.eval()  # dropout off, batch norm on its running statistics
        model.requires_grad_(False)
        self.model = model
        self.description = description
        self.batch_size = max(1, int(batch_size))
        self._lock = threading.Lock()

    @property
    def job_id(self) -> int:
        return self.description.job_id

    @property
    def input_side(self) -> int:
        return int(self.description.input_side)

    @property
    def class_names(self) -> list[str]:
        return list(self.description.class_names)

    def _to_input(self, image: np.ndarray) -> torch.Tensor:
        if not isinstance(image, np.ndarray) or image.ndim != 2:
            shape = getattr(image, "shape", None)
            raise ValueError(f"expected a 2-D (H, W) pixel array, got shape {shape}")
        if image.dtype not in (np.uint8, np.float32):
            image = image.astype(np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(image).copy())
        return models.to_model_input(tensor[None], self.input_side)

    def logits(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Raw network outputs (N, num_classes) for gray images of any size, values 0-255."""
        if not images:
            return torch.empty((0, len(self.description.class_names)))
        batch = torch.cat([self._to_input(img) for img in images])
        outputs = []
        with self._lock, torch.inference_mode():
            if self.model.training:  # someone flipped it: prediction is always dropout-off
                self.model.eval()
            for start in range(0, batch.shape[0], self.batch_size):
                outputs.append(self.model(batch[start : start + self.batch_size]).float())
        return torch.cat(outputs)

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Classify each (H, W) gray image; each is resized to the model's input side."""
        if not images:
            return []
        logits = self.logits(images)
        names = self.description.class_names
        if logits.ndim != 2 or logits.shape[1] != len(names):
            raise RuntimeError(
                f"model for job {self.job_id} outputs shape {tuple(logits.shape)}, "
                f"but its description names {len(names)} classes"
            )
        probs = torch.softmax(logits.double(), dim=1)
        labels = probs.argmax(dim=1).tolist()
        return [
            Prediction(label=int(k), class_name=names[k], probabilities=row)
            for k, row in zip(labels, probs.tolist(), strict=True)
        ]

    def __repr__(self) -> str:
        d = self.description
        return f"LoadedModel(job_id={d.job_id}, model={d.model!r}, input_side={d.input_side})"
