"""Learning-rate schedules: their shape, the lr each step of a run gets, and resuming one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from service.training import steps as steps_module
from service.training.config import TrainConfig
from service.training.loop import EpochMetrics, train
from service.training.schedule import LrSchedule, lr_factor
from tests.unit.test_training import assert_same_weights, curve, synthetic


def test_constant_is_the_course_lr() -> None:
    assert {lr_factor("constant", s, 100) for s in range(100)} == {1.0}


def test_cosine_falls_from_lr_towards_zero() -> None:
    factors = [lr_factor("cosine", s, 100) for s in range(100)]
    assert factors[0] == 1.0
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))
    assert 0 < factors[-1] < 1e-3
    assert factors[50] == pytest.approx(0.5)


def test_onecycle_rises_to_lr_then_falls_below_its_start() -> None:
    factors = [lr_factor("onecycle", s, 101) for s in range(101)]
    peak = max(range(101), key=factors.__getitem__)
    assert factors[0] == pytest.approx(1 / 25)
    assert peak == 30 and factors[peak] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:peak], factors[1 : peak + 1], strict=True))
    assert all(a > b for a, b in zip(factors[peak:], factors[peak + 1 :], strict=False))
    assert factors[-1] == pytest.approx(1 / 25 / 1e4)


def test_a_constant_run_records_its_lr() -> None:
    assert [m.lr for m in train(synthetic("softmax", lr=0.1, epochs=2)).epochs] == [0.1, 0.1]


def test_short_runs_and_unknown_names() -> None:
    for schedule in ("cosine", "onecycle"):
        assert 0 < lr_factor(schedule, 0, 1) <= 1
        assert 0 < lr_factor(schedule, 5, 2) <= 1  # past the end: the last step's rate
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor("linear", 0, 10)


def test_the_run_counts_steps_across_epochs() -> None:
    schedule = LrSchedule(TrainConfig(model="mlp", lr=0.2, epochs=3, lr_schedule="cosine"), 10)
    assert schedule.lr(1, 0) == pytest.approx(0.2)
    assert schedule.lr(2, 5) == pytest.approx(0.2 * lr_factor("cosine", 15, 30))
    assert schedule.lr(3, 9) == pytest.approx(0.2 * lr_factor("cosine", 29, 30))


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_every_step_gets_its_scheduled_lr(monkeypatch, schedule: str) -> None:
    """What the optimizer holds when each batch's step runs, over a whole 2-epoch job."""
    seen: list[float] = []
    real = steps_module.EagerSteps.step

    def spy(self, batch: torch.Tensor) -> None:
        rates = {group["lr"] for group in self.optimizer.param_groups}
        assert len(rates) == 1  # weights (decayed) and biases move at the same rate
        seen.append(rates.pop())
        real(self, batch)

    monkeypatch.setattr(steps_module.EagerSteps, "step", spy)
    config = synthetic(
        "mlp", lr=0.3, batch_size=64, epochs=2, weight_decay=1e-3, lr_schedule=schedule
    )
    result = train(config)
    per_epoch = len(seen) // 2
    assert len(seen) == 2 * per_epoch and per_epoch > 1
    expected = [0.3 * lr_factor(schedule, s, len(seen)) for s in range(len(seen))]
    assert seen == pytest.approx(expected)
    # Each epoch's curve row records the rate of its last step.
    assert [m.lr for m in result.epochs] == pytest.approx([seen[per_epoch - 1], seen[-1]])


def test_a_scheduled_run_learns_and_resumes_exactly(tmp_path: Path) -> None:
    config = synthetic(
        "mlp", lr=0.05, optimizer="momentum", batch_size=32, epochs=3, lr_schedule="onecycle"
    )
    whole = train(config)
    assert whole.epochs[-1].train_loss < whole.epochs[0].train_loss
    assert whole.val_acc > 0.2  # 10 classes: chance is 0.1

    checkpoint = tmp_path / "checkpoint.pt"
    train(dataclasses.replace(config, epochs=1), checkpoint_path=checkpoint)
    # A 1-epoch run is another schedule (its whole cycle fits in one epoch): not resumed.
    seen: list[EpochMetrics] = []
    restarted = train(config, on_epoch=seen.append, checkpoint_path=checkpoint)
    assert [m.epoch for m in seen] == [1, 2, 3]
    assert curve(restarted) == curve(whole)


def test_a_stopped_scheduled_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    config = synthetic("mlp", lr=0.3, batch_size=64, epochs=3, lr_schedule="cosine")
    whole = train(config)
    checkpoint = tmp_path / "checkpoint.pt"
    epochs_done: list[EpochMetrics] = []
    with pytest.raises(steps_module.TrainingCancelled):
        train(
            config,
            on_epoch=epochs_done.append,
            should_stop=lambda: len(epochs_done) >= 1,
            checkpoint_path=checkpoint,
        )
    seen: list[EpochMetrics] = []
    resumed = train(config, on_epoch=seen.append, checkpoint_path=checkpoint)
    assert [m.epoch for m in seen] == [2, 3]
    assert curve(resumed) == curve(whole)
    assert_same_weights(resumed.model, whole.model)


def test_a_checkpoint_from_before_the_field_still_resumes(tmp_path: Path) -> None:
    """A job running across the upgrade that added lr_schedule: its checkpoint has no such key."""
    config = synthetic("softmax", lr=0.1, batch_size=128, epochs=2)
    checkpoint = tmp_path / "checkpoint.pt"
    train(dataclasses.replace(config, epochs=1), checkpoint_path=checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    del state["config"]["lr_schedule"]
    torch.save(state, checkpoint)
    seen: list[EpochMetrics] = []
    train(config, on_epoch=seen.append, checkpoint_path=checkpoint)
    assert [m.epoch for m in seen] == [2]
