"""Dynamic batching: concurrent requests for one model share a forward pass.

One asyncio task per model (started when a request arrives, gone when the queue is empty)
takes whatever is waiting, up to ``max_batch_size`` images, and runs the forward in a
thread so the event loop keeps serving HTTP meanwhile. It waits up to ``max_delay`` seconds
for more images only while the model is busy (it has just run a batch and requests are still
coming); a request that finds the model idle runs at once. The queue is bounded in images
(waiting and running): past the bound ``submit`` raises ``QueueFull`` at once instead of
letting latency grow without limit. Work run apart from the batches (``run_alone``,
``run_in_turns``) goes on the same thread and counts against the same bound.

The forward thread is shared by every model: heavy work (MC dropout's K passes) goes to it one
pass at a time, so the other models' batches take their turns in between instead of waiting
behind all K.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# The inputs of the requests in a batch, in order -> one output row per image, in order.
Run = Callable[[Sequence[Any]], torch.Tensor]


class Abandoned(RuntimeError):
    """The requester went away: the rest of its work was not done."""


class QueueFull(RuntimeError):
    """The model's queue holds its limit of images; the client should retry later."""

    def __init__(self, queued: int, limit: int, retry_after: int) -> None:
        super().__init__(
            f"the model's queue is full ({queued} images waiting or running, limit {limit}); "
            f"retry in {retry_after} s"
        )
        self.queued = queued
        self.limit = limit
        self.retry_after = retry_after


