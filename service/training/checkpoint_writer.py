"""Write each epoch's checkpoint on a background thread while the next epoch trains.

Writing a checkpoint costs up to a second for the 224-px nets (VGG's weights are 164 MiB,
written in 0.2-1.1 s on the 2-core machine's disk), every epoch. The state is copied to the
CPU first, in the training thread, so the copy is of this epoch; only the write to disk
overlaps training (torch.save lets the training thread run meanwhile). One write at a time:
a new checkpoint waits for the last one. A write that fails raises at the next submit or at
close, as a synchronous write would have, one epoch later at most.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def detached_copy(value: Any, device: str | torch.device | None = "cpu") -> Any:
    """``value`` with every tensor copied (to ``device``; None: where it is): no later step
    can change the copy."""
    if isinstance(value, torch.Tensor):
        if device is None:
            return value.detach().clone()
        return value.detach().to(device, copy=True)
    if isinstance(value, dict):
        return {k: detached_copy(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [detached_copy(v, device) for v in value]
    if type(value) is tuple:
        return tuple(detached_copy(v, device) for v in value)
    return value


class CheckpointWriter:
    """Writes one run's checkpoints to ``path`` with ``save``, one at a time, in the background."""

    def __init__(self, path: Path, save: Callable[[Path, dict[str, Any]], None]) -> None:
        self.path, self._save = path, save
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, state: dict[str, Any]) -> None:
        """Start writing ``state`` (copied now); waits for the previous write first."""
        self.wait()
        state = detached_copy(state)
        self._thread = threading.Thread(
            target=self._write, args=(state,), name="checkpoint-writer", daemon=True
        )
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in flight is done; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self, *, raise_errors: bool = True) -> None:
        """The last checkpoint is on disk (or failed) when this returns."""
        try:
            self.wait()
        except BaseException:
            if raise_errors:
                raise

    def _write(self, state: dict[str, Any]) -> None:
        try:
            self._save(self.path, state)
        except BaseException as exc:  # handed to the training thread
            self._error = exc
