"""The course's experiments as jobs, through the live server on SQLite and PostgreSQL:
linear regression, the architecture switches, the lr range test, k-fold, and sweeps."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import httpx
import pytest

from service import queue
from service.api.sweeps import ORDER_CLASSIFICATION, ORDER_REGRESSION, ORDER_REGRESSION_MSE
from service.db import make_engine
from service.schemas import MAX_SWEEP_POINTS
from service.tables import JobStatus
from tests.conftest import LiveServer, wait_for_status
from tests.integration.helpers import raw_post

pytestmark = pytest.mark.timeout(240)
QUICK = {"dataset": "synthetic", "batch_size": 32, "train_examples": 200, "test_examples": 50}
TRAIN_ONLY = {k: v for k, v in QUICK.items() if k != "test_examples"}  # lr_find, kfold: no test set


def test_each_kind_runs_and_reports(database_url: str, start_server) -> None:
    server = start_server(database_url, workers=2)
    client = httpx.Client(base_url=server.url, timeout=60)
    bodies = {
        "linear": {"model": "linear", "dataset": "linreg-synthetic", "loss": "huber",
                   "lr": 0.1, "batch_size": 10, "epochs": 3},
        "lenet": {"model": "lenet", **QUICK, "activation": "relu", "pooling": "max",
                  "init": "normal", "last_batch": "pad", "lr": 0.1, "epochs": 2,
                  "lr_schedule": "onecycle", "augment": "flip_crop"},
        "lr_find": {"model": "softmax", **TRAIN_ONLY, "kind": "lr_find", "steps": 40},
        "kfold": {"model": "softmax", **TRAIN_ONLY, "kind": "kfold", "k": 2, "epochs": 1,
                  "lr_schedule": "cosine"},
    }  # fmt: skip
    submitted = {}
    for name, body in bodies.items():
        response = client.post("/jobs", json=body)
        assert response.status_code == 201, response.text
        submitted[name] = response.json()
    assert submitted["linear"]["input_side"] is None and submitted["linear"]["loss"] == "huber"
    assert submitted["lenet"]["activation"] == "relu" and submitted["lenet"]["k"] is None
    assert submitted["lr_find"]["steps"] == 40 and submitted["lr_find"]["lr_min"] == 1e-6
    assert submitted["kfold"]["k"] == 2 and submitted["kfold"]["kind"] == "kfold"
    # what a kind has no use for (and refuses) shows as null, not as a default it ignores
    assert submitted["lr_find"]["epochs"] is None and submitted["lr_find"]["lr"] is None
    assert submitted["kfold"]["val_fraction"] is None and submitted["kfold"]["epochs"] == 1
    assert submitted["lenet"]["val_fraction"] == 0.1 and submitted["lenet"]["epochs"] == 2
    assert submitted["lenet"]["augment"] == "flip_crop" and submitted["kfold"]["augment"] == "none"
    assert [submitted[n]["lr_schedule"] for n in ("lenet", "kfold", "lr_find")] == [
        "onecycle", "cosine", "constant"
    ]  # fmt: skip
    assert all(job["result"] is None and job["diagnosis"] is None for job in submitted.values())
    jobs = {
        name: wait_for_status(client, job["id"], {"succeeded", "failed", "cancelled"})
        for name, job in submitted.items()
    }
    assert {name: job["status"] for name, job in jobs.items()} == dict.fromkeys(
        jobs, "succeeded"
    ), {name: job["error"] for name, job in jobs.items()}

    linear = jobs["linear"]
    assert linear["result"]["weights"] == pytest.approx([2.0, -3.4], abs=0.05)
    assert linear["result"]["weight_error_norm"] < 0.05 and linear["train_acc"] is None
    assert 0 <= linear["result"]["val_mse"] < 0.05  # noise 0.01: about 1e-4 at a good fit
    assert linear["diagnosis"]["verdict"] in ("underfitting", "overfitting", "good fit")
    curve = client.get(f"/jobs/{linear['id']}/metrics").json()
    assert curve["count"] == 3 and all(row["val_acc"] is None for row in curve["data"])
    assert all(math.isfinite(row["val_loss"]) for row in curve["data"])

    lenet = jobs["lenet"]
    rates = [row["lr"] for row in client.get(f"/jobs/{lenet['id']}/metrics").json()["data"]]
    assert len(rates) == 2 and 0 < rates[1] < rates[0] < 0.1  # onecycle: past its peak, falling
    assert [row["lr"] for row in curve["data"]] == [0.1] * 3  # linear: constant
    assert lenet["diagnosis"] == lenet["result"]["diagnosis"] and lenet["test_acc"] is not None
    assert set(lenet["diagnosis"]) >= {"verdict", "reason", "gap", "train_loss", "val_loss"}

    finder = jobs["lr_find"]["result"]
    assert len(finder["lrs"]) == len(finder["losses"]) <= 40
    assert 1e-6 <= finder["suggested_lr"] <= 10 and jobs["lr_find"]["diagnosis"] is None

    kfold = jobs["kfold"]
    assert [f["fold"] for f in kfold["result"]["folds"]] == [1, 2]
    assert kfold["val_acc"] == pytest.approx(kfold["result"]["val_acc_mean"])
    assert kfold["result"]["val_acc_std"] >= 0 and kfold["diagnosis"] is not None

    # Only the classifier's train job saved a model: the others are not listed under /models.
    models = client.get("/models").json()
    assert [m["id"] for m in models["data"]] == [lenet["id"]] and models["count"] == 1
    predicted = client.post(f"/models/{lenet['id']}/predict", json={"instances": [[[0] * 28] * 28]})
    assert predicted.status_code == 200
    assert client.get("/jobs").json()["count"] == 4
    catalog = client.get("/catalog").json()
    assert catalog["optimizers"] == ["sgd", "momentum", "adam"]
    assert catalog["lr_schedules"] == ["constant", "cosine", "onecycle"]
    assert catalog["augments"] == ["none", "flip", "flip_crop"]
    tasks = {m["name"]: m["task"] for m in catalog["models"]}
    assert tasks["linear"] == "regression" and tasks["lenet"] == "classification"


def test_sweep_creates_one_job_per_point_and_ranks_them(database_url: str, start_server) -> None:
    server = start_server(database_url, workers=2)
    client = httpx.Client(base_url=server.url, timeout=60)
    body = {
        # 600 examples leave 60 for validation: with the QUICK 20, a lucky seed could let the
        # slow lr tie the fast one (seen once in CI); over 40 seeds the margin is >= 0.5.
        "base": {"model": "softmax", **QUICK, "train_examples": 600, "epochs": 1},
        "grid": {"lr": [0.001, 0.5], "weight_decay": [0, 0.001]},
    }
    response = client.post("/sweeps", json=body)
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert len(sweep["points"]) == 4 and sweep["status_counts"] == {"queued": 4}
    ids = [p["job_id"] for p in sweep["points"]]
    jobs = [wait_for_status(client, i, {"succeeded", "failed"}) for i in ids]
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert {j["sweep_id"] for j in jobs} == {sweep["id"]}
    assert len({j["seed"] for j in jobs}) == 1  # the points differ only in the grid's knobs

    ranked = client.get(f"/sweeps/{sweep['id']}").json()
    accs = [p["val_acc"] for p in ranked["points"]]
    assert accs == sorted(accs, reverse=True) and ranked["status_counts"] == {"succeeded": 4}
    assert ranked["best_job_id"] == ranked["points"][0]["job_id"] and sweep["best_job_id"] is None
    # a hundredfold lr wins in one epoch: both of its points rank above both slow ones
    assert [p["params"]["lr"] for p in ranked["points"]] == [0.5, 0.5, 0.001, 0.001]
    assert {tuple(p["params"].items()) for p in ranked["points"]} == {
        (("lr", lr), ("weight_decay", wd)) for lr in (0.001, 0.5) for wd in (0, 0.001)
    }
    listed = client.get("/sweeps").json()
    assert listed["count"] == 1 and listed["data"][0]["status_counts"] == {"succeeded": 4}
    assert client.get("/sweeps/999").status_code == 404


def test_sweep_ranks_only_succeeded_points_by_score(database_url: str, start_server) -> None:
    """A job cancelled as it finished keeps its final metrics, and so may a failed one; neither
    has a model to serve, so neither may rank above a succeeded point, nor be the best one.
    The points are run by a stand-in worker through the queue, on the server's database."""
    server = start_server(database_url, workers=0)
    client = httpx.Client(base_url=server.url, timeout=60)
    body = {"base": {"model": "softmax", **QUICK, "epochs": 1},
            "grid": {"lr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}}  # fmt: skip
    response = client.post("/sweeps", json=body)
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert sweep["best_job_id"] is None and sweep["order"] == ORDER_CLASSIFICATION
    ids = sorted(p["job_id"] for p in sweep["points"])  # claimed in this order
    engine = make_engine(database_url)
    try:
        claims = [queue.claim_next_job(engine, "stand-in", 60) for _ in range(5)]
        assert [c.id for c in claims if c is not None] == ids[:5]
        fair, cancelled, failed, better, running = (c for c in claims if c is not None)

        def finish(claimed: queue.ClaimedJob, status: JobStatus, val_acc: float) -> None:
            metrics = {"val_acc": val_acc, "val_loss": 1 - val_acc, "test_acc": val_acc}
            assert queue.finish_job(engine, claimed.id, claimed.token, status,
                                    final_metrics=metrics, error=None)  # fmt: skip

        finish(fair, JobStatus.SUCCEEDED, 0.6)
        assert client.post(f"/jobs/{cancelled.id}/cancel").json()["status"] == "running"
        finish(cancelled, JobStatus.SUCCEEDED, 0.9)  # the accepted cancel wins: no model
        finish(failed, JobStatus.FAILED, 0.95)
        finish(better, JobStatus.SUCCEEDED, 0.7)
        ranked = client.get(f"/sweeps/{sweep['id']}").json()
        assert [(p["job_id"], p["status"]) for p in ranked["points"]] == [
            (better.id, "succeeded"), (fair.id, "succeeded"), (running.id, "running"),
            (ids[5], "queued"), (cancelled.id, "cancelled"), (failed.id, "failed"),
        ]  # fmt: skip
        assert ranked["points"][4]["val_acc"] == 0.9  # kept, but not ranked by
        assert ranked["best_job_id"] == better.id
        assert client.get(f"/models/{cancelled.id}").status_code == 409
        assert client.get(f"/models/{failed.id}").status_code == 409
        assert "succeeded points by val_acc descending" in ranked["order"]

        # With no succeeded point, there is no best one, whatever the others' metrics.
        ahead = {"base": {**body["base"], "priority": 1}, "grid": {"lr": [0.7]}}
        alone = client.post("/sweeps", json=ahead).json()  # claimed before the queued point
        only = queue.claim_next_job(engine, "stand-in", 60)
        assert only is not None and only.id == alone["points"][0]["job_id"]
        finish(only, JobStatus.FAILED, 0.99)
        answer = client.get(f"/sweeps/{alone['id']}").json()
        assert answer["best_job_id"] is None and answer["points"][0]["status"] == "failed"
    finally:
        engine.dispose()


def test_regression_sweep_over_losses_ranks_by_val_mse(database_url: str, start_server) -> None:
    """Each regression point's val_loss is in its own loss's unit (l2 is half the squared error,
    l1 the absolute error), so points with different losses are ranked by val_mse; with one
    loss, by val_loss. Stand-in workers finish the points with chosen figures."""
    server = start_server(database_url, workers=0)
    client = httpx.Client(base_url=server.url, timeout=60)
    base = {"model": "linear", "dataset": "linreg-synthetic", "epochs": 1}
    mixed = client.post("/sweeps", json={"base": base, "grid": {"loss": ["l2", "l1"]}}).json()
    assert mixed["order"] == ORDER_REGRESSION_MSE, mixed
    engine = make_engine(database_url)
    try:
        claims = [queue.claim_next_job(engine, "stand-in", 60) for _ in range(2)]
        by_loss = {}
        for claimed in claims:
            assert claimed is not None
            by_loss[client.get(f"/jobs/{claimed.id}").json()["loss"]] = claimed
        # l1's val_loss (a mean absolute error) is the smaller figure, its squared error not
        figures = {"l2": (0.5, 1.0), "l1": (0.4, 3.0)}  # loss: (val_loss, val_mse)
        for loss, (val_loss, mse) in figures.items():
            claimed = by_loss[loss]
            assert queue.finish_job(engine, claimed.id, claimed.token, JobStatus.SUCCEEDED,
                                    final_metrics={"val_loss": val_loss},
                                    result={"val_mse": mse})  # fmt: skip
        ranked = client.get(f"/sweeps/{mixed['id']}").json()
        assert [p["params"]["loss"] for p in ranked["points"]] == ["l2", "l1"]
        assert [p["val_mse"] for p in ranked["points"]] == [1.0, 3.0]
        assert ranked["best_job_id"] == by_loss["l2"].id

        one_loss = {"base": {**base, "loss": "l1"}, "grid": {"lr": [0.01, 0.02]}}
        same = client.post("/sweeps", json=one_loss).json()
        assert same["order"] == ORDER_REGRESSION
        classes = client.post("/sweeps", json={"base": {"model": "softmax", **QUICK},
                                               "grid": {"lr": [0.1, 0.2]}}).json()  # fmt: skip
        assert classes["order"] == ORDER_CLASSIFICATION
        assert {p["val_mse"] for p in classes["points"]} == {None}
    finally:
        engine.dispose()


def test_cancel_sweep(database_url: str, start_server) -> None:
    """POST /sweeps/{id}/cancel: every queued point cancelled at once, running ones flagged for
    their workers, finished ones left alone; 200 with the sweep, 409 once nothing is left."""
    server = start_server(database_url, workers=0)
    client = httpx.Client(base_url=server.url, timeout=60)
    body = {"base": {"model": "softmax", **QUICK, "epochs": 1}, "grid": {"lr": [0.1, 0.2, 0.3]}}
    sweep = client.post("/sweeps", json=body).json()
    ids = sorted(p["job_id"] for p in sweep["points"])
    untouched = client.post("/jobs", json=body["base"]).json()
    engine = make_engine(database_url)
    try:
        done = queue.claim_next_job(engine, "stand-in", 60)
        running = queue.claim_next_job(engine, "stand-in", 60)
        assert done is not None and running is not None and [done.id, running.id] == ids[:2]
        assert queue.finish_job(engine, done.id, done.token, JobStatus.SUCCEEDED,
                                final_metrics={"val_acc": 0.5})  # fmt: skip

        response = client.post(f"/sweeps/{sweep['id']}/cancel")
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer == client.get(f"/sweeps/{sweep['id']}").json()  # the same body
        assert answer["status_counts"] == {"succeeded": 1, "running": 1, "cancelled": 1}
        assert answer["best_job_id"] == done.id
        jobs = {i: client.get(f"/jobs/{i}").json() for i in ids}
        assert jobs[ids[2]]["error"] == "cancelled before it started"
        assert jobs[ids[1]]["status"] == "running" and jobs[ids[1]]["cancel_requested"] is True
        assert jobs[ids[0]]["status"] == "succeeded" and jobs[ids[0]]["cancel_requested"] is False
        assert queue.heartbeat(engine, running.id, running.token, 60).cancel_requested is True
        other = client.get(f"/jobs/{untouched['id']}").json()
        assert other["status"] == "queued" and other["cancel_requested"] is False

        # Again while a job still runs: harmless, 200. Its worker stops it; then nothing is left.
        assert client.post(f"/sweeps/{sweep['id']}/cancel").status_code == 200
        assert queue.finish_job(engine, running.id, running.token, JobStatus.CANCELLED,
                                error="cancelled by request")  # fmt: skip
        refused = client.post(f"/sweeps/{sweep['id']}/cancel")
        assert refused.status_code == 409, refused.text
        assert refused.json() == {"error": {
            "status": 409, "code": "conflict", "fields": [],
            "message": f"every job of sweep {sweep['id']} is already finished (2 cancelled, "
                       "1 succeeded); only queued or running jobs can be cancelled",
        }}  # fmt: skip
        missing = client.post("/sweeps/999/cancel")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert missing.json()["error"]["message"] == "sweep 999 does not exist"
        assert client.get(f"/jobs/{untouched['id']}").json()["status"] == "queued"
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    state = tmp_path_factory.mktemp("experiments-bad-input")
    live = LiveServer(state, f"sqlite:///{state / 'trainserve.db'}", workers=0).start()
    yield httpx.Client(base_url=live.url, timeout=60)
    live.stop()


BAD_JOBS = [
    ({"model": "softmax", "loss": "l1"}, "loss"),
    ({"model": "linear"}, "dataset"),  # fashion-mnist is images
    ({"model": "lenet", "dataset": "linreg-synthetic"}, "dataset"),
    ({"model": "mlp", "dataset": "ds_0123456789abcdef"}, "dataset"),  # no such upload
    ({"model": "mlp", "dataset": "../../etc/passwd"}, "dataset"),
    ({"model": "linear", "dataset": "linreg-synthetic", "resize": 28}, "resize"),
    ({"model": "mlp", "activation": "relu"}, "activation"),
    ({"model": "mlp", "pooling": "max"}, "pooling"),
    ({"model": "lenet", "activation": "tanh"}, "activation"),
    ({"model": "mlp", "k": 3}, "k"),
    ({"model": "mlp", "kind": "kfold", "k": 11}, "k"),
    ({"model": "mlp", "kind": "kfold", "k": 1}, "k"),
    ({"model": "mlp", "steps": 100}, "steps"),
    ({"model": "mlp", "kind": "lr_find", "steps": 10}, "steps"),
    ({"model": "mlp", "kind": "lr_find", "lr_min": 1, "lr_max": 0.1}, "lr_max"),
    ({"model": "mlp", "init_std": 0.1}, "init_std"),
    ({"model": "mlp", "init": "orthogonal"}, "init"),
    ({"model": "mlp", "last_batch": "skip"}, "last_batch"),
    ({"model": "mlp", "loss_reduction": "median"}, "loss_reduction"),
    ({"model": "mlp", "kind": "predict"}, "kind"),
    ({"model": "mlp", "l1": -1}, "l1"),
    ({"model": "mlp", "decay_bias": "sometimes"}, "decay_bias"),
]


@pytest.mark.parametrize(("body", "field"), BAD_JOBS, ids=[f for _, f in BAD_JOBS])
def test_bad_experiment_jobs_name_the_field(api_only: httpx.Client, body: dict, field: str) -> None:
    response = api_only.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    assert field in [f["field"] for f in response.json()["error"]["fields"]]
    assert api_only.get("/jobs").json()["count"] == 0


BAD_SWEEPS = [
    ({"base": {"model": "softmax"}, "grid": {"dropout": [0.0, 0.5]}}, "grid.dropout"),
    ({"base": {"model": "softmax"}, "grid": {"learning_rate": [0.1]}}, "grid.learning_rate"),
    ({"base": {"model": "softmax", "epochs": 0}, "grid": {"lr": [0.1]}}, "base.epochs"),
    ({"base": {}, "grid": {"lr": [0.1]}}, "base.model"),
    ({"base": {"model": "softmax", "lr": 0.1}, "grid": {"lr": [0.1]}}, "grid.lr"),
    ({"base": {"model": "softmax"}, "grid": {"lr": []}}, "grid.lr"),
    ({"base": {"model": "softmax"}, "grid": {}}, "grid"),
    ({"base": {"model": "softmax"},
      "grid": {"lr": [0.1 * i for i in range(1, 20)], "seed": list(range(20))}}, "grid"),
    ({"base": {"model": "softmax"}, "grid": {"priority": [1, 2]}}, "grid.priority"),
    ({"base": {"model": "softmax"}, "grid": {"weight_decay": [0, 1e-3, 0.0]}}, "grid.weight_decay"),
    # every job field is one value: a list or object (500 deep made _hashable recurse) is not
    ({"base": {"model": "softmax"}, "grid": {"lr": [[0.1], 0.2]}}, "grid.lr"),
    ({"base": {"model": "softmax"}, "grid": {"lr": [json.loads("[" * 500 + "]" * 500)]}},
     "grid.lr"),
    # null is the model's default side, 28: both points would train the same job
    ({"base": {"model": "softmax"}, "grid": {"resize": [None, 28]}}, "grid.resize"),
    # synthetic has 2,000 training examples: 2,000 or more is all of them, as null is
    ({"base": {"model": "softmax", "dataset": "synthetic"},
      "grid": {"train_examples": [2000, 100_000]}}, "grid.train_examples"),
    ({"base": {"model": "softmax", "dataset": "synthetic"},
      "grid": {"train_examples": [None, 2001]}}, "grid.train_examples"),
    ({"base": {"model": "softmax"}, "grid": {"test_examples": [10_000, 1_000_000]}},
     "grid.test_examples"),
    # kfold has no use for val_fraction (its folds are its validation sets)
    ({"base": {"model": "softmax", "kind": "kfold"}, "grid": {"val_fraction": [0.1, 0.2]}},
     "grid.val_fraction"),
    # lr_find points have no validation score to rank by
    ({"base": {"model": "mlp", "kind": "lr_find"}, "grid": {"steps": [20, 30]}}, "base.kind"),
    ({"base": {"model": "mlp"}, "grid": {"kind": ["train", "lr_find"]}}, "grid.kind"),
    # every point gets the single job's size checks
    ({"base": {"model": "softmax", "dataset": "synthetic", "last_batch": "drop"},
      "grid": {"batch_size": [1024, 2048]}}, "grid.batch_size"),
    ({"base": {"model": "softmax", "kind": "kfold", "train_examples": 5}, "grid": {"k": [2, 10]}},
     "grid.k"),
    # an integer field takes JSON integers, in base and grid alike
    ({"base": {"model": "softmax", "epochs": 1.0}, "grid": {"lr": [0.1]}}, "base.epochs"),
    ({"base": {"model": "softmax"}, "grid": {"batch_size": [32, 64.0]}}, "grid.batch_size"),
    ({"base": {"model": "softmax", "priority": 1.0}, "grid": {"lr": [0.1]}}, "base.priority"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field"), BAD_SWEEPS, ids=[f for _, f in BAD_SWEEPS])
def test_bad_sweeps_name_the_field_and_write_nothing(
    api_only: httpx.Client, body: dict, field: str
) -> None:
    response = api_only.post("/sweeps", json=body)
    assert response.status_code == 422, response.text
    assert field in [f["field"] for f in response.json()["error"]["fields"]]
    assert api_only.get("/jobs").json()["count"] == 0
    assert api_only.get("/sweeps").json()["count"] == 0


def test_huge_grids_are_refused_from_their_lengths_alone(api_only: httpx.Client) -> None:
    """The point count comes first, from the lists' lengths: 100,000 values in one list (a
    quadratic duplicate check took minutes on them), or 2 values for each of 15,000 keys (a
    4,516-digit count, which str() refuses: a 500), are the one 422 naming `grid`, at once."""
    seeds = {"base": {"model": "softmax"}, "grid": {"seed": list(range(100_000))}}
    keys = {"base": {"model": "softmax"}, "grid": {f"k{i}": [0, 1] for i in range(15_000)}}
    for body, shown in ((seeds, "100000"), (keys, "over 1,000,000,000,000")):
        assert len(json.dumps(body)) < 1024 * 1024  # within the body limit
        response = api_only.post("/sweeps", json=body, timeout=30)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["fields"] == [
            {"field": "grid", "reason": f"{shown} points; at most {MAX_SWEEP_POINTS}"}
        ]
    # A repeated value is still found, and named as before (1 and 1.0 are one value); a list
    # is no job field's value.
    repeated = {"base": {"model": "softmax"}, "grid": {"lr": [0.5, 1, [1], 1.0]}}
    error = api_only.post("/sweeps", json=repeated).json()["error"]
    assert error["fields"] == [
        {
            "field": "grid.lr",
            "reason": "each value is a number, string, boolean or null, not a list or an object",
        },
        {"field": "grid.lr", "reason": "1.0 is given twice (points would repeat)"},
    ]
    assert api_only.get("/sweeps").json()["count"] == 0


def test_a_grid_value_of_the_wrong_type_is_named_for_its_type(api_only: httpx.Client) -> None:
    """true is not 1 and 1e400 (inf) is no number: each value's own check names it, not the
    repeat check; a real repeat is shown in JSON's words (true, not Python's True)."""
    cases = [
        ({"seed": [1, True]}, "grid.seed", "must be a number, not true"),
        ({"decay_bias": [True, 1]}, "grid.decay_bias", "must be"),
        ({"lr": [1e400, 1e401]}, "grid.lr", "finite"),
        ({"decay_bias": [True, True]}, "grid.decay_bias", "true is given twice"),
        ({"seed": [1, 1.0]}, "grid.seed", "must be an integer, not 1.0"),  # not "given twice"
    ]
    for grid, field, reason in cases:
        body = json.dumps({"base": {"model": "softmax"}, "grid": grid}).replace("Infinity", "1e400")
        response = api_only.post("/sweeps", content=body,
                                 headers={"content-type": "application/json"})  # fmt: skip
        assert response.status_code == 422, response.text
        fields = response.json()["error"]["fields"]
        assert [f["field"] for f in fields] == [field], fields
        assert reason in fields[0]["reason"], fields
    assert api_only.get("/sweeps").json()["count"] == 0


def test_sweep_idempotency_key(database_url: str, start_server) -> None:
    """As for POST /jobs: the same key and body return the first sweep (201), with no job queued
    twice; another body is a 422 naming the key and the sweep; a blank key is a 422."""
    api_only = httpx.Client(base_url=start_server(database_url, workers=0).url, timeout=60)
    body = {"base": {"model": "softmax", "dataset": "synthetic", "epochs": 1},
            "grid": {"lr": [0.1, 0.2]}}  # fmt: skip
    headers = {"Idempotency-Key": "sweep-retry"}
    first = api_only.post("/sweeps", json=body, headers=headers)
    assert first.status_code == 201, first.text
    sweep = first.json()
    jobs = api_only.get("/jobs").json()["count"]
    again = api_only.post("/sweeps", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json()["id"] == sweep["id"] and again.json()["points"] == sweep["points"]
    # Whitespace around the value is not part of the key (httpx will not send it: raw HTTP).
    status, answer = raw_post(api_only, "/sweeps", body, "Idempotency-Key: sweep-retry \t")
    assert status == 201 and answer["id"] == sweep["id"]
    for changed in (
        {**body, "grid": {"lr": [0.1, 0.3]}},
        {**body, "base": {**body["base"], "epochs": 2}},
        {**body, "base": {**body["base"], "seed": 7}},
    ):
        response = api_only.post("/sweeps", json=changed, headers=headers)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert [f["field"] for f in error["fields"]] == ["Idempotency-Key"]
        assert f"sweep {sweep['id']}" in error["message"]
    for blank in ("", "  \t "):
        status, answer = raw_post(api_only, "/sweeps", body, f"Idempotency-Key: {blank}")
        assert status == 422, answer
        assert answer["error"]["fields"][0]["field"] == "Idempotency-Key"
    # The key of a job is not the key of a sweep: each kind has its own.
    job = api_only.post("/jobs", json=body["base"], headers=headers)
    assert job.status_code == 201, job.text
    assert api_only.get("/jobs").json()["count"] == jobs + 1
    assert api_only.get("/sweeps").json()["count"] == 1
