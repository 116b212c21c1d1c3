"""Data-parallel training (devices: N) on the CPU with gloo and 2 processes."""

from __future__ import annotations

import math
import threading

import pytest

from service.training.config import TrainConfig
from service.training.distributed import job_devices, train_data_parallel
from service.training.loop import TrainingCancelled, train

# 1,800 training examples (synthetic, 10% held out) in 30 batches of 60: every global batch
# splits into two equal shards, so two ranks compute exactly the one-process gradient.
CONFIG = TrainConfig(
    model="mlp", dataset="synthetic", epochs=2, batch_size=60, lr=0.1, dropout=0.0,
    optimizer="momentum", seed=11,
)  # fmt: skip


def test_two_gloo_processes_match_one_process() -> None:
    reported = []
    parallel = train_data_parallel(
        CONFIG.__class__(**{**CONFIG.to_dict(), "devices": 2}),
        job_devices("cpu", 2),
        on_epoch=reported.append,
        should_stop=lambda: False,
    )
    single = train(CONFIG)
    assert [m.epoch for m in reported] == [1, 2]  # rank 0 alone reports
    for a, b in zip(parallel.epochs, single.epochs, strict=True):
        assert math.isclose(a.train_loss, b.train_loss, rel_tol=1e-4)
        assert math.isclose(a.val_acc, b.val_acc, abs_tol=2e-3)
    assert math.isclose(parallel.test_acc, single.test_acc, abs_tol=5e-3)
    assert parallel.test_acc > 0.3  # it learned (chance is 0.1)


def test_cancel_stops_every_rank() -> None:
    stop = threading.Event()
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        if calls["n"] > 3:
            stop.set()
        return stop.is_set()

    with pytest.raises(TrainingCancelled):
        train_data_parallel(
            TrainConfig(**{**CONFIG.to_dict(), "epochs": 50, "devices": 2}),
            job_devices("cpu", 2),
            on_epoch=lambda m: None,
            should_stop=should_stop,
        )


def test_cpu_jobs_run_every_rank_on_the_cpu() -> None:
    assert job_devices("cpu", 3) == ["cpu", "cpu", "cpu"]
