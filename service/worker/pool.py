"""The embedded worker pool of `trainserve serve`: one `trainserve worker` process per device."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from service.config import Settings, get_settings

log = logging.getLogger(__name__)
STOP_GRACE_SECONDS = 30.0  # a worker needs at most one batch to requeue its job
WATCH_SECONDS = 1.0  # how often the pool looks for dead workers
RESTART_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # by deaths in a row
HEALTHY_AFTER_SECONDS = 60.0  # a worker that lived this long starts its backoff over
# Sent to the workers when a job is queued, so that an idle one claims it now rather than at its
# next poll (up to TRAINSERVE_POLL_SECONDS later). A signal whose default action is to ignore
# it: a worker that has not installed its handler yet, or a worker of another version, is not
# killed by it, only not woken.
WAKE_SIGNAL = signal.SIGWINCH


def default_worker_devices(count: int | None, slots_per_gpu: int | None = None) -> list[str]:
    """`slots_per_gpu` workers per GPU (cuda:0, cuda:0, cuda:1, cuda:1, ...), else one on the
    CPU; `count` overrides (round-robin over the GPUs). `slots_per_gpu` None: the setting
    TRAINSERVE_SLOTS_PER_GPU (default 2)."""
    import torch

    if slots_per_gpu is None:
        slots_per_gpu = get_settings().slots_per_gpu
    if slots_per_gpu < 1:
        raise ValueError(f"slots_per_gpu must be at least 1, got {slots_per_gpu}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = [f"cuda:{i}" for i in range(gpus)] or ["cpu"]
    if count is None:
        if gpus:
            return [d for d in devices for _ in range(slots_per_gpu)]
        return devices
    return [devices[i % len(devices)] for i in range(count)]


@dataclass
class _Slot:
    """One worker process of the pool, and what its restart backoff needs to know."""

    process: subprocess.Popen[bytes]
    started: float  # time.monotonic() of the latest start
    quick_deaths: int = 0  # deaths in a row, each within HEALTHY_AFTER_SECONDS of its start
    restart_at: float | None = None  # when a dead worker is started again


class WorkerPool:
    """Starts worker processes that exit with us, restarts one that dies (the only CPU worker of
    `serve` killed by the OOM killer would otherwise leave every job queued for good), and
    stops them the way a worker likes to be stopped: SIGTERM (requeue the current job), then
    SIGKILL after a grace period."""

    def __init__(self, settings: Settings, devices: list[str]) -> None:
        self.settings = settings
        self.devices = devices
        self._slots: list[_Slot] = []
        self._env: dict[str, str] = {}
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        """The current process of each slot (a restarted worker replaces its slot's)."""
        return [slot.process for slot in self._slots]

    def command(self, slot: int) -> list[str]:
        """The command line of the worker in ``slot``."""
        return [
            sys.executable, "-m", "service.cli", "worker",
            "--device", self.devices[slot], "--name", f"embedded-{os.getpid()}-{slot}",
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Workers must see exactly the database and artifacts the API uses.
        env["TRAINSERVE_DATABASE_URL"] = self.settings.resolved_database_url
        env["TRAINSERVE_ARTIFACT_DIR"] = str(self.settings.resolved_artifact_dir)
        if self.settings.data_dir is not None:
            env["TRAINSERVE_DATA_DIR"] = str(self.settings.data_dir)
        cpu_workers = sum(d == "cpu" for d in self.devices)
        if cpu_workers > 1 and self.settings.torch_threads is None:
            # Oversubscribed cores make every job many times slower, not just a share slower.
            env["TRAINSERVE_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))
        return env

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        # A new session: Ctrl-C in the terminal reaches the server, which stops the workers.
        return subprocess.Popen(self.command(slot), env=self._env, start_new_session=True)

    def start(self) -> None:
        self._env = self._environment()
        self._stopping.clear()
        now = time.monotonic()
        self._slots = [_Slot(self._spawn(i), started=now) for i in range(len(self.devices))]
        if self._slots:
            log.info("started %d worker(s) on %s", len(self._slots), ", ".join(self.devices))
        else:
            log.info("no workers: this process serves the API only")
        if self._slots:
            self._watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_SECONDS):
            for index, slot in enumerate(self._slots):
                code = slot.process.poll()
                if code is not None and not self._stopping.is_set():
                    self._restart(index, code)

    def _restart(self, index: int, code: int) -> None:
        """Restart a dead worker, after a pause that grows while it keeps dying young. Its job
        is requeued by a worker (this new one, too) once its lease expires, and resumes."""
        slot, now = self._slots[index], time.monotonic()
        if slot.restart_at is None:
            if now - slot.started >= HEALTHY_AFTER_SECONDS:
                slot.quick_deaths = 0
            delay = RESTART_BACKOFF_SECONDS[
                min(slot.quick_deaths, len(RESTART_BACKOFF_SECONDS) - 1)
            ]
            log.warning(
                "worker %d on %s exited with code %s; restarting it in %g s (its job, if it had "
                "one, is requeued when the lease lapses)", index, self.devices[index], code, delay,
            )  # fmt: skip
            slot.restart_at = now + delay
        if now >= slot.restart_at:
            slot.quick_deaths += 1
            slot.process = self._spawn(index)
            slot.started, slot.restart_at = now, None

    def wake(self) -> None:
        """Tell the workers that a job was queued (``WAKE_SIGNAL``)."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # it exited just now
                    process.send_signal(WAKE_SIGNAL)

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        processes = self.processes
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for p in processes:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._slots.clear()
