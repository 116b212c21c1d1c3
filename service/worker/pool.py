"""The embedded worker pool of `trainserve serve`: one `trainserve worker` process per device."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from service.config import Settings, get_settings

log = logging.getLogger(__name__)
STOP_GRACE_SECONDS = 30.0  # a worker needs at most one batch to requeue its job


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
    """Starts worker processes that exit with us, and stops them the way a worker likes to be
    stopped: SIGTERM (requeue the current job), then SIGKILL after a grace period."""

    def __init__(self, settings: Settings, devices: list[str]) -> None:
        self.settings = settings
        self.devices = devices
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
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
        for i, device in enumerate(self.devices):
            cmd = [
                sys.executable, "-m", "service.cli", "worker",
                "--device", device, "--name", f"embedded-{os.getpid()}-{i}",
                "--parent-pid", str(os.getpid()),
            ]  # fmt: skip
            # A new session: Ctrl-C in the terminal reaches the server, which stops the workers.
            self.processes.append(subprocess.Popen(cmd, env=env, start_new_session=True))
        log.info("started %d worker(s) on %s", len(self.processes), ", ".join(self.devices))

    def stop(self) -> None:
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
