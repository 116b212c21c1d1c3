"""default_worker_devices: workers per GPU (TRAINSERVE_SLOTS_PER_GPU), the CPU fallback; the
pool restarts a worker that dies."""

from __future__ import annotations

import logging
import signal
import sys
import time

import pytest
import torch

from service.config import Settings, get_settings
from service.worker.pool import WATCH_SECONDS, WorkerPool, default_worker_devices


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    def set_gpus(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_gpus


@pytest.fixture
def slots_env(monkeypatch: pytest.MonkeyPatch):
    def set_slots(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv("TRAINSERVE_SLOTS_PER_GPU", raising=False)
        else:
            monkeypatch.setenv("TRAINSERVE_SLOTS_PER_GPU", value)
        get_settings.cache_clear()

    yield set_slots
    get_settings.cache_clear()


def test_two_workers_per_gpu_by_default(gpus, slots_env) -> None:
    gpus(2)
    slots_env(None)
    assert default_worker_devices(None) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]


@pytest.mark.parametrize(
    ("n_gpus", "slots", "expected"),
    [
        (1, 1, ["cuda:0"]),
        (1, 4, ["cuda:0"] * 4),
        (2, 2, ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]),
        (3, 2, ["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cuda:2", "cuda:2"]),
    ],
)
def test_slots_per_gpu(gpus, n_gpus: int, slots: int, expected: list[str]) -> None:
    gpus(n_gpus)
    assert default_worker_devices(None, slots_per_gpu=slots) == expected


def test_slots_from_the_environment(gpus, slots_env) -> None:
    gpus(2)
    slots_env("3")
    assert default_worker_devices(None) == ["cuda:0"] * 3 + ["cuda:1"] * 3


def test_cpu_is_unchanged_by_slots(gpus, slots_env) -> None:
    gpus(0)
    slots_env("4")
    assert default_worker_devices(None) == ["cpu"]
    assert default_worker_devices(None, slots_per_gpu=4) == ["cpu"]
    assert default_worker_devices(3, slots_per_gpu=4) == ["cpu", "cpu", "cpu"]


def test_explicit_count_overrides_slots(gpus) -> None:
    gpus(2)
    assert default_worker_devices(3, slots_per_gpu=4) == ["cuda:0", "cuda:1", "cuda:0"]
    assert default_worker_devices(0, slots_per_gpu=4) == []


def test_setting_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().slots_per_gpu == 2
    monkeypatch.setenv("TRAINSERVE_SLOTS_PER_GPU", "0")
    with pytest.raises(ValueError):
        Settings()
    with pytest.raises(ValueError):
        default_worker_devices(None, slots_per_gpu=0)


class SleepingPool(WorkerPool):
    """Workers that only sleep: the pool's supervision without training anything."""

    def command(self, slot: int) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(120)"]


def _wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.timeout(60)
def test_a_dead_worker_is_restarted_and_stop_stops_everything(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = SleepingPool(Settings(state_dir=tmp_path), ["cpu", "cpu"])
    pool.start()
    try:
        first, other = pool.processes
        first.send_signal(signal.SIGKILL)  # as the OOM killer would
        with caplog.at_level(logging.WARNING, logger="service.worker.pool"):
            assert _wait_for(
                lambda: pool.processes[0] is not first and pool.processes[0].poll() is None
            )
        assert "worker 0 on cpu exited with code -9; restarting it" in caplog.text
        assert pool.processes[1] is other and other.poll() is None  # the other one untouched
    finally:
        survivors = list(pool.processes)
        pool.stop()
    assert all(p.poll() is not None for p in survivors) and pool.processes == []
    time.sleep(2 * WATCH_SECONDS)
    assert pool.processes == []  # nothing restarted after stop
