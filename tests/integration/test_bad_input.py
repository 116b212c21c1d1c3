"""Every bad input gets a 4xx with the one error shape, naming the field, and writes nothing."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer, wait_for_status
from tests.integration.helpers import as_instances, png_bytes, raw_post

BAD_JOBS = [
    ({}, "model"),
    ({"model": "resnet"}, "model"),
    ({"model": "lenet", "dataset": "cifar10"}, "dataset"),
    ({"model": "lenet", "weight_decay": -1}, "weight_decay"),
    ({"model": "lenet", "dropout": 1.0}, "dropout"),
    ({"model": "lenet", "dropout": -0.1}, "dropout"),
    ({"model": "softmax", "dropout": 0.5}, "dropout"),  # no dropout layers
    ({"model": "lenet", "batch_size": 0}, "batch_size"),
    ({"model": "lenet", "batch_size": 4097}, "batch_size"),
    ({"model": "lenet", "epochs": 0}, "epochs"),
    ({"model": "lenet", "epochs": 501}, "epochs"),
    ({"model": "lenet", "lr": 0}, "lr"),
    ({"model": "lenet", "lr": -0.1}, "lr"),
    ({"model": "lenet", "optimizer": "rmsprop"}, "optimizer"),
    ({"model": "lenet", "seed": -1}, "seed"),
    ({"model": "lenet", "seed": "abc"}, "seed"),
    ({"model": "alexnet", "resize": 32}, "resize"),  # too small for AlexNet
    ({"model": "lenet", "resize": 0}, "resize"),
    ({"model": "lenet", "epochs": "ten"}, "epochs"),
    ({"model": "lenet", "epochs": True}, "epochs"),  # not taken as 1
    ({"model": "lenet", "epochs": "2"}, "epochs"),  # a quoted number is not taken as one
    ({"model": "lenet", "batch_size": 256.0}, "batch_size"),  # an integer field takes integers
    ({"model": "lenet", "epochs": 2.0}, "epochs"),
    ({"model": "lenet", "seed": 1e3}, "seed"),
    ({"model": "lenet", "priority": 0.0}, "priority"),
    ({"model": "lenet", "train_examples": 500.0}, "train_examples"),
    ({"model": "softmax", "kind": "kfold", "k": 3.0}, "k"),
    ({"model": "lenet", "lr": "0.1"}, "lr"),
    ({"model": "lenet", "decay_bias": "yes"}, "decay_bias"),
    ({"model": "lenet", "decay_bias": 1}, "decay_bias"),
    ({"model": "lenet", "train_examples": 2**63}, "train_examples"),
    ({"model": "lenet", "learning_rate": 0.1}, "learning_rate"),  # unknown field
    ({"model": "lenet", "lr_schedule": "step"}, "lr_schedule"),
    ({"model": "lenet", "augment": "rotate"}, "augment"),
    ({"model": "linear", "dataset": "linreg-synthetic", "augment": "flip"}, "augment"),
    ({"model": "lenet", "kind": "lr_find", "lr_schedule": "cosine"}, "lr_schedule"),
    # Fields a kind has no use for (they would be stored and shown, and change nothing)
    ({"model": "mlp", "kind": "lr_find", "epochs": 50}, "epochs"),
    ({"model": "mlp", "kind": "lr_find", "lr": 0.3}, "lr"),
    ({"model": "mlp", "kind": "lr_find", "test_examples": 100}, "test_examples"),
    ({"model": "mlp", "kind": "kfold", "val_fraction": 0.2}, "val_fraction"),
    ({"model": "mlp", "kind": "kfold", "test_examples": 100}, "test_examples"),
    (
        {"model": "lenet", "last_batch": "drop", "batch_size": 451, "train_examples": 500},
        "batch_size",
    ),  # 50 of the 500 go to validation: no full batch of 451
    # The same checks for kfold and lr_find, and against the built-in datasets' own sizes
    ({"model": "softmax", "kind": "kfold", "k": 10, "epochs": 1, "train_examples": 5}, "k"),
    ({"model": "softmax", "kind": "kfold", "epochs": 1, "train_examples": 4}, "k"),  # k 5
    (
        {"model": "softmax", "kind": "kfold", "k": 3, "epochs": 1, "train_examples": 100,
         "batch_size": 67, "last_batch": "drop"},
        "batch_size",
    ),  # folds of 34, 33, 33: one round trains on 66
    (
        {"model": "softmax", "kind": "lr_find", "steps": 20, "train_examples": 100,
         "batch_size": 256, "last_batch": "drop"},
        "batch_size",
    ),
    (
        {"model": "softmax", "dataset": "synthetic", "epochs": 1, "batch_size": 1801,
         "last_batch": "drop"},
        "batch_size",
    ),  # 2000 examples, 1800 after the validation split
    (
        {"model": "linear", "dataset": "linreg-highdim", "epochs": 1, "batch_size": 19,
         "last_batch": "drop"},
        "batch_size",
    ),  # 20 examples, 18 after the validation split
]  # fmt: skip

# (body, field, what the reason must say): the numbers the refusal rests on
SIZE_REASONS = [
    ({"model": "softmax", "kind": "kfold", "k": 10, "epochs": 1, "train_examples": 5}, "k",
     ["k = 10", "got 5"]),
    ({"model": "softmax", "kind": "kfold", "k": 3, "epochs": 1, "train_examples": 100,
      "batch_size": 256, "last_batch": "drop"}, "batch_size", ["batch_size 256", "66"]),
    ({"model": "softmax", "dataset": "synthetic", "epochs": 1, "batch_size": 4096,
      "last_batch": "drop"}, "batch_size", ["4096", "2000", "1800", "synthetic"]),
    ({"model": "linear", "dataset": "linreg-highdim", "epochs": 1, "batch_size": 64,
      "last_batch": "drop"}, "batch_size", ["64", "20", "18", "linreg-highdim"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    state = tmp_path_factory.mktemp("bad-input")
    live = LiveServer(state, f"sqlite:///{state / 'trainserve.db'}", workers=1).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60)


@pytest.fixture(scope="module")
def trained_model(client: httpx.Client) -> dict:
    job = client.post(
        "/jobs", json={"model": "softmax", "dataset": "synthetic", "epochs": 1, "seed": 1}
    ).json()
    return wait_for_status(client, job["id"], {"succeeded", "failed"})


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["code"] and error["message"]
    if field is not None:
        assert field in [f["field"] for f in error["fields"]], error
        assert field in error["message"]
        assert all(f["reason"] for f in error["fields"])
    return error


@pytest.mark.parametrize(("body", "field"), BAD_JOBS)
def test_bad_job_is_422_naming_the_field_and_writes_nothing(
    client: httpx.Client, body: dict, field: str
) -> None:
    before = client.get("/jobs").json()["count"]
    assert_error(client.post("/jobs", json=body), 422, field)
    assert client.get("/jobs").json()["count"] == before


@pytest.mark.parametrize(("body", "field", "numbers"), SIZE_REASONS)
def test_too_small_a_training_set_says_by_how_much(
    client: httpx.Client, body: dict, field: str, numbers: list[str]
) -> None:
    error = assert_error(client.post("/jobs", json=body), 422, field)
    [reason] = [f["reason"] for f in error["fields"] if f["field"] == field]
    assert all(number in reason for number in numbers), reason


def test_uploaded_datasets_are_checked_against_their_size(client: httpx.Client) -> None:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=rng.integers(0, 255, (60, 28, 28), dtype=np.uint8),
                        labels=np.arange(60) % 2)  # fmt: skip
    images = client.post("/datasets", files={"file": ("d.npz", buffer.getvalue())}).json()
    rows = "a,b,target\n" + "".join(f"{i},{i % 7},{2 * i}\n" for i in range(50))
    table = client.post("/datasets", files={"file": ("d.csv", rows.encode())}).json()
    before = client.get("/jobs").json()["count"]
    for stored, model in ((images, "lenet"), (table, "linear")):
        n = stored["train_examples"]
        drop = {"model": model, "dataset": stored["id"], "last_batch": "drop", "epochs": 1}
        error = assert_error(
            client.post("/jobs", json={**drop, "batch_size": n}), 422, "batch_size"
        )
        assert f"of the {n} training examples" in error["message"]
        kfold = {**drop, "kind": "kfold", "k": 2, "batch_size": n // 2 + 1}  # rounds of n // 2
        assert_error(client.post("/jobs", json=kfold), 422, "batch_size")
    assert client.get("/jobs").json()["count"] == before


def test_malformed_json_body_is_422(client: httpx.Client) -> None:
    response = client.post(
        "/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "body")
    assert_error(client.post("/jobs", json=[1, 2]), 422)
    not_utf8 = b'{"model": "lenet", "seed": "\xff"}'
    for path in ("/jobs", "/sweeps"):
        response = client.post(path, content=not_utf8, headers={"content-type": "application/json"})
        assert "utf-8" in assert_error(response, 422, "body")["message"]


def test_a_key_given_twice_in_a_json_body_is_422(client: httpx.Client) -> None:
    """JSON allows it and a parser keeps the last value: the client may have meant either."""
    before = client.get("/jobs").json()["count"]
    sweeps = client.get("/sweeps").json()["count"]
    json_type = {"content-type": "application/json"}
    cases = [
        ("/jobs", b'{"model": "softmax", "dataset": "synthetic", "epochs": 1, "epochs": 2}',
         "epochs"),
        ("/jobs", b'{"model": "softmax", "epochs": 1, "epochs": "x"}', "epochs"),  # no other 422
        ("/jobs", b'{"model": "softmax", "model": "softmax", "epochs": 1}', "model"),
        ("/sweeps", b'{"base": {"model": "softmax", "epochs": 1, "epochs": 2}, '
                    b'"grid": {"lr": [0.1]}}', "base.epochs"),
        ("/sweeps", b'{"base": {"model": "softmax"}, "grid": {"lr": [0.1]}, '
                    b'"grid": {"lr": [0.2]}}', "grid"),
        ("/sweeps", b'{"base": {"model": "softmax"}, "grid": {"lr": [0.1], "lr": [0.2]}}',
         "grid.lr"),
    ]  # fmt: skip
    for path, body, field in cases:
        error = assert_error(client.post(path, content=body, headers=json_type), 422, field)
        assert error["fields"] == [{"field": field, "reason": "given more than once in the body"}]
    assert client.get("/jobs").json()["count"] == before
    assert client.get("/sweeps").json()["count"] == sweeps


def test_list_query_validation(client: httpx.Client) -> None:
    assert_error(client.get("/jobs", params={"status": "sleeping"}), 422, "status")
    everything = client.get("/jobs").json()["count"]
    assert client.get("/jobs?status=").json()["count"] == everything  # empty: no filter
    assert_error(client.get("/jobs", params={"limit": 0}), 422, "limit")
    assert_error(client.get("/jobs", params={"offset": -1}), 422, "offset")
    for path in ("/jobs", "/models", "/datasets", "/sweeps"):  # past SQLite's 64-bit integers
        assert_error(client.get(path, params={"offset": 2**63}), 422, "offset")
        assert client.get(path, params={"offset": 2**31 - 1}).json()["data"] == []
    # A repeated parameter is not resolved by keeping one; a misspelt one is not ignored.
    assert_error(client.get("/jobs?status=queued&status=failed"), 422, "status")
    assert_error(client.get("/jobs?status=&status="), 422, "status")
    assert_error(client.get("/jobs?stauts=failed"), 422, "stauts")
    for path in ("/jobs", "/models", "/datasets", "/sweeps"):
        assert_error(client.get(f"{path}?limit=5&limit=10"), 422, "limit")
        assert_error(client.get(f"{path}?offset=0&offset=0"), 422, "offset")
        error = assert_error(client.get(f"{path}?limti=5"), 422, "limti")
        assert "unknown query parameter" in error["message"] and "limit" in error["message"]
        assert client.get(f"{path}?limit=5&offset=0").status_code == 200
    # A path that takes no query parameters refuses one rather than ignoring it (a user's
    # ?limit=1 on /metrics would otherwise get every row without a word).
    for path in ("/jobs/1", "/jobs/1/metrics", "/sweeps/1", "/models/1", "/datasets/ds_x",
                 "/catalog"):  # fmt: skip
        error = assert_error(client.get(f"{path}?limit=1"), 422, "limit")
        assert "takes none" in error["message"]
    # The POSTs take none either (?force=1 on a cancel, ?wait=1 on a submit do nothing).
    jobs, sweeps = client.get("/jobs").json()["count"], client.get("/sweeps").json()["count"]
    job = {"model": "softmax", "dataset": "synthetic", "epochs": 1}
    for path, body in (("/jobs", job), ("/sweeps", {"base": job, "grid": {"lr": [0.1, 0.2]}})):
        assert (
            "takes none"
            in assert_error(client.post(f"{path}?wait=1", json=body), 422, "wait")["message"]
        )
    for path in ("/jobs/1/cancel", "/sweeps/1/cancel", "/datasets"):
        assert "takes none" in assert_error(client.post(f"{path}?force=1"), 422, "force")["message"]
    assert client.get("/jobs").json()["count"] == jobs
    assert client.get("/sweeps").json()["count"] == sweeps
    for path in ("/jobs", "/models", "/datasets", "/sweeps"):
        for lax in ("+5", "%205", "5%20", "5.0", "5_0"):  # pydantic's lax int read each as 5
            assert_error(client.get(f"{path}?limit={lax}"), 422, "limit")
            assert_error(client.get(f"{path}?offset={lax}"), 422, "offset")


def test_health_answers_get_and_head(client: httpx.Client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    head = client.head("/health")
    assert head.status_code == 200 and head.content == b""


def test_every_get_answers_head_with_the_headers_only(client: httpx.Client) -> None:
    for path, status in (("/catalog", 200), ("/jobs", 200), ("/jobs/999999", 404)):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == status
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
    assert client.head("/no-such-path").status_code == 404


def test_unknown_ids_are_404(client: httpx.Client) -> None:
    for path in ("/jobs/999999", "/jobs/999999/metrics", "/models/999999"):
        assert_error(client.get(path), 404)
    assert_error(client.post("/jobs/999999/cancel"), 404)
    assert_error(client.post("/sweeps/999999/cancel"), 404)
    assert_error(client.post("/models/999999/predict", json={"instances": []}), 404)
    assert_error(client.get("/jobs/abc"), 422, "job_id")
    assert_error(client.get("/jobs/99999999999999999999"), 422, "job_id")


def test_path_ids_are_plain_ascii_digits(client: httpx.Client, trained_model: dict) -> None:
    """A space, a sign, a decimal point, an underscore or non-ASCII digits do not name job 1:
    the 422 that /jobs/abc gets, on every id of every resource."""
    model_id = trained_model["id"]
    assert client.get(f"/jobs/{model_id}").status_code == 200
    assert client.get(f"/jobs/0{model_id}").status_code == 200  # leading zeros: still digits
    abc = assert_error(client.get("/jobs/abc"), 422, "job_id")
    for raw in (f"{model_id}%20", f"%20{model_id}", f"+{model_id}", f"{model_id}.0",
                f"{model_id}_0", f"{model_id}%0A", "%EF%BC%91", "%D9%A3", "1e0"):  # fmt: skip
        for method, path, field in (
            ("GET", f"/jobs/{raw}", "job_id"),
            ("GET", f"/jobs/{raw}/metrics", "job_id"),
            ("POST", f"/jobs/{raw}/cancel", "job_id"),
            ("GET", f"/sweeps/{raw}", "sweep_id"),
            ("POST", f"/sweeps/{raw}/cancel", "sweep_id"),
            ("GET", f"/models/{raw}", "model_id"),
            ("GET", f"/models/{raw}/export?format=onnx", "model_id"),
            ("POST", f"/models/{raw}/predict", "model_id"),
        ):
            error = assert_error(client.request(method, path, json={"instances": []}), 422, field)
            assert error["fields"][0]["reason"] == abc["fields"][0]["reason"], (path, error)
    # Dataset ids are names (ds_...), not numbers: an unknown one is still a 404.
    assert_error(client.get("/datasets/ds_0123456789abcdef"), 404)
    assert_error(client.get("/datasets/ds_0123456789abcdef%20"), 404)


def test_cancel_finished_job_is_409(client: httpx.Client, trained_model: dict) -> None:
    assert trained_model["status"] == "succeeded", trained_model
    assert_error(client.post(f"/jobs/{trained_model['id']}/cancel"), 409)


def test_predict_on_unfinished_job_is_409(client: httpx.Client) -> None:
    # A long job at low priority: whether queued or running, it has no model yet.
    job = client.post(
        "/jobs", json={"model": "mlp", "dataset": "synthetic", "epochs": 500, "priority": -5}
    ).json()
    response = client.post(f"/models/{job['id']}/predict", json={"instances": []})
    assert_error(response, 409)
    assert_error(client.get(f"/models/{job['id']}"), 409)
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200


def test_bad_predict_inputs_are_4xx(client: httpx.Client, trained_model: dict) -> None:
    url = f"/models/{trained_model['id']}/predict"
    good = np.zeros((28, 28), dtype=np.uint8)
    cases = [
        (client.post(url, files=[("files", ("x.png", b"not an image", "image/png"))]), 422, "files[0]"),
        (client.post(url, files=[("files", ("x.png", b"", "image/png"))]), 422, "files[0]"),
        (client.post(url, files=[("files", ("a.png", png_bytes(good), "image/png")),
                                 ("files", ("b.txt", b"hello", "text/plain"))]), 422, "files[1]"),
        (client.post(url, files=[("other", ("x.png", png_bytes(good), "image/png"))]), 422, "files"),
        (client.post(url, json={"instances": [np.zeros((27, 28)).tolist()]}), 422, "instances[0]"),
        (client.post(url, json={"instances": [np.zeros((28, 28, 3)).tolist()]}), 422, "instances[0]"),
        (client.post(url, json={"instances": [[[300] * 28] * 28]}), 422, "instances[0]"),
        (client.post(url, json={"instances": [[["a"] * 28] * 28]}), 422, "instances[0]"),
        (client.post(url, json={"instances": []}), 422, "instances"),
        (client.post(url, json={"pixels": []}), 422, "instances"),
        (client.post(url, json={"instances": as_instances(np.zeros((257, 28, 28)))}), 422, "instances"),
        (client.post(url, content=b"{oops", headers={"content-type": "application/json"}), 422, "body"),
        (client.post(url, content=b'{"instances": [], "instances": [[[0]]]}',
                     headers={"content-type": "application/json"}), 422, "instances"),
        (client.post(url, content=b'{"instances": %s, "seed": 1, "seed": 2}' % json.dumps(
            as_instances(good[None])).encode(), headers={"content-type": "application/json"}),
         422, "seed"),
        (client.post(url, content=b"hi", headers={"content-type": "text/plain"}), 415, None),
    ]  # fmt: skip
    for response, status, field in cases:
        assert_error(response, status, field)
    too_many = [("files", (f"{i}.png", png_bytes(good), "image/png")) for i in range(257)]
    assert_error(client.post(url, files=too_many), 422, "files")


def test_oversized_body_is_413(tmp_path: Path, start_server) -> None:
    server = start_server(
        f"sqlite:///{tmp_path / 'db.sqlite'}", workers=1,
        env={"TRAINSERVE_MAX_UPLOAD_BYTES": "1000"},
    )  # fmt: skip
    client = httpx.Client(base_url=server.url, timeout=60)
    job = client.post(
        "/jobs", json={"model": "softmax", "dataset": "synthetic", "epochs": 1}
    ).json()
    wait_for_status(client, job["id"], {"succeeded"})
    url = f"/models/{job['id']}/predict"
    big = {"instances": as_instances(np.full((2, 28, 28), 200))}
    assert_error(client.post(url, json=big), 413)
    # Multipart with no Content-Length (chunked): the whole body is held to the limit, not
    # each part. Three ~450-byte PNGs pass any per-part bound and go over 1000 bytes together.
    noise = np.random.default_rng(0).integers(0, 256, (3, 20, 20), dtype=np.uint8)
    parts = [(f"{k}.png", png_bytes(image)) for k, image in enumerate(noise)]
    assert all(len(data) < 1000 for _, data in parts)
    body, content_type = _multipart(parts)
    assert len(body) > 1000
    for send in (lambda: iter([body]), lambda: body):  # chunked, then with a Content-Length
        response = client.post(url, content=send(), headers={"content-type": content_type})
        assert_error(response, 413)
    small, content_type = _multipart([("z.png", png_bytes(np.zeros((4, 4), np.uint8)))])
    ok = client.post(url, content=iter([small]), headers={"content-type": content_type})
    assert ok.status_code == 200, ok.text


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "trainserve-test-boundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_idempotency_key_reused_for_another_body_is_422(client: httpx.Client) -> None:
    body = {"model": "softmax", "dataset": "synthetic", "epochs": 1, "priority": -9}
    headers = {"Idempotency-Key": "bad-input-reuse"}
    first = client.post("/jobs", json=body, headers=headers)
    assert first.status_code == 201, first.text
    # A retry of the same body (no seed: the service draws one each time) is the same job.
    assert client.post("/jobs", json=body, headers=headers).json()["id"] == first.json()["id"]
    before = client.get("/jobs").json()["count"]
    for changed in ({**body, "epochs": 2}, {**body, "seed": 7}, {**body, "priority": 0}):
        error = assert_error(client.post("/jobs", json=changed, headers=headers), 422)
        assert error["fields"][0]["field"] == "Idempotency-Key"
        assert str(first.json()["id"]) in error["message"]
    assert client.get("/jobs").json()["count"] == before
    client.post(f"/jobs/{first.json()['id']}/cancel")
    # An empty key is no key to share between clients: refused, not stored.
    empty = client.post("/jobs", json=body, headers={"Idempotency-Key": ""})
    assert assert_error(empty, 422)["fields"][0]["field"] == "Idempotency-Key"
    # Whitespace around the value is not part of the key (httpx will not send it: raw HTTP).
    status, answer = raw_post(client, "/jobs", body, "Idempotency-Key: bad-input-reuse \t")
    assert status == 201 and answer["id"] == first.json()["id"]
    status, answer = raw_post(client, "/jobs", body, "Idempotency-Key:  \t ")
    assert status == 422 and answer["error"]["fields"][0]["field"] == "Idempotency-Key"
    # Two keys: which one the client meant cannot be told, so neither is used.
    two = [("Idempotency-Key", "bad-input-reuse"), ("Idempotency-Key", "another")]
    for path, payload in (("/jobs", body), ("/sweeps", {"base": body, "grid": {"lr": [0.1]}})):
        error = assert_error(client.post(path, json=payload, headers=two), 422)
        assert error["fields"] == [{"field": "Idempotency-Key", "reason": "given more than once"}]
    assert client.get("/jobs").json()["count"] == before


def test_job_and_sweep_bodies_must_be_json(client: httpx.Client) -> None:
    before = client.get("/jobs").json()["count"]
    body = b'{"model": "softmax", "dataset": "synthetic", "epochs": 1}'
    for path in ("/jobs", "/sweeps"):
        # curl -d alone sends a form; httpx's content= sends no content type at all.
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"content-type": content_type} if content_type else {}
            response = client.post(path, content=body, headers=headers)
            assert "application/json" in assert_error(response, 415)["message"]
        compressed = {"content-type": "application/json", "content-encoding": "gzip"}
        response = client.post(path, content=gzip.compress(body), headers=compressed)
        assert "Content-Encoding 'gzip'" in assert_error(response, 415)["message"]
    assert client.get("/jobs").json()["count"] == before
    job = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert job.status_code == 201, job.text
    client.post(f"/jobs/{job.json()['id']}/cancel")


def test_oversized_job_and_sweep_bodies_are_413(client: httpx.Client) -> None:
    before = client.get("/jobs").json()["count"]
    big = b'{"model": "lenet", "name": "' + b"a" * (2 * 1024 * 1024) + b'"}'

    def chunked():  # no Content-Length: the limit must hold while the body streams in
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    json_type = {"content-type": "application/json"}
    for path in ("/jobs", "/sweeps"):
        assert (
            "limit"
            in assert_error(client.post(path, content=big, headers=json_type), 413)["message"]
        )
        assert_error(client.post(path, content=chunked(), headers=json_type), 413)
    assert client.get("/jobs").json()["count"] == before
    assert client.get("/health").status_code == 200


def test_405_names_every_method_of_the_resource(client: httpx.Client) -> None:
    for method, path, allowed in (
        ("DELETE", "/jobs", {"GET", "HEAD", "POST"}),
        ("PUT", "/sweeps", {"GET", "HEAD", "POST"}),
        ("POST", "/health", {"GET", "HEAD"}),
        ("GET", "/sweeps/1/cancel", {"POST"}),
    ):
        response = client.request(method, path)
        assert_error(response, 405)
        assert {m.strip() for m in response.headers["allow"].split(",")} == allowed
