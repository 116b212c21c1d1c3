"""The diagnosis of a run from its curves, on hand-made curves."""

from __future__ import annotations

from service.training.config import TrainConfig
from service.training.diagnosis import diagnose
from service.training.diagnosis_advice import run_facts


def test_overfitting_when_validation_turns_back_up() -> None:
    train = [1.0, 0.6, 0.4, 0.25, 0.15, 0.08]
    val = [1.0, 0.7, 0.6, 0.62, 0.7, 0.8]
    verdict = diagnose(train, val)
    assert verdict is not None and verdict["verdict"] == "overfitting"
    assert verdict["best_val_loss"] == 0.6 and verdict["val_rise"] > 0.3
    assert verdict["gap"] > 0.7 and "weight decay" in verdict["reason"]


def test_the_training_loss_kept_falling_only_when_it_ends_below_its_value_at_the_best_epoch() -> (
    None
):
    # Validation best at epoch 3; the training loss then spiked and ended above its epoch-3
    # value, though its last epochs fell: the rise above the best is no "while it kept falling".
    train = [1.0, 0.4, 0.17, 0.15, 3.35, 0.6, 0.3, 0.215]
    val = [1.0, 0.7, 0.57, 0.6, 2.0, 1.2, 1.05, 1.0]
    verdict = diagnose(train, val)
    assert verdict is not None and verdict["best_val_epoch"] == 3
    assert "kept falling" not in verdict["reason"]
    falling = diagnose([1.0, 0.6, 0.4, 0.25, 0.15, 0.08], [1.0, 0.7, 0.6, 0.62, 0.7, 0.8])
    assert falling is not None and "kept falling (0.4 to 0.08)" in falling["reason"]


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


# The tester's second round (Fashion-MNIST, seed 0, unless stated): rows as the jobs ran.

SOFTMAX_FULL_10 = (  # softmax lr 0.1, 10 epochs, all 54 000 examples: the course's good fit
    [0.8163, 0.5845, 0.5363, 0.5102, 0.4931, 0.4819, 0.4723, 0.4641, 0.4574, 0.4525],
    [0.624, 0.5567, 0.5215, 0.5009, 0.484, 0.4742, 0.4729, 0.4708, 0.4813, 0.4638],
    [0.7336, 0.8086, 0.8228, 0.8301, 0.8357, 0.8384, 0.8411, 0.8427, 0.845, 0.8468],
    [0.794, 0.8123, 0.823, 0.827, 0.8343, 0.837, 0.8375, 0.8395, 0.8288, 0.8402],
)


def test_worse_than_guessing_is_underfitting_whatever_the_gap() -> None:
    # softmax lr 20, 5 epochs: a training loss 18x ln 10; validation 1.74x it and rising.
    train = [174.4315, 75.2499, 56.3842, 54.4019, 42.3969]
    val = [39.7391, 37.7158, 67.3053, 43.7478, 73.717]
    accs = [0.4823, 0.6846, 0.7011, 0.7068, 0.7447], [0.647, 0.625, 0.627, 0.657, 0.634]
    facts = run_facts(TrainConfig(model="softmax", lr=20.0))
    verdict = diagnose(train, val, *accs, num_classes=10, facts=facts)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    # 74% right is not worse than guessing: the mean loss is the wrong answers' huge losses
    assert "worse than guessing" not in verdict["reason"], verdict
    assert (
        "although training accuracy is 0.745: its wrong answers carry huge losses"
        in (verdict["reason"])
    )
    assert "no overfitting" in verdict["reason"]
    assert verdict["reason"].endswith("lower the learning rate (now 20)")  # no penalty is set


def test_a_sum_reduced_run_that_fits_is_not_called_worse_than_guessing() -> None:
    # The tester's job: softmax, loss_reduction sum, 3 epochs on the synthetic set. Training
    # accuracy 0.931 and validation 0.995, but early batches' huge losses lift the epoch's mean.
    facts = run_facts(TrainConfig(model="softmax", loss_reduction="sum"))
    verdict = diagnose([9.1, 6.0, 4.17], [0.2, 0.01, 0.0046], [0.85, 0.9, 0.931],
                       [0.97, 0.99, 0.995], num_classes=10, facts=facts)  # fmt: skip
    assert verdict is not None and "worse than guessing" not in verdict["reason"], verdict
    assert "steps that are too large" in verdict["reason"]
    assert verdict["reason"].endswith(
        "lower the learning rate (now 0.1), or use loss_reduction mean (sum makes each step 256 "
        "times the mean's)"
    )


