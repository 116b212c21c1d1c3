"""The embedded worker pool of `trainserve serve`: one `trainserve worker` process per device."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from service.config import Settings, get_settings

log = logging.getLogger(__name__)
STOP_GRACE_SECONDS = 30.0  # a worker needs at most one batch to requeue its job
WATCH_SECONDS = 1.0  # how often the pool looks for dead workers
RESTART_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # by deaths in a row
HEALTHY_AFTER_SECONDS = 60.0  # a worker that lived this long starts its backoff over


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


class WorkerPool:
    """Starts worker processes that exit with us, restarts one that dies (the only CPU worker of
    `serve` killed by the OOM killer would otherwise leave every job queued for good), and
    stops them the way a worker likes to be stopped: SIGTERM (requeue the current job), then
    SIGKILL after a grace period."""

    def __init__(self, settings: Settings, devices: list[str]) -> None:
        self.settings = settings
        self.devices = devices
        self.processes: list[subprocess.Popen[bytes]] = []
        self._started: list[float] = []  # time.monotonic() of each slot's latest start
        self._quick_deaths: list[int] = []  # deaths in a row, each within HEALTHY_AFTER_SECONDS
        self._restart_at: list[float | None] = []
        self._env: dict[str, str] = {}
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

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
        self.processes = [self._spawn(slot) for slot in range(len(self.devices))]
        now = time.monotonic()
        self._started = [now] * len(self.processes)
        self._quick_deaths = [0] * len(self.processes)
        self._restart_at = [None] * len(self.processes)
        log.info("started %d worker(s) on %s", len(self.processes), ", ".join(self.devices))
        if self.processes:
            self._watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_SECONDS):
            for slot, process in enumerate(self.processes):
                code = process.poll()
                if code is not None and not self._stopping.is_set():
                    self._restart(slot, code)

    def _restart(self, slot: int, code: int) -> None:
        """Restart a dead worker, after a pause that grows while it keeps dying young. Its job
        is requeued by a worker (this new one, too) once its lease expires, and resumes."""
        now = time.monotonic()
        if self._restart_at[slot] is None:
            if now - self._started[slot] >= HEALTHY_AFTER_SECONDS:
                self._quick_deaths[slot] = 0
            delay = RESTART_BACKOFF_SECONDS[
                min(self._quick_deaths[slot], len(RESTART_BACKOFF_SECONDS) - 1)
            ]
            log.warning(
                "worker %d on %s exited with code %s; restarting it in %g s (its job, if it had "
                "one, is requeued when the lease lapses)", slot, self.devices[slot], code, delay,
            )  # fmt: skip
            self._restart_at[slot] = now + delay
        restart_at = self._restart_at[slot]
        if restart_at is not None and now >= restart_at:
            self._quick_deaths[slot] += 1
            self.processes[slot] = self._spawn(slot)
            self._started[slot], self._restart_at[slot] = now, None

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for p in self.processes:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes.clear()
