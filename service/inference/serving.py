"""The serving side of the API process: the model cache, one batcher per loaded model, the
thread that runs forward passes off the event loop, and the threads that decode uploads."""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from service.inference.arrays import decode_npy
from service.inference.batcher import Batcher, BatchStats
from service.inference.cache import ModelCache
from service.inference.images import MAX_REQUEST_PIXELS
from service.inference.predictor import Inputs, LoadedModel, mc_summary
from service.inference.uploads import (
    Upload,
    decode_cost,
    npy_body_to_model_input,
    uploads_to_model_input,
)

T = TypeVar("T")

# Threads decoding uploaded files, for all requests together: each holds at most one
# full-size image (up to ~0.2 GB while it is converted), so this bounds decoding memory.
DECODE_THREADS = 2
# Pixels waiting for (or in) the decode threads, all requests together. Past it a request gets
# 503 + Retry-After rather than a wait behind the others: 20 requests of 16 blank 4096-px PNGs
# (16 KB each) held a 28-px image back for 45 s. Two full requests' worth: some seconds.
# (A .npy file counts its bytes: as many as its pixels in uint8, more in wider dtypes.)
MAX_DECODE_BACKLOG = 2 * MAX_REQUEST_PIXELS
# The rate the backlog drained at in a probe (2 cores, blank 4096-px PNGs): for Retry-After only.
DECODE_PIXELS_PER_SECOND = 150_000_000
# Files up to this many bytes in all have their headers read on the event loop (a 28-px PNG:
# about 50 us; Pillow reads 16 KB of a pathological file in 10 ms at worst); larger, in a thread.
PEEK_ON_LOOP_BYTES = 16384
# A .npy body up to this size is read on the event loop, as a few 28-px images are; larger
# ones go to the decode threads (32 at 4096 px each held 4.5 GB waiting full-size).
NPY_INLINE_BYTES = 1 << 20
# A JSON body (instances, v2 tensors) up to this size is parsed on the event loop (256 KiB: about
# 10 ms, some 100 instances of 28x28); larger ones in the decode threads. Its bytes count
# against the decode backlog, at least as many as the pixels they hold.
JSON_INLINE_BYTES = 1 << 18


# Bytes of large JSON bodies waiting for (or in) the decode threads. Parsing one is a long C
# call that holds the GIL, and the event loop waits for it: 30 bodies of 20 MB at once kept
# /v2/health/live waiting 9 s. About two bodies at the largest upload size; past it, 503.
MAX_JSON_BACKLOG = 48 * 1024 * 1024
JSON_BYTES_PER_SECOND = 20_000_000  # parsed and checked, 2 cores: for Retry-After only