def test_a_two_class_model_at_chance_cannot_overfit() -> None:
    # An upload of 9 examples, 2 classes, 1 epoch: loss 0.64 is within 10% of ln 2 = 0.693.
    verdict = diagnose([0.64], [0.98], [0.5], [0.0], num_classes=2)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    assert "within 10% of ln 2" in verdict["reason"]
    assert "validation accuracy 0.000 is at or below chance (0.500)" in verdict["reason"]
    # kfold k 10 on it: the mean training loss 0.99 is above ln 2.
    verdict = diagnose([0.99], [0.81], [0.5], [0.3], num_classes=2)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    assert "worse than guessing" in verdict["reason"]


def test_the_loss_ratio_prints_two_decimals() -> None:
    verdict = diagnose([0.6, 0.45, 0.44, 0.44], [0.6, 0.65, 0.66, 0.669])
    assert verdict is not None and verdict["verdict"] == "overfitting", verdict
    assert "is 1.52x the training loss" in verdict["reason"]


def test_high_training_error_is_underfitting_and_a_course_fit_stays_good() -> None:
    # softmax, weight decay 5, lr 0.1, 3 epochs on all of Fashion-MNIST: 1.964 = 85 % of ln 10.
    train, val = [1.9907, 1.9681, 1.9636], [1.9758, 1.9427, 1.9507]
    accs = [0.4008, 0.4414, 0.4405], [0.3278, 0.4598, 0.2713]
    facts = run_facts(TrainConfig(model="softmax", weight_decay=5.0, lr=0.1))
    verdict = diagnose(train, val, *accs, num_classes=10, facts=facts)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    assert "training error is high" in verdict["reason"] and "85% of" in verdict["reason"]
    assert "a weaker penalty (weight decay 5)" in verdict["reason"]
    assert "dropout" not in verdict["reason"]
    assert abs(verdict["train_loss_share_of_uniform"] - 0.853) < 1e-3
    verdict = diagnose(*SOFTMAX_FULL_10, num_classes=10)  # 0.4525 = 20 % of ln 10
    assert verdict is not None and verdict["verdict"] == "good fit", verdict


