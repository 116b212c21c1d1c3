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
    """Loads each job's model at most once and keeps the ``max_models`` most recently used.

    Concurrent ``get`` calls for a model being loaded wait for that one load (and share its
    result or its error) instead of loading it again. Loading happens outside the cache's
    lock, so a slow load never blocks hits on other models.
    """

    def __init__(self, artifact_dir: Path, max_models: int = 8) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        self.artifact_dir = Path(artifact_dir)
        self.max_models = int(max_models)
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
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
        pending.set_result(loaded)
        return loaded

    def _load(self, job_id: int) -> LoadedModel:
        directory = artifacts.job_dir(self.artifact_dir, job_id)
        for name in (artifacts.DESCRIPTION_FILE, artifacts.WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise ModelNotAvailable(job_id, f"no trained model ({name} is missing)")
        try:
            model, description = artifacts.load_trained_model(self.artifact_dir, job_id)
        except (FileNotFoundError, NotADirectoryError) as exc:  # removed while loading
            raise ModelNotAvailable(job_id, f"no trained model ({exc})") from exc
        return LoadedModel(model, description)

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
