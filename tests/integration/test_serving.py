"""Serving against a live server: dynamic batching, .npy inputs, MC dropout, export parity and
the Open Inference Protocol v2 through the official Triton client."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import socket
import statistics
import time
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer, wait_for_status
from tests.integration.helpers import as_instances, png_bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    state = tmp_path_factory.mktemp("serving")
    live = LiveServer(state, f"sqlite:///{state / 'trainserve.db'}", workers=1).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _train(client: httpx.Client, **fields) -> int:
    body = {"dataset": "synthetic", "epochs": 1, "seed": 1, **fields}
    job = client.post("/jobs", json=body)
    assert job.status_code == 201, job.text
    done = wait_for_status(client, job.json()["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    return int(done["id"])


@pytest.fixture(scope="module")
def models(client: httpx.Client) -> dict[str, int]:
    """A LeNet with dropout 0.5 and a softmax regression (no dropout layers)."""
    return {
        "lenet": _train(client, model="lenet", dropout=0.5),
        "softmax": _train(client, model="softmax"),
    }


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _probabilities(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([p["probabilities"] for p in response.json()["predictions"]])


def _assert_v1_error(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if field is not None:
        assert field in [f["field"] for f in error["fields"]], error


# ---- v1 predict: inputs, determinism, MC dropout -----------------------------------------------


def test_npy_uploads_give_the_json_answer(client: httpx.Client, models: dict[str, int]) -> None:
    url = f"/models/{models['lenet']}/predict"
    images = _images(3)
    expected = client.post(url, json={"instances": as_instances(images)})
    assert expected.status_code == 200
    assert expected.json()["model_id"] == models["lenet"]
    assert set(expected.json()["predictions"][0]) == {"label", "class_name", "probabilities"}
    assert client.post(url, json={"instances": as_instances(images)}).json() == expected.json()
    for body, content_type in [
        (_npy(images), "application/x-npy"),
        (_npy(images[:, None].astype(np.float32)), "application/octet-stream"),
    ]:
        got = client.post(url, content=body, headers={"content-type": content_type})
        assert got.json() == expected.json()
    files = [
        ("files", ("a.npy", _npy(images[:2]), "application/octet-stream")),
        ("files", ("c.png", png_bytes(images[2]), "image/png")),
    ]
    assert client.post(url, files=files).json() == expected.json()
    _assert_v1_error(
        client.post(url, content=b"\x93NUMPY junk", headers={"content-type": "application/x-npy"}),
        422,
        "body",
    )
    _assert_v1_error(
        client.post(url, files=[("files", ("x.npy", b"not numpy", "application/x-npy"))]),
        422,
        "files[0]",
    )
    # a part without a file name (curl -F 'files=<x.png') is text: named, not skipped
    png = ("c.png", png_bytes(images[2]), "image/png")
    text_part = client.post(url, data={"files": "boot.pgm"}, files=[("files", png)])
    _assert_v1_error(text_part, 422, "files[0]")
    assert "without a file name" in text_part.json()["error"]["message"], text_part.text


def test_mc_dropout_reproducible_with_seed(client: httpx.Client, models: dict[str, int]) -> None:
    url = f"/models/{models['lenet']}/predict"
    instances = as_instances(_images(2, seed=3))
    plain = client.post(url, json={"instances": instances})
    first = client.post(url, params={"mc_dropout": 20, "seed": 5}, json={"instances": instances})
    assert first.status_code == 200, first.text
    again = client.post(url, json={"instances": instances, "mc_dropout": 20, "seed": 5})
    assert again.json() == first.json()
    for p in first.json()["predictions"]:
        assert p["mc_dropout"] == 20 and len(p["std"]) == 10 and max(p["std"]) > 0
        assert abs(sum(p["probabilities"]) - 1) < 1e-6
    other = client.post(url, params={"mc_dropout": 20, "seed": 6}, json={"instances": instances})
    assert _probabilities(other).tolist() != _probabilities(first).tolist()
    # The deterministic path is untouched by the MC passes.
    assert client.post(url, json={"instances": instances}).json() == plain.json()


def test_mc_dropout_errors(client: httpx.Client, models: dict[str, int]) -> None:
    instances = {"instances": as_instances(_images(1))}
    softmax = f"/models/{models['softmax']}/predict"
    _assert_v1_error(client.post(softmax, params={"mc_dropout": 5}, json=instances), 422,
                     "mc_dropout")  # fmt: skip
    lenet = f"/models/{models['lenet']}/predict"
    for params in ({"mc_dropout": 0}, {"mc_dropout": 101}, {"mc_dropout": "x"}):
        _assert_v1_error(client.post(lenet, params=params, json=instances), 422, "mc_dropout")
    _assert_v1_error(client.post(lenet, params={"seed": -1}, json=instances), 422, "seed")
    _assert_v1_error(client.post(lenet, json={**instances, "mc_dropout": True}), 422,
                     "mc_dropout")  # fmt: skip
    # Nothing is dropped in silence: a misspelt key, two different values, a seed with nothing
    # to seed, a form field beside the files.
    _assert_v1_error(client.post(lenet, json={**instances, "mc_droput": 20}), 422, "mc_droput")
    _assert_v1_error(client.post(lenet, params={"mc_dropout": 3},
                                 json={**instances, "mc_dropout": 7}), 422, "mc_dropout")  # fmt: skip
    _assert_v1_error(client.post(lenet, params={"seed": 3}, json=instances), 422, "seed")
    _assert_v1_error(client.post(lenet, json={**instances, "seed": 3}), 422, "seed")
    files = {"files": ("x.png", png_bytes(_images(1)[0]), "image/png")}
    _assert_v1_error(client.post(lenet, files=files, data={"mc_dropout": "5"}), 422, "mc_dropout")
    same = client.post(lenet, params={"mc_dropout": 3, "seed": 1},
                       json={**instances, "mc_dropout": 3, "seed": 1})  # fmt: skip
    assert same.status_code == 200 and same.json()["predictions"][0]["mc_dropout"] == 3


def test_query_parameters_are_checked_like_body_keys(
    client: httpx.Client, models: dict[str, int]
) -> None:
    """Unicode digits, misspelt and repeated parameters: a 422 naming the parameter."""
    lenet = f"/models/{models['lenet']}/predict"
    instances = {"instances": as_instances(_images(1))}
    files = {"files": ("x.png", png_bytes(_images(1)[0]), "image/png")}
    cases = [
        ("mc_dropout=%C2%B2", "mc_dropout"),  # '²': isdigit() but not int()
        ("mc_dropout=%D9%A3", "mc_dropout"),  # Arabic-Indic 3: not taken as 3
        ("mc_dropout=%202", "mc_dropout"),  # ' 2': digits as written, as in the list queries
        ("mc_dropout=2&seed=1%20", "seed"),
        ("mc_dropout=2&seed=%C2%B2", "seed"),
        ("mc_droput=20", "mc_droput"),
        ("mc_dropout=2&mc_dropout=3", "mc_dropout"),
        ("batching=false&batching=false", "batching"),
    ]
    for query, field in cases:
        _assert_v1_error(client.post(f"{lenet}?{query}", json=instances), 422, field)
        _assert_v1_error(client.post(f"{lenet}?{query}", files=files), 422, field)
    ok = client.post(f"{lenet}?mc_dropout=2&seed=1&batching=false", files=files)
    assert ok.status_code == 200 and ok.json()["seed"] == 1


def test_mc_dropout_is_held_to_the_queue_bound(server: LiveServer, models: dict[str, int]) -> None:
    """64 images × 100 passes = 6400 image passes, over the 1024-image queue: one at a time."""
    url = f"{server.url}/models/{models['lenet']}/predict?mc_dropout=100&seed=1"
    body = {"instances": as_instances(_images(64))}

    async def flood() -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(timeout=120) as ac:
            requests = [ac.post(url, json=body) for _ in range(4)]
            responses = asyncio.gather(*requests)
            await asyncio.sleep(0.2)
            start = time.perf_counter()
            await ac.get(f"{server.url}/health")
            health = time.perf_counter() - start
            return await responses, health

    responses, health = asyncio.run(flood())
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "overloaded"
    assert health < 2.0  # the MC passes run on the forward thread, not beside the event loop


# ---- batching ----------------------------------------------------------------------------------


def test_concurrent_requests_are_batched(server: LiveServer, models: dict[str, int]) -> None:
    model = models["lenet"]
    images = _images(48, seed=9)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        before = c.get(f"/v2/models/{model}/stats").json()
        alone = _probabilities(
            c.post(
                f"/models/{model}/predict",
                params={"batching": "false"},
                json={"instances": as_instances(images)},
            )  # fmt: skip
        )

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as ac:
            return await asyncio.gather(
                *(
                    ac.post(
                        f"/models/{model}/predict",
                        content=_npy(image),
                        headers={"content-type": "application/x-npy"},
                    )  # fmt: skip
                    for image in images
                )
            )

    responses = asyncio.run(fire())
    batched = np.concatenate([_probabilities(r) for r in responses])
    np.testing.assert_allclose(batched, alone, atol=1e-6)  # same answers, other batch sizes
    after = httpx.get(f"{server.url}/v2/models/{model}/stats").json()
    assert after["requests"] - before["requests"] >= 48
    assert after["largest_batch"] > 1  # some forward pass served several requests
    assert after["batches"] - before["batches"] < 48 + 1


def test_no_wait_when_idle_and_full_queue_is_503(
    server: LiveServer, models: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second API process on the same database: a long max delay and a one-image queue."""
    env = {"TRAINSERVE_BATCH_MAX_DELAY_MS": "400", "TRAINSERVE_BATCH_QUEUE_SIZE": "1"}
    tight = LiveServer(server.state_dir, server.database_url, workers=0, env=env).start()
    try:
        url = f"{tight.url}/models/{models['lenet']}/predict"
        body = {"instances": as_instances(_images(1))}
        with httpx.Client(timeout=60) as c:
            assert c.post(url, json=body).status_code == 200  # loads the model
            times = []
            for _ in range(5):
                start = time.perf_counter()
                assert c.post(url, json=body).status_code == 200
                times.append(time.perf_counter() - start)
        assert statistics.median(times) < 0.3  # an idle model does not wait the 0.4 s delay

        big = _npy(np.random.default_rng(0).integers(0, 256, (8, 512, 512), dtype=np.uint8))

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as ac:
                return await asyncio.gather(
                    *(
                        ac.post(url, content=big, headers={"content-type": "application/x-npy"})
                        for _ in range(12)
                    )  # fmt: skip
                )

        responses = asyncio.run(flood())
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        assert 200 in statuses and 503 in statuses, statuses
        for r in responses:
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["code"] == "overloaded"
    finally:
        tight.stop()