def test_a_low_training_accuracy_is_high_error_even_below_the_loss_bar() -> None:
    # MLP on 100 examples, dropout 0, batch 16, lr 0.5, 40 epochs: the loss swings between 1.5
    # and 2.8 and ends at 68 % of ln 10; training accuracy 0.31 is 23 % of the way from chance.
    train = [5.921, 6.4944, 2.8812, 2.2825, 2.099, 1.62, 2.05, 1.71, 1.58]
    val = [2.698, 2.7027, 2.2778, 2.0976, 2.0336, 1.66, 2.11, 1.74, 1.62]
    train_acc = [0.11, 0.17, 0.14, 0.23, 0.31, 0.29, 0.24, 0.27, 0.31]
    val_acc = [0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    facts = run_facts(TrainConfig(model="mlp", lr=0.5, dropout=0.0))
    verdict = diagnose(train, val, train_acc, val_acc, num_classes=10, facts=facts)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    assert "training accuracy 0.310 is 23% of the way from chance" in verdict["reason"]
    assert "a lower learning rate (now 0.5), as the training loss rose 27%" in verdict["reason"]


def test_one_epoch_is_no_good_fit_when_the_error_is_high_and_provisional_otherwise() -> None:
    # softmax on the synthetic set, 1 epoch: loss 2.00 (87 % of ln 10), accuracy 0.41.
    verdict = diagnose([2.0028], [1.6243], [0.4139], [0.48], num_classes=10)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    # softmax on 10 000 examples, 1 epoch: loss 1.30 (57 %), accuracy 0.58: nothing argues.
    verdict = diagnose([1.3036], [0.9293], [0.5847], [0.703], num_classes=10)
    assert verdict is not None and verdict["verdict"] == "good fit", verdict
    assert "one epoch shows no trend" in verdict["reason"] and "provisional" in verdict["reason"]


def test_an_accuracy_gap_against_the_losses_is_no_overfitting() -> None:
    # One epoch: validation loss 1.69 below training loss 1.95, accuracies 0.40 vs 0.235.
    verdict = diagnose([1.95], [1.69], [0.40], [0.235], num_classes=10)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    assert "points above" not in verdict["reason"]
    # A model that fits: 12 points of accuracy gap, but validation loss below training loss.
    verdict = diagnose(
        [0.45, 0.44, 0.44], [0.40, 0.40, 0.40], [0.92, 0.93, 0.93], [0.81, 0.81, 0.81], 10
    )
    assert verdict is not None and verdict["verdict"] == "good fit", verdict


def test_the_stuck_advice_names_the_causes_that_apply() -> None:
    # softmax, weight decay 100, lr 0.01, 3 epochs: 2.277 = 98.9 % of ln 10.
    train, val = [2.2825, 2.2772, 2.2774], [2.2791, 2.2791, 2.2828]
    accs = [0.2468, 0.2543, 0.2338], [0.094, 0.159, 0.094]
    facts = run_facts(TrainConfig(model="softmax", weight_decay=100.0, lr=0.01))
    verdict = diagnose(train, val, *accs, num_classes=10, facts=facts)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    assert "the penalty (weight decay 100)" in verdict["reason"]
    assert "ReLU" not in verdict["reason"] and "(now 0.01)" in verdict["reason"]
    # MLP at lr 1e-6, nothing set: the lr, and dead ReLUs (an MLP has them); no penalty.
    flat, accs_flat = [2.3133, 2.3132, 2.3132], [0.1739, 0.1739, 0.1739]
    facts = run_facts(TrainConfig(model="mlp", lr=1e-6, dropout=0.0))
    verdict = diagnose(flat, flat, accs_flat, accs_flat, num_classes=10, facts=facts)
    assert verdict is not None and "dead ReLUs" in verdict["reason"], verdict
    assert "penalty" not in verdict["reason"] and "regularisation" not in verdict["reason"]
    # softmax at lr 1e-4, nothing set: still within 10 % of ln 10; the lr, not regularisation.
    train = [2.25, 2.21, 2.18]
    facts = run_facts(TrainConfig(model="softmax", lr=1e-4))
    verdict = diagnose(train, train, [0.3, 0.32, 0.33], [0.3, 0.32, 0.33], 10, facts)
    assert verdict is not None and verdict["verdict"] == "underfitting", verdict
    assert verdict["reason"].endswith(
        "a higher learning rate (now 0.0001), a longer run or a larger model"
    )


def test_the_overfitting_advice_fits_the_job() -> None:
    # MLP, dropout 0, lr 0.1, 10 epochs on 10 000 examples: validation turned up after epoch 9.
    train = [1.2947, 0.8089, 0.7031, 0.6477, 0.5929, 0.5691, 0.5425, 0.5218, 0.5009, 0.4888]
    val = [0.8671, 0.7023, 0.8022, 0.6883, 0.6969, 0.5899, 0.6985, 0.6596, 0.539, 0.7176]
    facts = run_facts(TrainConfig(model="mlp", lr=0.1, dropout=0.0, weight_decay=0.01))
    verdict = diagnose(train, val, facts=facts)
    assert verdict is not None and verdict["verdict"] == "overfitting", verdict
    assert verdict["reason"].endswith(
        "more data, stronger weight decay (now 0.01), dropout or fewer epochs (validation was "
        "best at epoch 9)"
    )
    assert verdict["best_val_epoch"] == 9
    # Validation did not turn up, and softmax has no dropout: neither is suggested.
    facts = run_facts(TrainConfig(model="softmax"))
    verdict = diagnose([0.5, 0.45], [0.55, 0.52], [0.95, 0.97], [0.8, 0.81], 10, facts)
    assert verdict is not None and verdict["verdict"] == "overfitting", verdict
    assert verdict["reason"].endswith("more data or weight decay")
    # Without the job's knobs: dropout only where the model has it.
    verdict = diagnose([0.5, 0.45], [0.55, 0.52], [0.95, 0.97], [0.8, 0.81], 10)
    assert verdict is not None and "dropout where the model has it" in verdict["reason"]
    assert "fewer epochs" not in verdict["reason"]


def test_one_epoch_uptick_in_a_falling_trend_is_not_a_rising_loss() -> None:
    # MLP lr 0.5, 8 epochs on 10 000 examples: 0.5827 -> 0.4827 -> 0.5093, up 5.5 % in the last
    # epoch but down 5 % a epoch over the window; that epoch's validation loss is the run's best.
    train = [1.7395, 1.1134, 0.7707, 0.6489, 0.5989, 0.5827, 0.4827, 0.5093]
    val = [1.2269, 0.9366, 0.80, 0.74, 0.70, 0.6768, 0.62, 0.60]
    train_acc = [0.411, 0.614, 0.708, 0.756, 0.774, 0.788, 0.80, 0.81]
    val_acc = [0.597, 0.647, 0.70, 0.731, 0.753, 0.76, 0.78, 0.785]
    verdict = diagnose(train, val, train_acc, val_acc, num_classes=10)
    assert verdict is not None and verdict["verdict"] == "good fit", verdict
    assert 0.04 < verdict["train_loss_trend_per_epoch"] < 0.06
    assert "overshoot" not in verdict["reason"]


def test_run_facts_from_a_job() -> None:
    softmax = run_facts(TrainConfig(model="softmax", lr=0.1, weight_decay=0.5))
    assert (softmax.takes_dropout, softmax.relu, softmax.weight_decay) == (False, False, 0.5)
    assert run_facts(TrainConfig(model="mlp")).relu is True
    assert run_facts(TrainConfig(model="lenet")).relu is False  # the course's sigmoid
    assert run_facts(TrainConfig(model="lenet", activation="relu")).relu is True
    unknown = run_facts(TrainConfig(model="nosuch"))
    assert (unknown.takes_dropout, unknown.relu) == (None, None)
