"""A bounded, thread-safe LRU of trained models loaded from the artifact directory."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import torch

from service import artifacts
from service.inference.errors import ModelNotAvailable
from service.inference.predictor import LoadedModel

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


@contextlib.contextmanager
def _as_not_available(job_id: int) -> Iterator[None]:
    """Reading a job's model files: every way that fails is ModelNotAvailable. Damaged files
    (a truncated safetensors, a model.json that is not JSON or names other layers) are the
    client's answer too (409, /v2: 400), not a 500; the operator's is in the log."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError) as exc:  # missing, or removed while read
        raise ModelNotAvailable(job_id, f"no trained model ({exc})") from exc
    except MemoryError:
        raise
    except Exception as exc:
        log.warning("model %s cannot be loaded: %s", job_id, _first_line(exc))
        raise ModelNotAvailable(job_id, _damaged_reason(exc)) from exc


def _damaged_reason(exc: BaseException) -> str:
    """What a client is told of a model whose files exist but cannot be loaded."""
    return f"its model files are damaged and cannot be loaded ({_first_line(exc)[:200]})"


class ModelCache:
    """Loads each job's model at most once and keeps the most recently used ones: at most
    ``max_models`` of them, holding at most ``max_bytes`` of parameters and buffers together
    (a single model larger than ``max_bytes`` is still served, alone).

    Concurrent ``get`` calls for a model being loaded wait for that one load (and share its
    result or its error) instead of loading it again. Loading happens outside the cache's
    lock, so a slow load never blocks hits on other models.
    """

    def __init__(
        self,
        artifact_dir: Path,
        max_models: int = 8,
        *,
        max_bytes: int | None = None,
        device: str = "cpu",
    ) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.artifact_dir = Path(artifact_dir)
        self.max_models = int(max_models)
        self.max_bytes = max_bytes
        self.device = device
        self._lock = threading.Lock()
        self._models: OrderedDict[int, LoadedModel] = OrderedDict()
        self._loading: dict[int, Future[LoadedModel]] = {}

    def get(self, job_id: int) -> LoadedModel:
        """The job's model, loading it on first use; raises ModelNotAvailable without files."""
        job_id = int(job_id)
        with self._lock:
            loaded = self._models.get(job_id)
            if loaded is not None:
                self._models.move_to_end(job_id)
                self._trim()  # a model grows by its MC dropout copy once it serves MC
                return loaded
            pending = self._loading.get(job_id)
            owner = pending is None
            if owner:
                pending = Future()
                self._loading[job_id] = pending
        assert pending is not None
        if not owner:
            return pending.result()  # re-raises the loader's exception, if any

        try:
            loaded = self._load(job_id)
        except BaseException as exc:
            with self._lock:
                self._loading.pop(job_id, None)
            pending.set_exception(exc)
            raise
        with self._lock:
            self._loading.pop(job_id, None)
            self._models[job_id] = loaded
            self._models.move_to_end(job_id)
            self._trim()
        pending.set_result(loaded)
        return loaded

    def _trim(self) -> None:
        """Let the least recently used models go until the bounds hold (the lock is held)."""
        while len(self._models) > self.max_models or (
            len(self._models) > 1 and self.max_bytes is not None and self._nbytes() > self.max_bytes
        ):
            self._models.popitem(last=False)

    def check_servable(self, job_id: int, *, files_too: bool = False) -> None:
        """Raise ModelNotAvailable unless the model is loaded or its files look loadable (the
        description is sound, the weights' header names the network's tensors), without
        loading it: a readiness probe must not load models and push others out of the cache.
        ``files_too``: the files even when the model is loaded (they are about to be sent)."""
        job_id = int(job_id)
        if self.is_loaded(job_id) and not files_too:
            return
        self._require_files(job_id)
        with _as_not_available(job_id):
            artifacts.check_model_files(self.artifact_dir, job_id)

    def _require_files(self, job_id: int) -> None:
        artifacts.fetch_remote(self.artifact_dir, job_id)  # trained on another machine?
        directory = artifacts.job_dir(self.artifact_dir, job_id)
        for name in (artifacts.DESCRIPTION_FILE, artifacts.WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise ModelNotAvailable(job_id, f"no trained model ({name} is missing)")

    def _load(self, job_id: int) -> LoadedModel:
        self._require_files(job_id)
        with _as_not_available(job_id):
            model, description = artifacts.load_trained_model(self.artifact_dir, job_id)
            loaded = LoadedModel(model, description, device=self.device)
            # One blank image through it: a description that does not fit its network (another
            # input side) fails here, as "damaged", not in a request's forward as a 500.
            side = loaded.input_side
            loaded.probabilities(torch.zeros(1, 1, side, side))
        return loaded

    def _nbytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def peek(self, job_id: int) -> LoadedModel | None:
        """The job's model if it is loaded (and mark it used); never loads."""
        with self._lock:
            loaded = self._models.get(int(job_id))
            if loaded is not None:
                self._models.move_to_end(int(job_id))
                self._trim()  # a model grows by its MC dropout copy once it serves MC
            return loaded

    def nbytes(self) -> int:
        """Bytes of parameters and buffers of the loaded models together."""
        with self._lock:
            return self._nbytes()

    def is_loaded(self, job_id: int) -> bool:
        with self._lock:
            return int(job_id) in self._models

    def evict(self, job_id: int) -> bool:
        """Drop the job's model (e.g. after the job is deleted); True if it was cached."""
        with self._lock:
            return self._models.pop(int(job_id), None) is not None

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def loaded_job_ids(self) -> list[int]:
        """Cached job ids, least recently used first."""
        with self._lock:
            return list(self._models)

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)