# ---- export ------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated
def test_export_parity(client: httpx.Client, models: dict[str, int]) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    model = models["lenet"]
    images = _images(4, seed=11)
    expected = _probabilities(
        client.post(f"/models/{model}/predict", json={"instances": as_instances(images)})
    )
    pixels = images[:, None].astype(np.float32)  # (N, 1, 28, 28), values 0-255

    onnx = client.get(f"/models/{model}/export", params={"format": "onnx"})
    assert onnx.status_code == 200 and ".onnx" in onnx.headers["content-disposition"]
    session = ort.InferenceSession(onnx.content, providers=["CPUExecutionProvider"])
    (got,) = session.run(["probabilities"], {"input": pixels})
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    script = client.get(f"/models/{model}/export", params={"format": "torchscript"})
    assert script.status_code == 200
    module = torch.jit.load(io.BytesIO(script.content))
    with torch.no_grad():
        got = module(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    weights = client.get(f"/models/{model}/export", params={"format": "safetensors"})
    assert weights.status_code == 200 and weights.content
    _assert_v1_error(client.get(f"/models/{model}/export", params={"format": "pkl"}), 422,
                     "format")  # fmt: skip
    _assert_v1_error(client.get(f"/models/{model}/export"), 422, "format")
    _assert_v1_error(client.get(f"/models/{model}/export?format=onnx&format=pkl"), 422, "format")
    _assert_v1_error(client.get(f"/models/{model}/export?format=onnx&fromat=onnx"), 422, "fromat")
    _assert_v1_error(client.get("/models/999999/export", params={"format": "onnx"}), 404)


# ---- Open Inference Protocol v2 ----------------------------------------------------------------


def test_v2_with_the_triton_client(
    server: LiveServer, client: httpx.Client, models: dict[str, int]
) -> None:
    http = pytest.importorskip("tritonclient.http")
    model = str(models["lenet"])
    images = _images(3, seed=4)
    expected = _probabilities(
        client.post(f"/models/{model}/predict", json={"instances": as_instances(images)})
    )
    triton = http.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        assert triton.is_server_live() and triton.is_server_ready()
        assert triton.get_server_metadata()["name"] == "trainserve"
        assert triton.is_model_ready(model)
        meta = triton.get_model_metadata(model)
        assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
        assert meta["outputs"][0]["shape"] == [-1, 10]

        cases = [
            (images[:, None].astype(np.float32), "FP32"),  # [N, 1, H, W]
            (images, "UINT8"),  # [N, H, W]
        ]
        for array, datatype in cases:
            tensor = http.InferInput("input", list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=False)
            wanted = [http.InferRequestedOutput("probabilities", binary_data=False)]
            result = triton.infer(
                model, [tensor], outputs=wanted, request_id="req-7",
                request_compression_algorithm="gzip" if datatype == "UINT8" else None,
            )  # fmt: skip
            got = result.as_numpy("probabilities")
            assert got.shape == (3, 10) and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, atol=1e-6)
            assert result.get_response()["id"] == "req-7"
    finally:
        triton.close()


