"""The serving side of the API process: the model cache, one batcher per loaded model, and
the thread that runs forward passes off the event loop."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from service.inference.batcher import Batcher
from service.inference.cache import ModelCache
from service.inference.predictor import LoadedModel


class Serving:
    """Routes prepared batches of one model to its batcher (or, batching off, straight to the
    inference thread). Lives on one event loop; created once per app."""

    def __init__(
        self,
        cache: ModelCache,
        *,
        batching: bool = True,
        max_batch_size: int = 32,
        max_delay_ms: float = 2.0,
        max_queue: int = 1024,
        threads: int | None = None,
    ) -> None:
        self.cache = cache
        self.batching = batching
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        if threads:  # torch's intra-op threads for the forward passes of this process
            torch.set_num_threads(threads)
        # Move what exists now (torch, the app: ~250k objects) out of the collector's sight:
        # a full collection over them stalls every request for ~0.1 s, which was the p99.
        gc.freeze()
        # One thread runs forwards: torch parallelises inside an operation, and on a GPU the
        # kernels queue up anyway. Heavier one-offs (MC dropout, export) use other threads.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.succeeded: set[int] = set()  # job ids seen succeeded: a succeeded job never changes
        self._batchers: dict[int, tuple[LoadedModel, Batcher]] = {}

    def batcher(self, loaded: LoadedModel) -> Batcher:
        entry = self._batchers.get(loaded.job_id)
        if entry is not None and entry[0] is loaded:
            return entry[1]
        # A new or reloaded model: forget the batchers of models the cache has let go.
        live = set(self.cache.loaded_job_ids())
        for job_id in [j for j in self._batchers if j not in live]:
            if not self._batchers[job_id][1].queued:
                del self._batchers[job_id]
        batcher = Batcher(
            loaded.batch_probabilities,
            max_batch_size=self.max_batch_size,
            max_delay=self.max_delay,
            max_queue=self.max_queue,
            executor=self.executor,
        )
        self._batchers[loaded.job_id] = (loaded, batcher)
        return batcher

    async def probabilities(
        self,
        loaded: LoadedModel,
        images: Sequence[np.ndarray],
        *,
        batching: bool | None = None,
    ) -> torch.Tensor:
        """Softmax probabilities (N, classes), float64, of N gray images (a list of (H, W)
        arrays or one (N, H, W) array, values 0-255), dropout off.

        Raises ``QueueFull`` when the model's queue is at its bound."""
        batcher = self.batcher(loaded)
        if self.batching if batching is None else batching:
            return await batcher.submit(images)
        return await batcher.run_alone(images)

    def stats(self) -> dict[str, object]:
        return {
            "batching": self.batching,
            "max_batch_size": self.max_batch_size,
            "max_delay_ms": self.max_delay * 1000.0,
            "max_queue": self.max_queue,
            "torch_threads": torch.get_num_threads(),
            "models_loaded": len(self.cache),
            "cache_bytes": self.cache.nbytes(),
            "models": {
                str(job_id): {"queued": b.queued, **b.stats.as_dict()}
                for job_id, (_, b) in self._batchers.items()
            },
        }

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
