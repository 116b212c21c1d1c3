"""The course's experiment knobs: each test shows that turning the knob changes what happens."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import models
from service.training import data
from service.training.batching import EmptyEpochError, plan_epoch
from service.training.config import TrainConfig
from service.training.kfold import cross_validate, fold_indices
from service.training.loop import prepare_classifier, train
from service.training.lr_find import find_lr, lr_schedule, suggest
from service.training.optim import make_optimizer, param_groups
from service.training.regression import (
    load_tabular,
    per_example_loss,
    prepare_regressor,
    train_regression,
)

pytestmark = pytest.mark.timeout(120)

# The course's weight-decay experiment: 20 examples, 200 features, w ~ N(0, 1), lr 0.003, 100 epochs.
HIGHDIM = {
    "model": "linear",
    "dataset": "linreg-highdim",
    "lr": 0.003,
    "batch_size": 5,
    "epochs": 100,
    "init": "normal",
    "init_std": 1.0,
    "seed": 0,
}


def linear(**overrides) -> TrainConfig:
    return TrainConfig(**{**HIGHDIM, **overrides})


def weights(model: nn.Module) -> torch.Tensor:
    return model.weight.detach().reshape(-1)


# ------------------------------------------------------------------------ linear regression


def test_linear_regression_recovers_the_true_parameters() -> None:
    config = TrainConfig(
        model="linear", dataset="linreg-synthetic", lr=0.03, batch_size=10, epochs=3, seed=1
    )
    result = train_regression(config)
    report = result.report
    assert report["weights"] == pytest.approx([2.0, -3.4], abs=0.01)
    assert report["bias"] == pytest.approx(4.2, abs=0.01)
    assert report["weight_error_norm"] < 0.01 and abs(report["bias_error"]) < 0.01
    assert report["weight_norm"] == pytest.approx(math.hypot(2.0, -3.4), abs=0.02)
    assert result.test_loss < 1e-3  # noise 0.01: (1/2) 0.01^2 is the floor
    assert all(math.isnan(e.train_acc) and math.isnan(e.val_acc) for e in result.epochs)
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    # the l2 loss is half the squared error: val_mse, the yardstick across losses, is twice it
    assert result.val_mse == pytest.approx(2 * result.val_loss)


def test_val_mse_is_the_squared_error_whatever_the_loss() -> None:
    base = {"model": "linear", "dataset": "linreg-synthetic", "lr": 0.03, "batch_size": 10,
            "epochs": 1, "seed": 0}  # fmt: skip
    l1 = train_regression(TrainConfig(**base, loss="l1"))
    tabular = load_tabular("linreg-synthetic")
    # the validation split is the training set's held-out part: recompute on all of it and
    # compare orders of magnitude only (l1's val_loss is a mean absolute error, not squared)
    assert math.isfinite(l1.val_mse) and l1.val_mse != pytest.approx(l1.val_loss)
    pred = l1.model(tabular.train_x).detach().reshape(-1)
    whole = float(((pred - tabular.train_y.reshape(-1)) ** 2).mean())
    assert l1.val_mse == pytest.approx(whole, rel=0.5)


def test_weight_decay_shrinks_w_on_the_high_dimensional_set() -> None:
    # The course shows |w| of about 13 without weight decay and about 0.35 with lambda = 3.
    free = train_regression(linear(weight_decay=0))
    decayed = train_regression(linear(weight_decay=3))
    assert 10 < free.report["weight_norm"] < 17
    assert 0.2 < decayed.report["weight_norm"] < 0.6
    # w itself is in the result, all 200 of it, as the README says
    assert len(free.report["weights"]) == 200 and len(free.report["weight_error"]) == 200
    assert math.hypot(*free.report["weights"]) == pytest.approx(free.report["weight_norm"])
    # Without the penalty it fits its 18 training examples and fails the test set: overfitting.
    assert free.train_loss < 1e-3 < 10 < free.test_loss
    assert decayed.test_loss < free.test_loss / 100


def test_regression_losses() -> None:
    pred, y = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.5, 2.0, -3.0])
    assert per_example_loss(pred, y, "l2").tolist() == [0.125, 2.0, 4.5]
    assert per_example_loss(pred, y, "l1").tolist() == [0.5, 2.0, 3.0]
    # huber: squared (with the 1/2) inside |e| <= 1, absolute minus 1/2 beyond.
    assert per_example_loss(pred, y, "huber").tolist() == [0.125, 1.5, 2.5]


def test_loss_choice_changes_the_fit_under_outliers() -> None:
    # One wild target among clean ones pulls the squared loss's bias much more than l1's.
    data = load_tabular("linreg-synthetic")
    y = data.train_y.clone()
    y[:50] += 100.0
    fits = {}
    for loss in ("l2", "l1", "huber"):
        config = TrainConfig(model="linear", dataset="linreg-synthetic", loss=loss, lr=0.03,
                             batch_size=10, epochs=3, seed=0)  # fmt: skip
        run = prepare_regressor(config, data.train_x, y, torch.device("cpu"))
        for _ in range(3 * 100):
            idx = torch.randint(len(y), (10,), generator=run.generator)
            out = run.objective(idx)
            run.optimizer.zero_grad()
            out.objective.backward()
            run.optimizer.step()
        fits[loss] = float(run.model.bias.detach())
    assert abs(fits["l1"] - 4.2) < 0.5 < abs(fits["l2"] - 4.2)
    assert abs(fits["huber"] - 4.2) < abs(fits["l2"] - 4.2)


# -------------------------------------------------------------------------------- penalties


def test_decay_bias_shrinks_the_bias_too() -> None:
    base = {"model": "linear", "dataset": "linreg-synthetic", "lr": 0.03, "batch_size": 10,
            "epochs": 3, "weight_decay": 5.0}  # fmt: skip
    kept = train_regression(TrainConfig(**base))
    decayed = train_regression(TrainConfig(**base, decay_bias=True))
    assert kept.report["bias"] > 3.5  # the true bias is 4.2: not decayed
    assert decayed.report["bias"] < 1.5
    model = models.build_regression("linear", num_features=3)
    assert [len(g["params"]) for g in param_groups(model, 0.1)] == [1, 1]
    assert [len(g["params"]) for g in param_groups(model, 0.1, decay_bias=True)] == [2]


def test_l1_drives_more_weights_to_zero_than_l2() -> None:
    # Tuned so both end with about the same |w|2 (about 4): L1 zeroes many more coordinates.
    l1 = weights(train_regression(linear(l1=1.0)).model)
    l2 = weights(train_regression(linear(weight_decay=1.0)).model)
    none = weights(train_regression(linear()).model)
    assert abs(l1.norm() - l2.norm()) < 1.0
    near_zero = {name: int((w.abs() < 0.05).sum()) for name, w in
                 (("l1", l1), ("l2", l2), ("none", none))}  # fmt: skip
    assert near_zero["l1"] > 3 * near_zero["l2"] and near_zero["l2"] >= near_zero["none"]


# ------------------------------------------------------------------------------ last batch


def test_last_batch_policies() -> None:
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    kept, keep_bounds = plan_epoch(order, 4, "keep", gen)
    assert [e - s for s, e in keep_bounds] == [4, 4, 2] and torch.equal(kept, order)
    _, drop_bounds = plan_epoch(order, 4, "drop", gen)
    assert [e - s for s, e in drop_bounds] == [4, 4]  # fewer steps, two examples unseen
    padded, pad_bounds = plan_epoch(order, 4, "pad", gen)
    assert [e - s for s, e in pad_bounds] == [4, 4, 4]  # every batch full
    last = padded[8:12]
    assert torch.equal(last[:2], order[8:]) and set(last[2:].tolist()) <= set(order[:8].tolist())
    assert len(set(last.tolist())) == 4  # the fill does not repeat the batch's own examples
    with pytest.raises(EmptyEpochError, match="drop"):
        plan_epoch(order, 16, "drop", gen)
    small, small_bounds = plan_epoch(order, 16, "pad", gen)  # fewer examples than one batch
    assert small_bounds == [(0, 16)] and len(small) == 16


def test_last_batch_changes_the_steps_of_an_epoch() -> None:
    seen = {}
    for policy in ("keep", "drop", "pad"):
        config = TrainConfig(model="linear", dataset="linreg-synthetic", batch_size=64,
                             epochs=1, train_examples=100, val_fraction=0.1, last_batch=policy)  # fmt: skip
        result = train_regression(config)
        seen[policy] = result.epochs[0].examples_per_sec * 0  # the run works for every policy
        assert math.isfinite(result.train_loss)
    # 90 training examples, batches of 64: keep 64 + 26, drop 64, pad 64 + 64.
    data_order = torch.arange(90)
    sizes = {p: sum(e - s for s, e in plan_epoch(data_order, 64, p, torch.Generator())[1])
             for p in ("keep", "drop", "pad")}  # fmt: skip
    assert sizes == {"keep": 90, "drop": 64, "pad": 128}


# -------------------------------------------------------------------------- loss reduction


@pytest.mark.parametrize("model", ["linear", "softmax"])
def test_sum_reduction_scales_the_gradient_by_the_batch_size(model: str) -> None:
    gen = torch.Generator().manual_seed(0)
    features, targets = torch.randn(32, 5, generator=gen), torch.randn(32, generator=gen)
    images = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (32,), generator=gen)
    grads = {}
    for reduction in ("mean", "sum"):
        config = TrainConfig(model=model, dataset="synthetic", loss_reduction=reduction, seed=3)
        if model == "linear":
            run = prepare_regressor(config, features, targets, torch.device("cpu"))
        else:
            run = prepare_classifier(config, images, labels, 10, torch.device("cpu"))
        run.objective(torch.arange(32)).objective.backward()
        grads[reduction] = [p.grad.clone() for p in run.model.parameters()]
    for mean, total in zip(grads["mean"], grads["sum"], strict=True):
        torch.testing.assert_close(total, 32 * mean, rtol=1e-4, atol=1e-6)


# -------------------------------------------------------------------- architecture switches


def test_init_schemes_differ_in_weight_scale() -> None:
    def std(init: str, **kw) -> float:
        torch.manual_seed(0)
        model = models.build("mlp", init=init, **kw)
        return float(model.classifier[0].weight.detach().std())  # 784 -> 256

    xavier, normal, default = std("xavier"), std("normal", init_std=0.01), std("default")
    assert normal == pytest.approx(0.01, rel=0.05)
    assert xavier == pytest.approx(math.sqrt(2 / (784 + 256)), rel=0.05)  # about 0.044
    assert default == pytest.approx(1 / math.sqrt(3 * 784), rel=0.05)  # about 0.021
    assert models.build("mlp", init="normal").classifier[0].bias.abs().sum() == 0
    with pytest.raises(ValueError, match="init"):
        models.build("mlp", init="orthogonal")


def test_relu_max_lenet_learns_faster_than_the_course_sigmoid_avg() -> None:
    runs = {}
    for activation, pooling in (("sigmoid", "avg"), ("relu", "max")):
        config = TrainConfig(model="lenet", dataset="synthetic", activation=activation,
                             pooling=pooling, lr=0.1, batch_size=32, epochs=2,
                             train_examples=600, test_examples=200, seed=0)  # fmt: skip
        runs[activation] = train(config)
    assert runs["relu"].train_loss < runs["sigmoid"].train_loss
    assert runs["relu"].test_acc > runs["sigmoid"].test_acc + 0.1
    assert runs["relu"].model_kwargs["activation"] == "relu"  # served with the same switches
    assert runs["relu"].model_kwargs["pooling"] == "max"


# -------------------------------------------------------------------------------- lr finder


def test_lr_range_test_rises_at_the_end_and_suggests_an_lr_in_range() -> None:
    config = TrainConfig(model="softmax", dataset="synthetic", kind="lr_find", batch_size=32,
                         lr_min=1e-5, lr_max=100.0, steps=150, seed=0)  # fmt: skip
    curve = find_lr(config)
    assert len(curve.lrs) == len(curve.losses) >= 20
    assert curve.lrs == sorted(curve.lrs) and curve.lrs[0] == pytest.approx(1e-5)
    assert curve.stopped_early  # the loss blew up well before lr 100
    best = min(curve.losses)
    assert curve.losses[-1] > 2 * best  # the curve rises at the end
    assert curve.losses[curve.losses.index(best) // 2] > best  # and fell before its minimum
    assert 1e-5 <= curve.suggested_lr < curve.min_loss_lr <= 100.0
    assert curve.rule.startswith("steepest descent")


def test_the_suggestion_is_below_the_min_loss_lr() -> None:
    # The loss falls fastest into its minimum: the one-sided slope at the minimum (-0.8 a step)
    # beats the central one just before it (-0.45), but the minimum is no suggestion.
    lrs = lr_schedule(1e-4, 1.0, 20).tolist()
    losses = [2.3] * 10 + [2.2, 2.1, 2.0, 1.9, 1.8, 1.0, 3.0, 5.0, 9.0, 12.0]
    suggested, rule, min_loss_lr = suggest(lrs, losses)
    assert min_loss_lr == lrs[15] and suggested == lrs[14] < min_loss_lr
    assert rule == "steepest descent of the smoothed loss"


def test_a_minimum_at_the_last_point_is_searched_up_to_it() -> None:
    # A range test that never diverged: the loss falls to the end (the slope's span must stop
    # at the minimum, the last point, not one past it).
    lrs = lr_schedule(1e-6, 10.0, 200).tolist()
    losses = [2.3] * 60 + [2.3 - 0.013 * i for i in range(140)]
    suggested, rule, min_loss_lr = suggest(lrs, losses)
    assert min_loss_lr == lrs[-1] and suggested < min_loss_lr
    assert rule == "steepest descent of the smoothed loss"


@pytest.mark.parametrize(
    "losses",
    [
        [1.0, 1.5, 2.0, 3.0, 5.0, 9.0],  # minimum at the first point
        [2.0, 1.0, 1.5, 3.0, 5.0, 9.0],  # ... at the second
        [2.3, 2.2, 2.1, 2.0, 1.9, 3.0],  # 4 points before it, 5 needed
        [2.3, 2.0],  # a very short curve
        [2.3],
    ],
)
def test_too_few_points_before_the_minimum_fall_back_to_a_tenth(losses: list[float]) -> None:
    lrs = lr_schedule(1e-3, 1.0, len(losses)).tolist()
    suggested, rule, min_loss_lr = suggest(lrs, losses)
    assert min_loss_lr == lrs[losses.index(min(losses))]
    assert suggested == pytest.approx(min_loss_lr / 10) and rule.startswith("min-loss lr / 10")


def _flat_start(n: int, level: float, dip_at: int, dip: float) -> list[float]:
    """A flat start of the smoothed loss: a slow +-0.01 wobble, and one noise dip of ``dip``
    over 3 points at ``dip_at`` that comes back up."""
    losses = [level + 0.01 * math.sin(i / 3) for i in range(n)]
    for j, d in enumerate((dip / 2, dip, dip / 2)):
        losses[dip_at + j] -= d
    return losses


@pytest.mark.parametrize(
    ("level", "dip", "floor", "descent_from"),
    [
        (2.53, 0.04, 2.32, 1e-2),  # LeNet, steps 100: a dip like 2.447 -> 2.430 (at 7e-4)
        (2.42, 0.04, 2.19, 2e-3),  # softmax, weight decay 10: like 2.424 -> 2.384 (at 2.2e-5)
    ],
)
def test_a_noise_dip_in_the_flat_start_is_not_the_suggestion(
    level: float, dip: float, floor: float, descent_from: float
) -> None:
    lrs = lr_schedule(1e-6, 10.0, 200).tolist()
    dip_at = min(range(200), key=lambda i: abs(math.log(lrs[i] / (descent_from / 50))))
    losses = _flat_start(200, level, dip_at, dip)
    # The real descent: log-linear from descent_from down to floor at 20x that lr, then a rise.
    for i, lr in enumerate(lrs):
        if lr > descent_from:
            t = min(math.log(lr / descent_from) / math.log(20), 1.0)
            losses[i] = level - t * (level - floor) + max(0.0, lr / (20 * descent_from) - 1)
    suggested, rule, min_loss_lr = suggest(lrs, losses)
    assert rule == "steepest descent of the smoothed loss"
    assert descent_from < suggested < min_loss_lr


def test_a_flat_curve_says_it_has_no_descent() -> None:
    # softmax over lr 1e-6..1e-5: 2.53 -> 2.51, noise alone.
    lrs = lr_schedule(1e-6, 1e-5, 100).tolist()
    losses = _flat_start(100, 2.52, 60, 0.03)
    suggested, rule, min_loss_lr = suggest(lrs, losses)
    assert rule.startswith("min-loss lr / 10 (no descent in the range") and "raise lr_max" in rule
    assert "lr_min" not in rule
    assert suggested == pytest.approx(min_loss_lr / 10)


def test_a_curve_that_rises_from_the_start_says_to_lower_lr_min() -> None:
    # softmax over lr 1..100, stopped after 3 steps: 2.40, 4.61, 9.65. Raising lr_max cannot help.
    lrs = lr_schedule(1, 100, 20).tolist()[:3]
    suggested, rule, min_loss_lr = suggest(lrs, [2.40, 4.61, 9.65])
    assert rule.startswith("min-loss lr / 10 (no descent in the range")
    assert "lower lr_min" in rule and "raise lr_max" not in rule
    assert min_loss_lr == lrs[0] and suggested == pytest.approx(lrs[0] / 10)


@pytest.mark.skipif(
    not data._fashion_mnist_files(data.SYSTEM_DATA_DIR), reason="Fashion-MNIST is not installed"
)
def test_the_suggestion_lands_in_the_descent_on_fashion_mnist() -> None:
    # Sigmoid LeNet, 5000 examples, 200 steps, seed 1: the loss wobbles at 2.62-2.65 up to
    # lr 3e-3, then descends to 2.31 at lr 0.2. Neighbouring slopes suggested 1.2e-5, in the
    # flat start; the wide ones 0.03. (Seed 0: 3e-3 before, 0.025 now; the MLP (dropout 0.5)
    # descends 5e-3 -> 0.4: 0.12 now, 0.11 before.)
    config = TrainConfig(model="lenet", kind="lr_find", train_examples=5000, steps=200, seed=1)
    curve = find_lr(config)
    assert curve.rule == "steepest descent of the smoothed loss"
    assert 0.01 <= curve.suggested_lr <= 0.2 and curve.suggested_lr < curve.min_loss_lr


def test_lr_range_test_for_linear_regression() -> None:
    config = TrainConfig(model="linear", dataset="linreg-synthetic", kind="lr_find",
                         batch_size=10, lr_min=1e-4, lr_max=10.0, steps=100)  # fmt: skip
    curve = find_lr(config)
    assert 1e-4 <= curve.suggested_lr <= 10.0
    assert min(curve.losses) < curve.losses[0] / 10


# ----------------------------------------------------------------------------------- kfold


def test_fold_indices_partition_the_training_set() -> None:
    folds = fold_indices(100, 3, seed=0, train_examples=50)
    assert [len(f) for f in folds] == [17, 17, 16]
    assert sorted(torch.cat(folds).tolist()) == sorted(set(torch.cat(folds).tolist()))
    assert len(torch.cat(folds)) == 50


def test_kfold_trains_k_models_and_reports_mean_and_std() -> None:
    config = TrainConfig(model="softmax", dataset="synthetic", kind="kfold", k=3, lr=0.1,
                         batch_size=32, epochs=2, train_examples=300, seed=0)  # fmt: skip
    result = cross_validate(config)
    report = result.to_dict()
    assert report["k"] == 3 and [f["fold"] for f in report["folds"]] == [1, 2, 3]
    assert sum(f["val_examples"] for f in report["folds"]) == 300
    assert all(f["train_examples"] == 200 for f in report["folds"])
    accs = [f["val_acc"] for f in report["folds"]]
    assert report["val_acc_mean"] == pytest.approx(sum(accs) / 3)
    assert report["val_acc_std"] == pytest.approx(float(torch.tensor(accs).std(correction=0)))
    assert report["val_acc_mean"] > 0.2  # chance is 0.1
    assert all(len(f["val_loss_curve"]) == 2 for f in report["folds"])
    assert report["diagnosis"]["verdict"] in ("underfitting", "overfitting", "good fit")
    assert result.metrics()["val_acc"] == pytest.approx(report["val_acc_mean"])


def test_kfold_on_regression_reports_losses() -> None:
    config = TrainConfig(model="linear", dataset="linreg-synthetic", kind="kfold", k=2,
                         lr=0.03, batch_size=10, epochs=4)  # fmt: skip
    report = cross_validate(config).to_dict()
    assert report["val_acc_mean"] is None and report["val_loss_mean"] < 0.01
    assert len(report["folds"]) == 2
    mses = [f["val_mse"] for f in report["folds"]]
    assert mses == pytest.approx([2 * f["val_loss"] for f in report["folds"]])  # l2: half of it
    assert report["val_mse_mean"] == pytest.approx(sum(mses) / 2)


def test_optimizer_groups_follow_the_config() -> None:
    model = models.build("softmax")
    optimizer = make_optimizer(model, TrainConfig(model="softmax", weight_decay=0.1,
                                                  decay_bias=True))  # fmt: skip
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1]