class DecodeBusy(RuntimeError):
    """The decode threads have more uploads waiting than MAX_DECODE_BACKLOG allows (or more
    large JSON bodies than MAX_JSON_BACKLOG)."""

    def __init__(
        self, backlog: int, limit: int, unit: str = "pixels", rate: float = DECODE_PIXELS_PER_SECOND
    ) -> None:
        self.retry_after = max(1, math.ceil(backlog / rate))
        super().__init__(
            f"the server is decoding other uploads ({backlog:,} {unit} waiting, limit "
            f"{limit:,}); retry in {self.retry_after} s"
        )


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
        self.decode_executor = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        # Reads the headers of large uploads (decode_cost): bounded work per request, apart
        # from the decode threads, so that it never waits behind the decoding it gates.
        self.peek_executor = ThreadPoolExecutor(1, thread_name_prefix="peek")
        self.decode_backlog = 0  # pixels of the uploads queued for or in the decode threads
        self.json_backlog = 0  # bytes of the large JSON bodies among them
        self.max_decode_backlog = MAX_DECODE_BACKLOG
        self.succeeded: set[int] = set()  # job ids seen succeeded: a succeeded job never changes
        self._batchers: dict[int, tuple[LoadedModel, Batcher]] = {}
        # Per model since the server started: kept when the cache lets the model go.
        self._stats: dict[int, BatchStats] = {}

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
            stats=self._stats.setdefault(loaded.job_id, BatchStats()),
        )
        self._batchers[loaded.job_id] = (loaded, batcher)
        return batcher

    async def decode_uploads(
        self, loaded: LoadedModel, uploads: Sequence[Upload], *, max_images: int
    ) -> torch.Tensor:
        """Uploaded files -> the model's input (N, 1, side, side), decoded off the event loop.

        Raises ``InvalidInput`` naming ``files[i]``, ``DecodeBusy``."""
        if sum(len(data) for _, data in uploads) <= PEEK_ON_LOOP_BYTES:
            cost = decode_cost(uploads)  # a few small files: cheaper than a thread hop
        else:  # header reading can take milliseconds per file: never on the event loop
            loop = asyncio.get_running_loop()
            cost = await loop.run_in_executor(self.peek_executor, decode_cost, uploads)
        return await self._decode(
            cost, lambda: uploads_to_model_input(loaded, uploads, max_images=max_images)
        )

    async def decode_npy_body(self, loaded: LoadedModel, body: bytes, *, max_images: int) -> Inputs:
        """A whole-body .npy array -> its images. A small one is read here and waits in the
        batcher as pixels (prepared with its batch, the cheap path); a large one is brought to
        the model's input in a decode thread, a few images at a time, as files are.

        Raises ``InvalidInput`` naming ``body``, ``DecodeBusy``."""
        if len(body) <= NPY_INLINE_BYTES:
            return list(decode_npy(body, "body", max_images=max_images))
        return await self._decode(
            len(body), lambda: npy_body_to_model_input(loaded, body, max_images=max_images)
        )

    async def parse_body(self, body: bytes, work: Callable[[], T]) -> T:
        """``work()`` (parsing ``body``: JSON instances or tensors): here for a small body; for
        one over JSON_INLINE_BYTES, in a decode thread, under the same backlog bound as
        uploads and one of its own (MAX_JSON_BACKLOG). Parsing 20 MB of JSON numbers takes
        about a second, which on the event loop stalled every other request, /v2/health/live
        included.

        Raises ``DecodeBusy``, and whatever ``work`` raises."""
        if len(body) <= JSON_INLINE_BYTES:
            return work()
        size = len(body)
        if self.json_backlog and self.json_backlog + size > MAX_JSON_BACKLOG:
            raise DecodeBusy(
                self.json_backlog, MAX_JSON_BACKLOG, "bytes of JSON", JSON_BYTES_PER_SECOND
            )
        self.json_backlog += size
        try:
            return await self._decode(size, work)
        finally:
            self.json_backlog -= size

    async def _decode(self, cost: int, work: Callable[[], T]) -> T:
        # One request alone is always taken, whatever its cost (its own limits bound it).
        if self.decode_backlog and self.decode_backlog + cost > self.max_decode_backlog:
            raise DecodeBusy(self.decode_backlog, self.max_decode_backlog)
        self.decode_backlog += cost
        try:
            return await asyncio.get_running_loop().run_in_executor(self.decode_executor, work)
        finally:
            self.decode_backlog -= cost

    async def probabilities(
        self,
        loaded: LoadedModel,
        images: Inputs,
        *,
        batching: bool | None = None,
    ) -> torch.Tensor:
        """Softmax probabilities (N, classes), float64, of N gray images (a list of (H, W)
        arrays or one (N, H, W) array, values 0-255, or a prepared tensor), dropout off.

        Raises ``QueueFull`` when the model's queue is at its bound."""
        batcher = self.batcher(loaded)
        if self.batching if batching is None else batching:
            return await batcher.submit(images)
        return await batcher.run_alone(images)

    async def mc_dropout(
        self,
        loaded: LoadedModel,
        images: Inputs,
        passes: int,
        seed: int,
        *,
        abandoned: Callable[[], Awaitable[bool]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of ``passes`` MC dropout passes (``LoadedModel.mc_dropout``), on the
        forward thread one pass at a time, so that other models' batches run in between; the
        request counts as passes × N images against the model's queue.

        Raises ``QueueFull`` when that does not fit; ``Abandoned`` when ``abandoned()`` says,
        between two passes, that the client went away."""
        generator = loaded.mc_generator(seed)
        prepared: list[torch.Tensor] = []

        def one_pass() -> torch.Tensor:
            if not prepared:  # on the forward thread, as a batch's preprocessing is
                prepared.append(loaded.model_input([images]))
            return loaded.mc_pass(prepared[0], generator)

        runs = await self.batcher(loaded).run_in_turns(
            [one_pass] * passes, images=len(images), abandoned=abandoned
        )
        return mc_summary(runs)

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
                str(job_id): {"queued": self._queued(job_id), **stats.as_dict()}
                for job_id, stats in self._stats.items()
            },
        }

    def _queued(self, job_id: int) -> int:
        entry = self._batchers.get(job_id)
        return entry[1].queued if entry is not None else 0

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.decode_executor.shutdown(wait=False, cancel_futures=True)
        self.peek_executor.shutdown(wait=False, cancel_futures=True)