def test_v2_errors_and_health(client: httpx.Client, models: dict[str, int]) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["name"] == "trainserve"
    model = models["lenet"]
    assert client.get(f"/v2/models/{model}/versions/1").json()["versions"] == ["1"]
    good = {"name": "input", "shape": [1, 28, 28], "datatype": "UINT8",
            "data": _images(1).flatten().tolist()}  # fmt: skip
    ok = client.post(f"/v2/models/{model}/versions/1/infer", json={"inputs": [good]})
    assert ok.status_code == 200 and "id" not in ok.json()
    mc = client.post(f"/v2/models/{model}/infer",
                     json={"inputs": [good], "parameters": {"mc_dropout": 5, "seed": 1}})  # fmt: skip
    assert [o["name"] for o in mc.json()["outputs"]] == ["probabilities", "std"]

    def error(response: httpx.Response, status: int) -> str:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
        return body["error"]

    error(client.get("/v2/models/999999"), 404)
    for name in ("%C2%B2", "%D9%A3", "-1", "%201"):  # '²' and '٣' are isdigit(), not ids
        error(client.get(f"/v2/models/{name}"), 404)
        error(client.get(f"/v2/models/{name}/ready"), 404)
        error(client.post(f"/v2/models/{name}/infer", json={"inputs": [good]}), 404)
    # A seed with nothing to seed is refused, as in v1 (400: the protocol's bad request).
    seed_only = client.post(f"/v2/models/{model}/infer",
                            json={"inputs": [good], "parameters": {"seed": 1}})  # fmt: skip
    assert "seed" in error(seed_only, 400)
    error(client.get("/v2/models/999999/stats"), 404)
    error(client.get("/v2/models/abc/ready"), 404)
    error(client.post("/v2/models/999999/infer", json={"inputs": [good]}), 404)
    error(client.get(f"/v2/models/{model}/versions/2"), 404)
    infer = f"/v2/models/{model}/infer"
    bad_tensors = [
        {**good, "datatype": "INT64"},
        {**good, "shape": [1, 3, 28, 28]},
        {**good, "data": good["data"][:-1]},
        {**good, "data": [300] * 784},
        {**good, "name": "pixels"},
    ]
    for tensor in bad_tensors:
        error(client.post(infer, json={"inputs": [tensor]}), 400)
    error(client.post(infer, content=b"{oops", headers={"content-type": "application/json"}), 400)
    # A key given twice is refused, not resolved by keeping the last (at any depth).
    tensor = json.dumps(good)[1:-1].encode()
    for raw, field in ((b'{"inputs": [{%s, "name": "input"}]}' % tensor, "inputs[0].name"),
                       (b'{"inputs": [{%s}], "id": "a", "id": "b"}' % tensor, "id")):  # fmt: skip
        repeated = client.post(infer, content=raw, headers={"content-type": "application/json"})
        assert error(repeated, 400) == f"{field}: given more than once in the body"
    error(client.post(infer, json={"inputs": []}), 400)
    for not_a_string in (5, {"a": 1}, None):  # the protocol's request id is a string
        assert "id:" in error(client.post(infer, json={"inputs": [good], "id": not_a_string}), 400)
    # Paths and methods no route takes, and bodies the JSON decoder gives up on, answer in the
    # protocol's shape too (tritonclient cannot read the REST one).
    error(client.get(f"/v2/models/{model}/config"), 404)
    error(client.get("/v2/repository/index"), 404)
    error(client.get(infer), 405)
    deep = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    json_header = {"content-type": "application/json"}
    assert "nested too deeply" in error(client.post(infer, content=deep, headers=json_header), 400)
    predict = f"/models/{model}/predict"
    nested = client.post(
        predict, content=deep.replace(b"inputs", b"instances"), headers=json_header
    )
    assert nested.status_code == 422 and "nested too deeply" in nested.text
    # Compressed bodies (tritonclient's request_compression_algorithm) are decompressed.
    request = json.dumps({"inputs": [good]}).encode()
    for encoding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        headers = {**json_header, "content-encoding": encoding}
        packed = client.post(infer, content=compress(request), headers=headers)
        assert packed.status_code == 200 and packed.json()["outputs"] == ok.json()["outputs"]
        instances = json.dumps({"instances": as_instances(_images(1))}).encode()
        assert client.post(predict, content=compress(instances), headers=headers).status_code == 200
    cut = {**json_header, "content-encoding": "gzip"}
    assert "gzip" in error(
        client.post(infer, content=gzip.compress(request)[:-9], headers=cut), 400
    )
    error(
        client.post(infer, content=request, headers={**json_header, "content-encoding": "br"}), 415
    )
    error(client.post(infer, json={"inputs": [good], "outputs": [{"name": "logits"}]}), 400)
    softmax_infer = f"/v2/models/{models['softmax']}/infer"
    error(client.post(softmax_infer, json={"inputs": [good], "parameters": {"mc_dropout": 3}}),
          400)  # fmt: skip
    # A job that has not succeeded is not ready: 400, as Triton answers for an unready model.
    job = client.post("/jobs", json={"model": "mlp", "dataset": "synthetic", "epochs": 500,
                                     "priority": -5}).json()  # fmt: skip
    try:
        error(client.get(f"/v2/models/{job['id']}/ready"), 400)
        error(client.post(f"/v2/models/{job['id']}/infer", json={"inputs": [good]}), 400)
    finally:
        client.post(f"/jobs/{job['id']}/cancel")


