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


# The tester's jobs (softmax on synthetic, 10 classes, seed 1), their metric rows as they ran.


def test_a_levelled_loss_at_ln_classes_is_underfitting_whatever_the_accuracy() -> None:
    # lr 1e-6, 3 epochs: nothing learns. Training accuracy 0.17 is not below 1.5 x chance, but
    # the loss sits at ln 10: the multi-epoch job agrees with the 1-epoch one.
    train, val = [2.3133, 2.3132, 2.3132], [2.2843, 2.2843, 2.2843]
    accs_train, accs_val = [0.1739, 0.1739, 0.1739], [0.18, 0.18, 0.18]
    for epochs in (3, 1):
        verdict = diagnose(
            train[:epochs], val[:epochs], accs_train[:epochs], accs_val[:epochs], num_classes=10
        )
        assert verdict is not None and verdict["verdict"] == "underfitting", verdict
        assert "ln 10" in verdict["reason"] and "levelled off" not in verdict["reason"]
        assert abs(verdict["uniform_loss"] - 2.302585) < 1e-6 and verdict["chance_acc"] == 0.1


def test_a_rising_training_loss_is_not_levelled_off() -> None:
    # l1 1000, 2 epochs: the training loss (the data loss alone, averaged over the epoch's
    # steps) climbs while the weights swing; validation, measured after each epoch, stays low.
    verdict = diagnose([685.62, 2514.05], [1.7849, 2.714], [0.2111, 0.3867], [0.535, 0.485], 10)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    assert verdict["train_loss_drop_per_epoch"] < -2
    assert "rose 267%" in verdict["reason"] and "levelled off" in verdict["reason"]
    assert "lower the learning rate" in verdict["reason"] and "penalty" in verdict["reason"]
    assert "926x the validation loss" in verdict["reason"]
    # Regression too: a climbing loss is no fit.
    assert diagnose([0.5, 0.6, 0.9], [0.5, 0.6, 0.9])["verdict"] == "underfitting"  # type: ignore[index]


def test_a_noise_floor_wobble_upwards_is_not_a_rising_loss() -> None:
    # Up 20 % from epoch 2 to 3, but by 0.0003 % of the run's fall from 1.9.
    verdict = diagnose([1.9, 5.0e-5, 6.0e-5], [5.0e-5, 5.0e-5, 5.5e-5])
    assert verdict is not None and verdict["verdict"] == "good fit", verdict


def test_strong_weight_decay_near_chance_is_underfitting_not_overfitting() -> None:
    # weight_decay 5, 3 epochs: the losses stay near ln 10 = 2.303 and validation accuracy near
    # chance; the training accuracy (argmax of near-equal scores) is no fit to overfit.
    train, val = [2.1339, 2.0997, 2.0955], [2.2126, 2.2174, 2.1241]
    verdict = diagnose(train, val, [0.4644, 0.5956, 0.5678], [0.245, 0.22, 0.14], 10)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    assert verdict["acc_gap"] > 0.4 and "weight decay or dropout, or fewer" not in verdict["reason"]
    assert "within 10% of ln 10" in verdict["reason"] and "near chance" in verdict["reason"]
    assert "less regularisation" in verdict["reason"]
    # Another seed's run: validation accuracy 0.2, not near chance; the loss alone tells.
    verdict = diagnose(
        [2.14, 2.10, 2.11], [2.20, 2.14, 2.20], [0.42, 0.50, 0.45], [0.25, 0.16, 0.2], 10
    )
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    assert "less regularisation" in verdict["reason"]


def test_a_training_loss_above_ln_classes_does_worse_than_guessing() -> None:
    verdict = diagnose([40.0], [3.1], [0.3], [0.35], num_classes=10)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    assert (
        "worse than guessing" in verdict["reason"]
        and "lower the learning rate" in verdict["reason"]
    )
