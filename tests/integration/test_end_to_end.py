"""Submit → train → curves → trained model → predict → restart, against a live server,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from service.training.data import load_dataset
from tests.conftest import fashion_mnist_available, wait_for_status
from tests.integration.helpers import accuracy, as_instances, png_bytes


def test_train_predict_and_survive_restart(database_url: str, start_server) -> None:
    server = start_server(database_url, workers=1)
    client = httpx.Client(base_url=server.url, timeout=60)
    response = client.post(
        "/jobs",
        json={"model": "mlp", "dataset": "synthetic", "epochs": 3, "batch_size": 64, "seed": 7},
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["dropout"] == 0.5 and job["lr"] == 0.5  # the model's course defaults

    job = wait_for_status(client, job["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error"]
    assert job["epochs_done"] == 3
    assert job["started_at"] and job["finished_at"]
    assert job["test_acc"] > 0.3  # ten classes: chance is 0.1

    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    assert metrics["count"] == 3
    assert [row["epoch"] for row in metrics["data"]] == [1, 2, 3]
    assert metrics["data"][-1]["train_loss"] < metrics["data"][0]["train_loss"]
    for row in metrics["data"]:
        assert row["examples_per_sec"] > 0 and row["seconds"] > 0

    trained = client.get("/models").json()
    assert [m["id"] for m in trained["data"]] == [job["id"]]
    assert client.get(f"/models/{job['id']}").json()["test_acc"] == job["test_acc"]

    data = load_dataset("synthetic", None)
    images = data.test_images[:200].numpy()
    labels = data.test_labels[:200].numpy()
    first = client.post(f"/models/{job['id']}/predict", json={"instances": as_instances(images)})
    assert first.status_code == 200, first.text
    predictions = first.json()["predictions"]
    assert len(predictions) == 200
    assert abs(accuracy(predictions, labels) - job["test_acc"]) < 0.1
    for p in predictions:
        assert len(p["probabilities"]) == 10
        assert abs(sum(p["probabilities"]) - 1) < 1e-4
        assert p["class_name"] == f"pattern {p['label']}"
    # Dropout is off: the same request gives the same answer.
    second = client.post(f"/models/{job['id']}/predict", json={"instances": as_instances(images)})
    assert second.json() == first.json()

    # The same images as PNG files give the same labels.
    files = [("files", (f"{i}.png", png_bytes(images[i]), "image/png")) for i in range(8)]
    as_png = client.post(f"/models/{job['id']}/predict", files=files)
    assert as_png.status_code == 200, as_png.text
    assert [p["label"] for p in as_png.json()["predictions"]] == [
        p["label"] for p in predictions[:8]
    ]

    # Jobs, curves and models survive a restart of the service.
    server.stop()
    server.start()
    client = httpx.Client(base_url=server.url, timeout=60)
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "succeeded"
    assert client.get(f"/jobs/{job['id']}/metrics").json()["count"] == 3
    again = client.post(f"/models/{job['id']}/predict", json={"instances": as_instances(images)})
    assert again.json() == first.json()


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST IDX files not installed")
def test_lenet_on_fashion_mnist_predicts_png_files(sqlite_url: str, start_server) -> None:
    """The README's walk-through on a subset: LeNet, λ 1e-4, dropout 0.5, Adam."""
    server = start_server(sqlite_url, workers=1)
    client = httpx.Client(base_url=server.url, timeout=60)
    body = {
        "model": "lenet", "weight_decay": 1e-4, "dropout": 0.5, "optimizer": "adam",
        "epochs": 2, "batch_size": 64, "train_examples": 6000, "test_examples": 1000, "seed": 0,
    }  # fmt: skip
    job = client.post("/jobs", json=body).json()
    job = wait_for_status(client, job["id"], {"succeeded", "failed"}, timeout=240)
    assert job["status"] == "succeeded", job["error"]
    assert job["test_acc"] > 0.3, job  # chance is 0.1; 2 short epochs of a sigmoid LeNet

    data = load_dataset("fashion-mnist", None)
    images = data.test_images[:100].numpy()
    labels = data.test_labels[:100].numpy()
    files = [("files", (f"{i}.png", png_bytes(img), "image/png")) for i, img in enumerate(images)]
    response = client.post(f"/models/{job['id']}/predict", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert abs(accuracy(predictions, labels) - job["test_acc"]) < 0.15
    names = set(data.class_names)
    assert all(p["class_name"] in names for p in predictions)
    assert np.isclose(sum(predictions[0]["probabilities"]), 1, atol=1e-4)