@dataclass
class BatchStats:
    """Counters since start: how much batching actually happened."""

    requests: int = 0
    images: int = 0
    batches: int = 0  # forward passes
    largest_batch: int = 0  # images
    rejected: int = 0  # requests answered QueueFull
    sizes: dict[int, int] = field(default_factory=dict)  # images per forward -> count

    def record(self, images: int, requests: int, forwards: int = 1) -> None:
        """``forwards`` passes of ``images`` images each (MC dropout: K passes over one
        request's N images) for ``requests`` requests; ``images`` counts every image of every
        pass, so that mean_batch is the images of a forward."""
        self.requests += requests
        self.images += images * forwards
        self.batches += forwards
        self.largest_batch = max(self.largest_batch, images)
        self.sizes[images] = self.sizes.get(images, 0) + forwards

    def as_dict(self) -> dict[str, object]:
        mean = self.images / self.batches if self.batches else 0.0
        return {
            "requests": self.requests,
            "images": self.images,
            "batches": self.batches,
            "mean_batch": round(mean, 3),
            "largest_batch": self.largest_batch,
            "rejected": self.rejected,
            "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


@dataclass
class _Pending:
    inputs: Any  # one request's images, as ``run`` takes them
    size: int  # images
    future: asyncio.Future[torch.Tensor]


class Batcher:
    """Batches the ``run`` calls of concurrent ``submit``s (one model, one event loop).

    ``run`` gets the inputs of several requests (each ``len(inputs)`` images, unless
    ``submit`` says otherwise) and returns one output row per image, so preprocessing too
    happens once per batch, in the forward thread.
    """

    def __init__(
        self,
        run: Run,
        *,
        max_batch_size: int = 32,
        max_delay: float = 0.002,
        max_queue: int = 1024,
        executor: Executor | None = None,
        stats: BatchStats | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_delay >= 0")
        self.run = run
        self.max_batch_size = int(max_batch_size)
        self.max_delay = float(max_delay)
        self.max_queue = int(max_queue)
        self.executor = executor
        # Given: counters that outlive this batcher (a model evicted and loaded again).
        self.stats = stats if stats is not None else BatchStats()
        self._pending: deque[_Pending] = deque()
        self._queued = 0  # images waiting or running
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # Running sums (decaying) of forward seconds and of their images, for Retry-After: the
        # cost of an image is their ratio, so a batch of 256 weighs 256 times a lone image, as
        # it does in the queue (a mean of per-run costs, over many lone images, had said 17 s
        # for a queue of large batches that drained in 2).
        self._recent_seconds = 0.0
        self._recent_images = 0.0

    @property
    def queued(self) -> int:
        """Images waiting or being computed."""
        return self._queued

    def _admit(self, n: int) -> None:
        # A request larger than the whole queue is admitted when the queue is empty.
        if self._queued and self._queued + n > self.max_queue:
            self.stats.rejected += 1
            wait = self._queued * self.seconds_per_image
            raise QueueFull(self._queued, self.max_queue, max(1, math.ceil(wait)))

    @property
    def seconds_per_image(self) -> float:
        """The recent forward cost of one image (0 before any forward)."""
        return self._recent_seconds / self._recent_images if self._recent_images else 0.0

    async def submit(self, inputs: Any, size: int | None = None) -> torch.Tensor:
        """Output rows for ``inputs`` (``size`` images, default ``len(inputs)``), computed in
        a batch with other waiting requests."""
        n = len(inputs) if size is None else int(size)
        self._admit(n)
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, n, loop.create_future())
        self._pending.append(pending)
        self._queued += n
        if self._task is None or self._task.done():
            self._arrived = asyncio.Event()
            self._task = loop.create_task(self._work(), name="batcher")
        elif self._arrived is not None:
            self._arrived.set()
        return await pending.future

    async def run_alone(self, inputs: Any, size: int | None = None) -> torch.Tensor:
        """Outputs for ``inputs`` in a forward of their own (batching off), same queue bound."""
        n = len(inputs) if size is None else int(size)
        outputs = await self._in_thread(n, self._timed_run, [inputs], n)
        self.stats.record(n, 1)
        return outputs

    async def run_in_turns(
        self,
        steps: Sequence[Callable[[], T]],
        images: int,
        *,
        abandoned: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[T]:
        """Each of ``steps`` (one forward over a request's ``images`` images, or so) on the
        forward thread, outside any batch, one after the other: the whole counts as
        len(steps) x ``images`` against the queue bound (admitted at once, or ``QueueFull``),
        each step's share leaving the queue as it is done, and between two steps whatever else
        waits for the thread runs. Between steps ``abandoned()`` is asked (the client went
        away?): if so, ``Abandoned`` is raised and no more steps run."""
        cost = len(steps) * images
        self._admit(cost)
        self._queued += cost
        left = cost  # still counted in _queued
        loop = asyncio.get_running_loop()
        results: list[T] = []
        running: asyncio.Future[T] | None = None
        try:
            for i, step in enumerate(steps):
                if i and abandoned is not None and await abandoned():
                    raise Abandoned(f"abandoned after {i} of {len(steps)} steps")
                running = loop.run_in_executor(self.executor, self._timed, step, images)
                results.append(await asyncio.shield(running))
                self._queued -= images
                left -= images
        finally:
            if running is not None and not running.done():  # cancelled mid-step
                running.add_done_callback(self._release_when_done(left))
            else:
                self._queued -= left
        self.stats.record(images, 1, forwards=len(steps))
        return results

    def _release_when_done(self, cost: int) -> Callable[[asyncio.Future[Any]], None]:
        def release(done: asyncio.Future[Any]) -> None:
            self._queued -= cost
            if not done.cancelled():
                done.exception()  # retrieved: a client that went away leaves no warning

        return release

    async def _in_thread(self, cost: int, fn: Callable[..., T], *args: Any) -> T:
        self._admit(cost)
        self._queued += cost
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        # The images stay queued until the thread is done, even if the client goes first.
        future.add_done_callback(self._release_when_done(cost))
        return await asyncio.shield(future)

    def _timed_run(self, inputs: list[Any], size: int) -> torch.Tensor:
        outputs = self._timed(lambda: self.run(inputs), size)
        if len(outputs) != size:
            raise RuntimeError(f"the model gave {len(outputs)} outputs for {size} inputs")
        return outputs

    def _timed(self, work: Callable[[], T], images: int) -> T:
        start = time.perf_counter()
        result = work()
        self._recent_seconds = 0.9 * self._recent_seconds + 0.1 * (time.perf_counter() - start)
        self._recent_images = 0.9 * self._recent_images + 0.1 * max(1, images)
        return result

    def _take(self, batch: list[_Pending], size: int) -> int:
        """Move waiting requests into ``batch`` while they fit; returns the new image count."""
        while self._pending:
            head = self._pending[0]
            if head.future.done():  # its client went away: drop it
                self._pending.popleft()
                self._queued -= head.size
                continue
            if batch and size + head.size > self.max_batch_size:
                break
            batch.append(self._pending.popleft())
            size += head.size
            if size >= self.max_batch_size:
                break
        return size

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        arrived = self._arrived
        assert arrived is not None
        busy = False  # the previous pass just ran: more requests are likely on their way
        batch: list[_Pending] = []
        try:
            while self._pending:
                batch = []
                size = self._take(batch, 0)
                if busy and self.max_delay > 0 and size < self.max_batch_size:
                    deadline = loop.time() + self.max_delay
                    while size < self.max_batch_size:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        arrived.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(arrived.wait(), remaining)
                        size = self._take(batch, size)
                if not batch:
                    break
                await self._run_batch(loop, batch, size)
                batch = []
                busy = True
        except BaseException as exc:  # cancelled at shutdown: nobody may wait forever
            for item in [*batch, *self._pending]:
                if not item.future.done():
                    item.future.set_exception(
                        exc if isinstance(exc, Exception) else RuntimeError("shutting down")
                    )
            self._pending.clear()
            self._queued = 0
            raise

    async def _run_batch(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], size: int
    ) -> None:
        try:
            inputs = [item.inputs for item in batch]
            outputs = await loop.run_in_executor(self.executor, self._timed_run, inputs, size)
        except Exception as exc:  # the forward failed: every request of the batch hears it
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        else:
            self.stats.record(size, len(batch))
            start = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result(outputs[start : start + item.size])
                start += item.size
        finally:
            self._queued -= size
