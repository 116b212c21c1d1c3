"""A trained network ready to classify gray images, dropout off (or, on request, MC dropout)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

import models
from models.dropout import RandDropout, dropouts_drawn_by_rand
from service.artifacts import ModelDescription

# One request's images: pixel values 0-255 as (H, W) arrays or one (N, H, W) array, or a
# tensor already brought to the model's input (N, 1, side, side) by ``prepare``.
Inputs = Sequence[np.ndarray] | np.ndarray | torch.Tensor

DEFAULT_BATCH_SIZE = 64  # images per forward pass; bounds memory for the large-input networks
MAX_MC_PASSES = 100


@dataclass(frozen=True)
class Prediction:
    label: int  # index into class_names
    class_name: str
    probabilities: list[float]  # softmax over all classes, len == number of classes


def module_nbytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class LoadedModel:
    """A network in eval mode plus its description; ``predict`` may be called from threads.

    The path of a request: ``prepare`` (pixels 0-255 -> the model's input, exactly as in
    training) -> ``probabilities`` (forward with dropout off, softmax) -> ``to_predictions``.
    ``predict`` does all three. ``mc_dropout`` runs a separate copy of the network whose
    dropout layers alone are in training mode, so it never disturbs the eval-mode network.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        description: ModelDescription,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | torch.device = "cpu",
    ) -> None:
        model.eval()  # dropout off, batch norm on its running statistics
        model.requires_grad_(False)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.description = description
        self.batch_size = max(1, int(batch_size))
        self._nbytes = module_nbytes(model)
        self._mc_nbytes = self._nbytes  # its deep copy's
        self._lock = threading.Lock()
        self._mc_lock = threading.Lock()
        self._mc_model: torch.nn.Module | None = None

    @property
    def job_id(self) -> int:
        return self.description.job_id

    @property
    def input_side(self) -> int:
        return int(self.description.input_side)

    @property
    def instance_shapes(self) -> tuple[tuple[int, int], ...]:
        """The (H, W) a JSON instance may have: a Fashion-MNIST image's 28x28, the model's
        input side, and the training images' own size (an upload's); each is resized to the
        input side, as files are."""
        side = self.input_side
        shapes = [(28, 28), (side, side)]
        if self.description.image_shape:
            height, width = self.description.image_shape
            shapes.append((int(height), int(width)))
        return tuple(sorted(set(shapes)))

    @property
    def class_names(self) -> list[str]:
        return list(self.description.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.description.class_names)

    @property
    def has_active_dropout(self) -> bool:
        """Whether any dropout layer has p > 0 (MC dropout has something to sample)."""
        return any(_is_dropout(m) and m.p > 0 for m in self.model.modules())

    # ---- input -------------------------------------------------------------------------

    def prepare(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(H, W) gray images, values 0-255, any size -> float32 (N, 1, side, side) in [0, 1]."""
        if not images:
            return torch.empty((0, 1, self.input_side, self.input_side))
        for image in images:
            if not isinstance(image, np.ndarray) or image.ndim != 2:
                shape = getattr(image, "shape", None)
                raise ValueError(f"expected a 2-D (H, W) pixel array, got shape {shape}")
        if len({img.shape for img in images}) == 1:  # the usual case: one conversion
            return self.prepare_pixels(np.stack(images))
        return torch.cat([self.prepare_pixels(img[None]) for img in images])

    def prepare_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        """An (N, H, W) or (N, 1, H, W) array of values 0-255 -> the model's input tensor."""
        if pixels.dtype not in (np.uint8, np.float32):
            pixels = pixels.astype(np.float32)
        tensor = torch.from_numpy(np.array(pixels, copy=True, order="C"))
        return models.to_model_input(tensor, self.input_side)

    # ---- forward -----------------------------------------------------------------------

    def _forward(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        outputs = [
            model(batch[start : start + self.batch_size].to(self.device)).float()
            for start in range(0, batch.shape[0], self.batch_size)
        ]
        return torch.cat(outputs).cpu()

    def logits_of(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw outputs (N, num_classes) for a prepared batch, dropout off."""
        if batch.shape[0] == 0:
            return torch.empty((0, self.num_classes))
        with self._lock, torch.inference_mode():
            if self.model.training:  # someone flipped it: prediction is always dropout-off
                self.model.eval()
            return self._forward(self.model, batch)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, num_classes), float64, for a prepared batch."""
        logits = self.logits_of(batch)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise RuntimeError(
                f"model for job {self.job_id} outputs shape {tuple(logits.shape)}, "
                f"but its description names {self.num_classes} classes"
            )
        return torch.softmax(logits.double(), dim=1)

    def model_input(self, requests: Sequence[Inputs]) -> torch.Tensor:
        """The inputs of several requests as one model input (N, 1, side, side), in order.

        Pixel images of consecutive requests are converted together (one ``prepare``); a
        tensor is a request already prepared (uploaded files are, as they are decoded).
        """
        parts: list[torch.Tensor] = []
        pixels: list[np.ndarray] = []
        for inputs in requests:
            if isinstance(inputs, torch.Tensor):
                if pixels:
                    parts.append(self.prepare(pixels))
                    pixels = []
                parts.append(inputs)
            else:
                pixels.extend(inputs)
        if pixels or not parts:
            parts.append(self.prepare(pixels))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def batch_probabilities(self, requests: Sequence[Inputs]) -> torch.Tensor:
        """Probabilities for the images of several requests at once (the batcher's ``run``)."""
        return self.probabilities(self.model_input(requests))

    def logits(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Raw network outputs (N, num_classes) for gray images of any size, values 0-255."""
        return self.logits_of(self.prepare(images))

    def to_predictions(self, probabilities: torch.Tensor) -> list[Prediction]:
        names = self.description.class_names
        labels = probabilities.argmax(dim=1).tolist()
        return [
            Prediction(label=int(k), class_name=names[k], probabilities=row)
            for k, row in zip(labels, probabilities.tolist(), strict=True)
        ]

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Classify each (H, W) gray image; each is resized to the model's input side."""
        if not images:
            return []
        return self.to_predictions(self.probabilities(self.prepare(images)))

    # ---- MC dropout --------------------------------------------------------------------

    def mc_dropout(
        self, batch: torch.Tensor, passes: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation (N, num_classes), float64, of ``passes`` softmax outputs
        with only the dropout layers sampling; the same batch and seed give the same numbers."""
        if not 1 <= passes <= MAX_MC_PASSES:
            raise ValueError(f"passes must be 1-{MAX_MC_PASSES}, got {passes}")
        generator = self.mc_generator(seed)
        return mc_summary([self.mc_pass(batch, generator) for _ in range(passes)])

    def mc_generator(self, seed: int) -> torch.Generator:
        """The masks' source for one MC request: a generator of its own, not the global one,
        which other threads draw from meanwhile (a model being built initialises its
        weights). Its passes, run in order, give the same numbers for the same seed."""
        return torch.Generator(self.device).manual_seed(seed)

    def mc_pass(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One MC dropout pass: softmax probabilities (N, num_classes), float64, with only the
        dropout layers sampling, their masks drawn from ``generator``."""
        with self._mc_lock, torch.inference_mode():
            model = self._mc_network()
            for module in model.modules():
                if isinstance(module, RandDropout):
                    module.generator = generator
            return torch.softmax(self._forward(model, batch).double(), 1)

    @property
    def nbytes(self) -> int:
        """Bytes of parameters and buffers held: the network's, and its MC dropout copy's once
        an MC request has made one (it stays while the model is loaded)."""
        return self._nbytes + (self._mc_nbytes if self._mc_model is not None else 0)

    def network_copy(self, device: str | torch.device | None = None) -> torch.nn.Module:
        """A deep copy of the eval-mode network (for MC dropout, export), on ``device``."""
        with self._lock:
            clone = copy.deepcopy(self.model)
        return clone.to(device or self.device).eval()

    def _mc_network(self) -> torch.nn.Module:
        if self._mc_model is None:
            clone = self.network_copy()
            dropouts_drawn_by_rand(clone)  # masks from torch.rand, which takes a generator
            for module in clone.modules():
                if _is_dropout(module):
                    if not isinstance(module, RandDropout):  # would draw from the global generator
                        raise TypeError(f"MC dropout cannot seed {type(module).__name__}")
                    module.train()  # only dropout samples; batch norm stays on running stats
            self._mc_model = clone
        return self._mc_model

    def __repr__(self) -> str:
        d = self.description
        return f"LoadedModel(job_id={d.job_id}, model={d.model!r}, input_side={d.input_side})"


def mc_summary(runs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population standard deviation over MC passes' probabilities (N, C) each."""
    stacked = torch.stack(list(runs))  # (passes, N, C)
    return stacked.mean(0), stacked.std(0, correction=0)


def _is_dropout(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.modules.dropout._DropoutNd)