def test_v2_outputs_ready_damaged_files_and_clients_that_go_away(
    server: LiveServer, client: httpx.Client, models: dict[str, int]
) -> None:
    model = models["lenet"]
    infer = f"/v2/models/{model}/infer"
    good = {"name": "input", "shape": [1, 28, 28], "datatype": "UINT8",
            "data": _images(1).flatten().tolist()}  # fmt: skip
    mc = {"inputs": [good], "parameters": {"mc_dropout": 3, "seed": 1}}
    # No output named is every output, as Triton answers; one named twice is a 400.
    everything = client.post(infer, json={**mc, "outputs": []})
    assert [o["name"] for o in everything.json()["outputs"]] == ["probabilities", "std"]
    twice = client.post(infer, json={**mc, "outputs": [{"name": "std"}, {"name": "std"}]})
    assert twice.status_code == 400 and "named twice" in twice.json()["error"]

    # A readiness probe loads no model: after it the model is still not loaded.
    spare = _train(client, model="softmax", seed=2)
    assert client.get(f"/v2/models/{spare}/ready").json() == {"name": str(spare), "ready": True}
    assert client.get(f"/models/{spare}").json()["loaded"] is False

    # Damaged files: the model cannot serve (409, /v2: 400), on every path, never a 500.
    weights = server.state_dir / "artifacts" / "jobs" / str(spare) / "model.safetensors"
    weights.write_bytes(b"garbage")
    pixels = {"instances": as_instances(_images(1))}
    for response in (
        client.post(f"/models/{spare}/predict", json=pixels),
        client.get(f"/models/{spare}/export", params={"format": "safetensors"}),
    ):
        assert response.status_code == 409 and "damaged" in response.text, response.text
    for response in (
        client.get(f"/v2/models/{spare}/ready"),
        client.post(f"/v2/models/{spare}/infer", json={"inputs": [good]}),
    ):
        assert response.status_code == 400 and "damaged" in response.json()["error"]

    # A client that goes away mid-body is no server error.
    for path in (infer, f"/models/{model}/predict"):
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(
                f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                'content-length: 1000\r\n\r\n{"inp'.encode()
            )
    time.sleep(0.5)
    assert "unhandled error" not in server.log() and "Exception in ASGI" not in server.log()
    assert client.get("/v2/health/live").status_code == 200


