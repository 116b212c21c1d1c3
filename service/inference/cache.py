"""A bounded, thread-safe LRU of trained models loaded from the artifact directory."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path

from service import artifacts
from service.inference.errors import ModelNotAvailable
from service.inference.predictor import LoadedModel


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
            while len(self._models) > self.max_models or (
                len(self._models) > 1
                and self.max_bytes is not None
                and self._nbytes() > self.max_bytes
            ):
                self._models.popitem(last=False)
        pending.set_result(loaded)
        return loaded

    def _load(self, job_id: int) -> LoadedModel:
        artifacts.fetch_remote(self.artifact_dir, job_id)  # trained on another machine?
        directory = artifacts.job_dir(self.artifact_dir, job_id)
        for name in (artifacts.DESCRIPTION_FILE, artifacts.WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise ModelNotAvailable(job_id, f"no trained model ({name} is missing)")
        try:
            model, description = artifacts.load_trained_model(self.artifact_dir, job_id)
        except (FileNotFoundError, NotADirectoryError) as exc:  # removed while loading
            raise ModelNotAvailable(job_id, f"no trained model ({exc})") from exc
        return LoadedModel(model, description, device=self.device)

    def _nbytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def peek(self, job_id: int) -> LoadedModel | None:
        """The job's model if it is loaded (and mark it used); never loads."""
        with self._lock:
            loaded = self._models.get(int(job_id))
            if loaded is not None:
                self._models.move_to_end(int(job_id))
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
