"""The diagnosis of a run from its curves, on hand-made curves."""

from __future__ import annotations

from service.training.diagnosis import diagnose


def test_overfitting_when_validation_turns_back_up() -> None:
    train = [1.0, 0.6, 0.4, 0.25, 0.15, 0.08]
    val = [1.0, 0.7, 0.6, 0.62, 0.7, 0.8]
    verdict = diagnose(train, val)
    assert verdict is not None and verdict["verdict"] == "overfitting"
    assert verdict["best_val_loss"] == 0.6 and verdict["val_rise"] > 0.3
    assert verdict["gap"] > 0.7 and "weight decay" in verdict["reason"]


def test_overfitting_from_the_accuracy_gap() -> None:
    verdict = diagnose([0.5, 0.45], [0.55, 0.52], [0.95, 0.97], [0.8, 0.81], num_classes=10)
    assert verdict is not None and verdict["verdict"] == "overfitting"
    assert verdict["acc_gap"] > 0.15 and "points above" in verdict["reason"]


def test_underfitting_while_the_training_loss_still_falls() -> None:
    train = [2.0, 1.6, 1.3, 1.05]
    val = [2.0, 1.62, 1.32, 1.08]
    verdict = diagnose(train, val)
    assert verdict is not None and verdict["verdict"] == "underfitting"
    assert verdict["train_loss_drop_per_epoch"] > 0.1 and "train longer" in verdict["reason"]


def test_underfitting_near_chance() -> None:
    flat = [2.3, 2.3, 2.3]
    verdict = diagnose(flat, flat, [0.1, 0.11, 0.1], [0.1, 0.1, 0.1], num_classes=10)
    assert verdict is not None and verdict["verdict"] == "underfitting"
    assert "near chance" in verdict["reason"]
    # At ln 10 the net scores every class alike: too low an lr, or one that killed it.
    assert "ln 10" in verdict["reason"] and "lr_find" in verdict["reason"]


def test_near_chance_but_moving_keeps_the_plain_advice() -> None:
    train = [2.2, 2.0, 1.9]
    verdict = diagnose(train, train, [0.12, 0.13, 0.14], [0.12, 0.13, 0.14], num_classes=10)
    assert verdict is not None and verdict["verdict"] == "underfitting"
    assert "near chance" in verdict["reason"] and "ln 10" not in verdict["reason"]
    assert "train longer" in verdict["reason"]


def test_good_fit_when_both_level_off_together() -> None:
    train = [0.9, 0.5, 0.41, 0.4, 0.399, 0.399]
    val = [0.95, 0.55, 0.45, 0.44, 0.44, 0.44]
    train_acc = [0.7, 0.85, 0.88, 0.88, 0.88, 0.88]
    val_acc = [0.7, 0.84, 0.86, 0.86, 0.86, 0.86]
    verdict = diagnose(train, val, train_acc, val_acc, num_classes=10)
    assert verdict is not None and verdict["verdict"] == "good fit"
    assert abs(verdict["gap"] - 0.041) < 1e-9


def test_no_finite_epoch_no_verdict_and_one_epoch_has_no_trend() -> None:
    assert diagnose([], []) is None
    assert diagnose([float("nan")], [float("nan")]) is None
    single = diagnose([0.5], [0.52])
    assert single is not None and single["train_loss_drop_per_epoch"] is None
    assert single["verdict"] == "good fit" and "one epoch" in single["reason"]


def test_a_run_that_converged_in_its_first_epoch_is_a_good_fit() -> None:
    # Linear regression at the noise floor: epoch 1's mean loss includes the descent.
    train, val = [1.9, 5.4e-5, 5.4e-5], [4.9e-5, 4.9e-5, 4.9e-5]
    verdict = diagnose(train, val)
    assert verdict is not None and verdict["verdict"] == "good fit", verdict
    assert abs(verdict["train_loss_drop_per_epoch"]) < 0.01
    # As the README's job ran: epoch 2's mean still held some of the descent, so the loss fell
    # 87% from epoch 2 to 3, but that was 0.02% of the run's whole fall.
    train, val = [1.831, 4.04e-4, 5.22e-5], [4.93e-3, 6.21e-5, 6.01e-5]
    verdict = diagnose(train, val)
    assert verdict is not None and verdict["verdict"] == "good fit", verdict
    # A 10-epoch LeNet still learning: 4% a epoch, 1.1% of its whole fall in the last epoch.
    lenet = [2.3, 1.2, 0.9, 0.75, 0.65, 0.6, 0.56, 0.53, 0.5, 0.48]
    assert diagnose(lenet, [x + 0.02 for x in lenet])["verdict"] == "underfitting"  # type: ignore[index]