def test_large_json_bodies_answer_as_small_ones(
    client: httpx.Client, models: dict[str, int]
) -> None:
    """A JSON body over 256 KiB is parsed in a decode thread (unit-tested in
    test_inference_uploads); its answers are those of the same images sent alone, on v1 and v2."""
    n = 64
    images = _images(n, seed=3).astype(np.float32) * 0.99
    big = {"name": "input", "shape": [n, 28, 28], "datatype": "FP32",
           "data": images.flatten().tolist()}  # fmt: skip
    body = json.dumps({"inputs": [big]}).encode()
    assert len(body) > 1 << 18
    headers = {"content-type": "application/json"}
    infer = f"/v2/models/{models['lenet']}/infer"
    response = client.post(infer, content=body, headers=headers)
    assert response.status_code == 200, response.text
    got = np.array(response.json()["outputs"][0]["data"]).reshape(n, -1)
    small = {**big, "shape": [1, 28, 28], "data": big["data"][:784]}
    alone = client.post(infer, json={"inputs": [small]}).json()["outputs"][0]["data"]
    assert np.allclose(got[0], alone, atol=1e-5)
    instances = json.dumps({"instances": images.tolist()}).encode()
    assert len(instances) > 1 << 18
    predict = f"/models/{models['lenet']}/predict"
    v1 = _probabilities(client.post(predict, content=instances, headers=headers))
    assert np.allclose(v1, got, atol=1e-5)


def test_an_mc_request_whose_client_left_stops_between_passes(
    server: LiveServer, client: httpx.Client, models: dict[str, int]
) -> None:
    """uvicorn does not cancel a handler whose client has gone: the passes ask between them."""
    model = models["lenet"]
    stats = f"/v2/models/{model}/stats"
    before = client.get(stats).json()
    body = json.dumps({"instances": as_instances(_images(256, seed=5)), "mc_dropout": 100}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(
            f"POST /models/{model}/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
            f"\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.3)  # into the passes
    deadline = time.monotonic() + 30
    while client.get(stats).json()["queued"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = client.get(stats).json()
    assert after["queued"] == 0
    assert after["requests"] == before["requests"]  # it never finished
    assert after["batches"] - before["batches"] < 100
    assert "the client went away; no answer" in server.log()
