"""What POST /jobs and POST /sweeps refuse before anything is written: a job whose dataset is too
small for its folds or for one full batch, sweeps that cannot be ranked, and the exact default
lr. The sizes are checked against what training itself does with them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import torch
from pydantic import ValidationError

import models
from service.api.catalog import catalog
from service.api.sweeps import _resolve_points
from service.datasets_store import StoredFacts
from service.errors import InvalidRequest
from service.schemas import JobCreate, SweepCreate, builtin_sizes, default_lr
from service.training.batching import EmptyEpochError, plan_epoch
from service.training.config import MOMENTUM
from service.training.data import SYNTHETIC_TRAIN, split_indices
from service.training.kfold import fold_indices


def problems(body: dict[str, Any], stored: StoredFacts | None = None) -> list[tuple[str, str]]:
    return JobCreate.model_validate(body).resolve(stored)[1]


def training_sets(body: dict[str, Any], n: int, seed: int) -> list[torch.Tensor]:
    """The training sets the job would run epochs over, from training's own split functions
    (every round's for kfold), with a seed of the job's own."""
    train_examples = body.get("train_examples")
    if body.get("kind") == "kfold":
        folds = fold_indices(n, body.get("k", 5), seed=seed, train_examples=train_examples)
        return [torch.cat([f for j, f in enumerate(folds) if j != i]) for i in range(len(folds))]
    train, _ = split_indices(
        n, seed=seed, val_fraction=body.get("val_fraction", 0.1), train_examples=train_examples
    )
    return [train]


def drop_plans(sets: list[torch.Tensor], batch_size: int) -> bool:
    """Whether every epoch plan of last_batch 'drop' has a batch (training's plan_epoch)."""
    try:
        for order in sets:
            plan_epoch(order, batch_size, "drop", torch.Generator().manual_seed(0))
    except EmptyEpochError:
        return False
    return True


SIZE_CASES = [
    # body, training-set size, the largest batch that still makes a full batch
    ({"model": "mlp", "dataset": "synthetic", "train_examples": 100}, SYNTHETIC_TRAIN, 90),
    ({"model": "mlp", "dataset": "synthetic", "train_examples": 101, "val_fraction": 0.25},
     SYNTHETIC_TRAIN, 76),
    ({"model": "mlp", "dataset": "synthetic"}, SYNTHETIC_TRAIN, 1800),
    ({"model": "softmax", "kind": "lr_find", "dataset": "synthetic", "train_examples": 100},
     SYNTHETIC_TRAIN, 90),
    ({"model": "softmax", "kind": "kfold", "k": 3, "dataset": "synthetic", "train_examples": 100},
     SYNTHETIC_TRAIN, 66),
    ({"model": "softmax", "kind": "kfold", "dataset": "synthetic", "train_examples": 12},
     SYNTHETIC_TRAIN, 9),  # k 5: folds of 3, 3, 2, 2, 2
    ({"model": "linear", "dataset": "linreg-highdim"}, 20, 18),
    ({"model": "linear", "dataset": "linreg-highdim", "train_examples": 500}, 20, 18),  # all 20
    ({"model": "linear", "dataset": "linreg-highdim", "kind": "kfold", "k": 7}, 20, 17),
    ({"model": "linear", "dataset": "linreg-synthetic", "kind": "lr_find"}, 1000, 900),
]  # fmt: skip


@pytest.mark.parametrize(("body", "n", "largest"), SIZE_CASES)
def test_drop_is_refused_exactly_where_training_would_have_no_batch(
    body: dict[str, Any], n: int, largest: int
) -> None:
    assert builtin_sizes(body["dataset"])[0] == n
    sets = training_sets(body, n, seed=12345)
    assert drop_plans(sets, largest) and not drop_plans(sets, largest + 1)
    drop = {**body, "last_batch": "drop"}
    assert problems({**drop, "batch_size": largest}) == []
    [(field, reason)] = problems({**drop, "batch_size": largest + 1})
    assert field == "batch_size"
    assert f"batch_size {largest + 1}" in reason and f" {largest} are left" in reason
    for policy in ("keep", "pad"):  # a short batch is fine there
        assert problems({**body, "last_batch": policy, "batch_size": 4096}) == []


def test_kfold_needs_k_examples() -> None:
    [(field, reason)] = problems(
        {"model": "softmax", "kind": "kfold", "k": 10, "train_examples": 5}
    )
    assert field == "k" and "10 folds" in reason and "got 5" in reason
    [(field, reason)] = problems({"model": "softmax", "kind": "kfold", "train_examples": 3})
    assert field == "k" and "got 3" in reason and "defaults to 5" in reason
    assert problems({"model": "softmax", "kind": "kfold", "k": 10, "train_examples": 10}) == []
    # The same limit against the dataset itself (an upload of 4 training examples)
    [(field, reason)] = problems(
        {"model": "mlp", "kind": "kfold", "dataset": "ds_0123456789abcdef"},
        StoredFacts("image", 4),
    )
    assert field == "k" and "got 4" in reason and "ds_0123456789abcdef" in reason


def test_uploaded_datasets_are_checked_against_their_stored_size() -> None:
    image, table = StoredFacts("image", 48), StoredFacts("regression", 160)
    images = {"model": "lenet", "dataset": "ds_0123456789abcdef", "last_batch": "drop"}
    assert problems({**images, "batch_size": 43}, image) == []  # 48 - round(4.8)
    [(field, reason)] = problems({**images, "batch_size": 44}, image)
    assert field == "batch_size" and "of the 48 training examples" in reason
    rows = {"model": "linear", "dataset": "ds_0123456789abcdef", "last_batch": "drop"}
    assert problems({**rows, "batch_size": 144}, table) == []
    assert [f for f, _ in problems({**rows, "batch_size": 145}, table)] == ["batch_size"]
    # no such upload: that is the one problem, with no guess at its size
    assert [f for f, _ in problems({**images, "batch_size": 4096})] == ["dataset"]


def test_fashion_mnist_is_the_standard_sixty_thousand() -> None:
    assert builtin_sizes("fashion-mnist") == (60_000, 10_000)
    body = {"model": "mlp", "kind": "kfold", "k": 10, "last_batch": "drop", "batch_size": 4096}
    assert problems(body) == []


def test_default_lr_is_the_exact_decimal() -> None:
    for name in models.list_models() + models.list_regression_models():
        spec = models.get_spec(name)
        exact = float(Decimal(repr(spec.lr)) * (1 - Decimal(repr(MOMENTUM))))
        assert default_lr(name, "momentum") == exact, name
        assert default_lr(name, "sgd") == spec.lr and default_lr(name, "adam") == spec.adam_lr
    assert default_lr("lenet", "momentum") == 0.09
    assert default_lr("alexnet", "momentum") == 0.001
    config, _ = JobCreate(model="lenet", optimizer="momentum").resolve()
    assert config.lr == 0.09
    shown = {m["name"]: m for m in catalog()["models"]}  # type: ignore[union-attr]
    assert shown["lenet"]["momentum_lr"] == 0.09 and shown["alexnet"]["momentum_lr"] == 0.001


def sweep_fields(body: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidRequest) as caught:
        _resolve_points(SweepCreate.model_validate(body), session=None)
    return [field for field, _ in caught.value.fields]


def test_lr_find_sweeps_are_refused_and_kfold_sweeps_kept() -> None:
    assert sweep_fields(
        {"base": {"model": "mlp", "kind": "lr_find"}, "grid": {"steps": [20, 30]}}
    ) == ["base.kind"]
    assert sweep_fields({"base": {"model": "mlp"}, "grid": {"kind": ["train", "lr_find"]}}) == [
        "grid.kind"
    ]
    # kfold points are ranked by their mean validation score (the job's val_acc / val_loss)
    kfold = {"base": {"model": "softmax", "kind": "kfold"}, "grid": {"k": [2, 3]}}
    assert [c.k for c in _resolve_points(SweepCreate.model_validate(kfold), session=None)] == [
        2,
        3,
    ]


def test_sweep_points_get_the_size_checks() -> None:
    base = {"model": "softmax", "dataset": "synthetic", "last_batch": "drop", "train_examples": 100}
    assert sweep_fields({"base": base, "grid": {"batch_size": [64, 128]}}) == ["grid.batch_size"]
    kfold = {"model": "softmax", "kind": "kfold", "train_examples": 5}
    assert sweep_fields({"base": kfold, "grid": {"k": [2, 10]}}) == ["grid.k"]


# Each integer field of a job with a value in its range.
INTEGER_FIELDS = {"batch_size": 32, "epochs": 2, "seed": 7, "resize": 28, "train_examples": 100,
                  "test_examples": 10, "priority": 3, "devices": 2, "k": 3, "steps": 20}  # fmt: skip


@pytest.mark.parametrize(("name", "value"), INTEGER_FIELDS.items())
def test_integer_fields_take_json_integers_only(name: str, value: int) -> None:
    """256.0 is a float in JSON: refused as "2" and true are, as predict refuses mc_dropout 2.0."""
    with pytest.raises(ValidationError) as caught:
        JobCreate.model_validate({"model": "lenet", name: float(value)})
    [error] = caught.value.errors()
    assert error["loc"] == (name,) and f"must be an integer, not {value}.0" in error["msg"]
    assert getattr(JobCreate.model_validate({"model": "lenet", name: value}), name) == value


def test_a_kinds_unused_fields_take_null_as_left_out() -> None:
    """GET /jobs shows a field that the job's kind does not use as null; sent back as it is, a
    null is the field left out, for every such field alike (k once was, steps was not)."""
    nulls = [
        {"model": "softmax", "k": None},
        {"model": "softmax", "steps": None, "lr_min": None, "lr_max": None},
        {"model": "mlp", "kind": "lr_find", "lr": None, "test_examples": None, "k": None},
        {"model": "softmax", "kind": "kfold", "test_examples": None, "steps": None},
    ]
    for body in nulls:
        assert problems(body) == [], body
    assert problems({"model": "softmax", "steps": 20}) == [("steps", "only for kind 'lr_find'")]
    assert problems({"model": "softmax", "k": 3}) == [("k", "only for kind 'kfold'")]
    lr_find = {"model": "mlp", "kind": "lr_find", "lr": 0.1}
    assert [field for field, _ in problems(lr_find)] == ["lr"]


def test_number_fields_take_json_integers_too() -> None:
    job = JobCreate.model_validate({"model": "lenet", "lr": 1, "weight_decay": 0, "dropout": 0})
    assert job.lr == 1 and job.weight_decay == 0


def test_sweep_points_take_json_integers_only() -> None:
    base = {"model": "softmax", "dataset": "synthetic"}
    assert sweep_fields({"base": {**base, "epochs": 2.0}, "grid": {"lr": [0.1]}}) == ["base.epochs"]
    assert sweep_fields({"base": base, "grid": {"epochs": [1, 2.0]}}) == ["grid.epochs"]


def test_examples_of_the_whole_set_or_more_are_stored_as_all() -> None:
    """The run trains on the same examples for the set's size, more, or null (all): the job
    says so, and a sweep's points differing only there are one job."""

    def stored_train_examples(body: dict[str, Any], stored: StoredFacts | None = None) -> Any:
        config, found = JobCreate.model_validate(body).resolve(stored)
        assert found == []
        return config.train_examples

    synthetic = {"model": "softmax", "dataset": "synthetic"}
    for asked in (SYNTHETIC_TRAIN, SYNTHETIC_TRAIN + 1, 100_000, None):
        assert stored_train_examples({**synthetic, "train_examples": asked}) is None
    assert stored_train_examples({**synthetic, "train_examples": SYNTHETIC_TRAIN - 1}) == 1999
    upload = {"model": "mlp", "dataset": "ds_0123456789abcdef"}
    assert stored_train_examples({**upload, "train_examples": 50}, StoredFacts("image", 40)) is None
    assert stored_train_examples({**upload, "train_examples": 30}, StoredFacts("image", 40)) == 30

    # the test set likewise (synthetic has 500, fashion-mnist 10,000, an upload its own)
    def stored_test_examples(body: dict[str, Any], stored: StoredFacts | None = None) -> Any:
        config, found = JobCreate.model_validate(body).resolve(stored)
        assert found == []
        return config.test_examples

    assert stored_test_examples({**synthetic, "test_examples": 500}) is None
    assert stored_test_examples({**synthetic, "test_examples": 499}) == 499
    assert stored_test_examples({"model": "softmax", "test_examples": 10**6}) is None
    facts = StoredFacts("image", 40, 10)
    assert stored_test_examples({**upload, "test_examples": 10}, facts) is None
    assert stored_test_examples({**upload, "test_examples": 9}, facts) == 9
    # the training itself: the same examples either way
    n = SYNTHETIC_TRAIN
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            split_indices(n, seed=3, val_fraction=0.1, train_examples=None),
            split_indices(n, seed=3, val_fraction=0.1, train_examples=n),
            strict=True,
        )
    )


def test_a_negative_zero_is_stored_as_zero() -> None:
    job = JobCreate.model_validate({"model": "lenet", "weight_decay": -0.0, "dropout": -0.0})
    config, found = job.resolve(None)
    assert not found
    assert str(config.weight_decay) == "0.0" and str(config.dropout) == "0.0"  # not "-0.0"
