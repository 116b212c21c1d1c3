"""A crash between a checkpoint's write and its rename leaves the previous checkpoint loadable."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import torch

from service.training.config import TrainConfig
from service.training.loop import train
from tests.unit.checkpoint_crash_child import train_and_die_before_second_rename

CONFIG = {
    "model": "mlp", "dataset": "synthetic", "epochs": 3, "batch_size": 64, "lr": 0.1,
    "dropout": 0.5, "optimizer": "momentum", "seed": 5,
}  # fmt: skip


def test_previous_checkpoint_survives_a_crash_before_rename(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    child = multiprocessing.get_context("spawn").Process(
        target=train_and_die_before_second_rename, args=(CONFIG, str(checkpoint))
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 42  # it died where we meant it to

    leftovers = list(tmp_path.glob(".checkpoint.pt.*.tmp"))
    assert leftovers, "the half-finished temp file should still be there"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1  # the last complete checkpoint, intact

    reported: list[int] = []
    result = train(
        TrainConfig(**CONFIG),
        checkpoint_path=checkpoint,
        on_epoch=lambda m: reported.append(m.epoch),
    )
    assert reported == [2, 3]  # resumed after epoch 1; epoch 2 is redone, nothing skipped
    uninterrupted = train(TrainConfig(**CONFIG))
    assert [e.train_loss for e in result.epochs][-2:] == [
        e.train_loss for e in uninterrupted.epochs
    ][-2:]
    assert result.test_acc == uninterrupted.test_acc


def test_a_run_whose_checkpoint_is_thrown_away_skips_the_last_one(tmp_path: Path) -> None:
    # The worker deletes a finished job's checkpoint: writing the last epoch's would only delay
    # the job. A crash after the last epoch resumes from the one before and trains it again.
    config = TrainConfig(**CONFIG)
    checkpoint = tmp_path / "checkpoint.pt"
    whole = train(config, checkpoint_path=checkpoint, checkpoint_last_epoch=False)
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] == 2

    reported: list[int] = []
    again = train(
        config,
        checkpoint_path=checkpoint,
        on_epoch=lambda m: reported.append(m.epoch),
        checkpoint_last_epoch=False,
    )
    assert reported == [3]
    assert [m.epoch for m in again.epochs] == [1, 2, 3]
    assert again.epochs[-1].train_loss == whole.epochs[-1].train_loss  # the same epoch 3

    train(config, checkpoint_path=checkpoint)  # by default the last epoch is kept too
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] == 3


def test_checkpoints_wait_for_checkpoint_seconds(tmp_path: Path, monkeypatch) -> None:
    # A clock that moves 10 s per epoch (each epoch reads it once, after it ends).
    from service.training import loop

    now = iter(range(0, 10_000, 10))
    monkeypatch.setattr(loop.time, "monotonic", lambda: float(next(now)))
    config = TrainConfig(**{**CONFIG, "epochs": 5})
    written: list[int] = []

    def save(path: Path, state: dict) -> None:
        written.append(state["epoch"])

    train(config, checkpoint_path=tmp_path / "c.pt", save_checkpoint_fn=save, checkpoint_seconds=20)
    # Epochs end at 10, 20 (20 s after the start: written), 30, 40 (written), 50.
    assert written == [2, 4]
    written.clear()
    train(config, checkpoint_path=tmp_path / "d.pt", save_checkpoint_fn=save)  # 0: every epoch
    assert written == [1, 2, 3, 4, 5]
