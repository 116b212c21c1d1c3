"""Checkpoints written on a background thread (service.training.checkpoint_writer)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from service.training.checkpoint_writer import CheckpointWriter
from service.training.loop import save_checkpoint


def test_the_file_holds_the_state_as_it_was_at_submit(tmp_path: Path) -> None:
    weight = torch.zeros(3)
    momentum = {"state": {0: {"buffer": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]}
    writer = CheckpointWriter(tmp_path / "ckpt.pt", save_checkpoint)
    writer.submit({"model": {"w": weight}, "optimizer": momentum, "epoch": 1})
    weight += 5  # the next epoch's steps change the live tensors in place
    momentum["state"][0]["buffer"] += 5
    writer.close()
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert saved["model"]["w"].tolist() == [0.0, 0.0, 0.0]
    assert saved["optimizer"]["state"][0]["buffer"].tolist() == [1.0, 1.0]
    assert saved["optimizer"]["param_groups"] == [{"lr": 0.1}] and saved["epoch"] == 1


def test_training_goes_on_while_a_write_is_in_flight_and_the_next_waits(tmp_path: Path) -> None:
    release, started, order = threading.Event(), threading.Event(), []

    def slow_save(path: Path, state: dict) -> None:
        started.set()
        assert release.wait(10)
        order.append(state["epoch"])

    writer = CheckpointWriter(tmp_path / "ckpt.pt", slow_save)
    writer.submit({"epoch": 1})
    assert started.wait(10)
    assert order == []  # submit returned before the write finished
    second = threading.Thread(target=writer.submit, args=({"epoch": 2},))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # one write at a time: epoch 2 waits for epoch 1
    release.set()
    second.join(10)
    writer.close()
    assert order == [1, 2]


def test_a_failed_write_raises_at_the_next_submit_or_at_close(tmp_path: Path) -> None:
    def full_disk(path: Path, state: dict) -> None:
        raise OSError(28, "No space left on device")

    writer = CheckpointWriter(tmp_path / "ckpt.pt", full_disk)
    writer.submit({"epoch": 1})
    with pytest.raises(OSError, match="No space left"):
        writer.submit({"epoch": 2})  # raised before epoch 2's write started
    writer.close()  # each failure raises once
    writer.submit({"epoch": 3})
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    writer.submit({"epoch": 4})
    writer.close(raise_errors=False)  # another error is already on its way: this one yields
