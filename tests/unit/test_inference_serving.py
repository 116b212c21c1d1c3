"""service.inference serving parts: the batcher, .npy and OIP tensors, MC dropout, the cache's
byte bound, export parity."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from service import artifacts
from service.inference import (
    Batcher,
    InvalidInput,
    ModelCache,
    ModelNotAvailable,
    QueueFull,
    decode_npy,
    export,
    is_npy,
    tensor_pixels,
)
from service.inference.export import export_model
from tests.unit.saved_models import save_model

CLASSES = [f"class {k}" for k in range(10)]


def _save(artifact_dir: Path, job_id: int, name: str, **kwargs) -> None:
    save_model(artifact_dir, job_id, name, CLASSES, **kwargs)


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    _save(root, 1, "softmax")
    _save(root, 2, "lenet", dropout=0.5)
    _save(root, 3, "mlp", dropout=0.5)
    _save(root, 4, "lenet")  # dropout 0: the layers exist but sample nothing
    return root


@pytest.fixture(scope="module")
def cache(artifact_dir: Path) -> ModelCache:
    return ModelCache(artifact_dir)


def _pixels(n: int, seed: int = 0, side: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side), dtype=np.uint8)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# ---- batcher ---------------------------------------------------------------------------------


class RecordingModel:
    """A stand-in forward: doubles its input, records batch sizes, can be held on a gate."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.seconds = seconds
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(inputs)
        self.gate.wait(5)
        time.sleep(self.seconds)
        self.sizes.append(int(x.shape[0]))
        return x * 2


def test_batcher_batches_concurrent_requests_and_splits_results() -> None:
    model = RecordingModel(seconds=0.02)
    batcher = Batcher(model, max_batch_size=8, max_delay=0.005)

    async def scenario() -> list[torch.Tensor]:
        inputs = [torch.full((1 + k % 2, 3), float(k)) for k in range(20)]
        outputs = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        for x, y in zip(inputs, outputs, strict=True):
            assert torch.equal(y, x * 2)  # each request gets its own rows back
        return outputs

    asyncio.run(scenario())
    assert sum(model.sizes) == 30
    assert max(model.sizes) <= 8  # images, not requests
    assert len(model.sizes) < 20  # fewer forwards than requests: batching happened
    assert batcher.stats.batches == len(model.sizes) and batcher.stats.requests == 20
    assert batcher.queued == 0


def test_batcher_does_not_wait_when_idle() -> None:
    batcher = Batcher(RecordingModel(), max_batch_size=32, max_delay=0.5)

    async def one() -> float:
        start = time.perf_counter()
        await batcher.submit(torch.ones(1, 2))
        return time.perf_counter() - start

    elapsed = asyncio.run(one())
    assert elapsed < 0.25  # far below max_delay: an idle model runs a request at once


def test_batcher_full_queue_raises_at_once_and_recovers() -> None:
    model = RecordingModel()
    model.gate.clear()  # hold the forward: requests pile up
    batcher = Batcher(model, max_batch_size=2, max_delay=0.0, max_queue=4)

    async def scenario() -> None:
        waiting = [asyncio.create_task(batcher.submit(torch.ones(1, 1))) for _ in range(4)]
        await asyncio.sleep(0.05)
        assert batcher.queued == 4
        with pytest.raises(QueueFull) as info:
            await batcher.submit(torch.ones(1, 1))
        assert info.value.retry_after >= 1 and info.value.limit == 4
        with pytest.raises(QueueFull):
            await batcher.run_alone(torch.ones(1, 1))  # the same bound with batching off
        model.gate.set()
        await asyncio.gather(*waiting)
        assert batcher.queued == 0
        assert torch.equal(await batcher.submit(torch.ones(1, 1)), torch.full((1, 1), 2.0))

    asyncio.run(scenario())
    assert batcher.stats.rejected == 2


def test_batcher_failure_reaches_every_request_and_cancelled_requests_are_dropped() -> None:
    def broken(inputs: list[torch.Tensor]) -> torch.Tensor:
        raise RuntimeError("boom")

    batcher = Batcher(broken, max_batch_size=4)

    async def scenario() -> None:
        results = await asyncio.gather(
            *(batcher.submit(torch.ones(1, 1)) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)
        assert batcher.queued == 0

    asyncio.run(scenario())

    model = RecordingModel()
    model.gate.clear()
    batcher = Batcher(model, max_batch_size=1)

    async def cancel() -> None:
        first = asyncio.create_task(batcher.submit(torch.ones(1, 1)))
        second = asyncio.create_task(batcher.submit(torch.ones(1, 1)))
        await asyncio.sleep(0.02)
        second.cancel()  # its client went away while it waited
        model.gate.set()
        await first
        await asyncio.sleep(0.02)
        assert batcher.queued == 0

    asyncio.run(cancel())
    assert model.sizes == [1]


# ---- .npy and OIP tensors --------------------------------------------------------------------


def test_decode_npy_shapes_and_dtypes() -> None:
    images = _pixels(3)
    for array in (images, images[:, None], images.astype(np.float32), images.astype(np.int64)):
        out = decode_npy(_npy(array), "files[0]", max_images=10)
        assert out.shape == (3, 28, 28) and out.dtype == np.uint8
        assert np.array_equal(out, images)
    # an N of 1, or a side under 8 px, says these are gray images 3 or 4 px wide, not colors
    assert decode_npy(_npy(np.zeros((1, 28, 3), np.uint8)), "body", max_images=1).shape == (
        1, 28, 3
    )  # fmt: skip
    assert decode_npy(_npy(np.zeros((5, 4, 3), np.uint8)), "body", max_images=9).shape == (5, 4, 3)
    single = decode_npy(_npy(images[0]), "body", max_images=1)
    assert single.shape == (1, 28, 28)
    fractional = decode_npy(_npy(images[:1] // 2 + np.float32(0.5)), "body", max_images=1)
    assert fractional.dtype == np.float32
    assert is_npy(_npy(images)) and is_npy(b"junk", "x.NPY") and not is_npy(b"\x89PNG", "a.png")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not numpy", "magic"),
        (_npy(np.array([{"a": 1}], dtype=object)), "usable"),  # needs pickle: refused
        (_npy(np.zeros((2, 3, 28, 28), dtype=np.uint8)), "shape"),
        (_npy(np.full((28, 28), 300)), "between 0 and 255"),
        (_npy(np.full((28, 28), np.nan)), "between 0 and 255"),
        (_npy(np.zeros((28, 28), dtype=bool)), "dtype"),
        (_npy(np.zeros((0, 28, 28), dtype=np.uint8)), "no pixels"),
        (_npy(np.zeros((5, 28, 28), dtype=np.uint8)), "at most 4"),
        (_npy(np.zeros((28, 28), dtype=np.uint8))[:-10], ".npy"),
        (_npy(np.zeros((28, 28), dtype=np.uint8)) + b"tail", "4 unexpected byte(s)"),
        (_npy(np.zeros((28, 28, 3), dtype=np.uint8)), "looks like one color image"),
        (_npy(np.zeros((20, 30, 4), dtype=np.uint8)), "looks like one color image"),
        (_npy(np.zeros((1, 4097, 4), dtype=np.uint8)), "4096"),  # too large, not "color"
        (_npy(np.zeros((28, 28), dtype=np.float64)) + b"\0", "1 unexpected byte(s)"),
    ],
)
def test_decode_npy_rejects_bad_arrays(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_npy(data, "files[1]", max_images=4)
    assert info.value.field == "files[1]" and reason in info.value.reason


def test_tensor_pixels_accepts_flat_and_nested_fp32_and_uint8() -> None:
    images = _pixels(2)
    flat = images.flatten().tolist()
    for shape in ([2, 28, 28], [2, 1, 28, 28]):
        for datatype in ("FP32", "UINT8"):
            out = tensor_pixels(flat, shape, datatype, "inputs[0]", max_images=4)
            assert np.array_equal(out, images)
    nested = tensor_pixels(images.tolist(), [2, 28, 28], "FP32", "inputs[0]", max_images=4)
    assert np.array_equal(nested, images)


@pytest.mark.parametrize(
    ("data", "shape", "datatype", "field"),
    [
        ([0] * 784, [1, 28, 28], "INT8", "inputs[0].datatype"),
        ([0] * 784, [1, 2, 28, 28], "FP32", "inputs[0].shape"),
        ([0] * 784, [28, 28], "FP32", "inputs[0].shape"),
        ([0] * 783, [1, 28, 28], "FP32", "inputs[0].data"),
        ([True] * 784, [1, 28, 28], "FP32", "inputs[0].data"),
        (["1"] * 784, [1, 28, 28], "FP32", "inputs[0].data"),
        ([0.5] * 784, [1, 28, 28], "UINT8", "inputs[0].data"),
        ([300] * 784, [1, 28, 28], "UINT8", "inputs[0]"),
        ("abc", [1, 28, 28], "FP32", "inputs[0].data"),
    ],
)
def test_tensor_pixels_rejects_bad_tensors(data, shape, datatype, field) -> None:
    with pytest.raises(InvalidInput) as info:
        tensor_pixels(data, shape, datatype, "inputs[0]", max_images=4)
    assert info.value.field == field


# ---- predictions, MC dropout -----------------------------------------------------------------


def test_prepare_matches_per_image_preprocessing(cache: ModelCache) -> None:
    loaded = cache.get(2)
    images = list(_pixels(3))
    stacked = loaded.prepare(images)
    one_by_one = torch.cat([models.to_model_input(torch.from_numpy(i)[None], 28) for i in images])
    assert torch.equal(stacked, one_by_one)
    assert [p.probabilities for p in loaded.predict(images)] == (
        loaded.probabilities(stacked).tolist()
    )


def test_mc_dropout_is_reproducible_and_leaves_the_eval_model_alone(cache: ModelCache) -> None:
    loaded = cache.get(2)  # lenet, dropout 0.5
    assert loaded.has_active_dropout
    batch = loaded.prepare(list(_pixels(4)))
    before = loaded.probabilities(batch)
    rng_state = torch.get_rng_state()
    mean, std = loaded.mc_dropout(batch, 20, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global generator is untouched
    again_mean, again_std = loaded.mc_dropout(batch, 20, seed=7)
    assert torch.equal(mean, again_mean) and torch.equal(std, again_std)
    other, _ = loaded.mc_dropout(batch, 20, seed=8)
    assert not torch.equal(mean, other)
    assert mean.shape == std.shape == (4, 10) and (std > 0).all()
    assert torch.allclose(mean.sum(1), torch.ones(4, dtype=torch.float64))
    assert not loaded.model.training
    assert torch.equal(loaded.probabilities(batch), before)  # bit-identical after MC


def test_mc_dropout_is_not_moved_by_other_draws_from_the_global_generator(
    cache: ModelCache,
) -> None:
    """Another thread drawing from torch's global generator during the passes (a model being
    built initialises its weights from it) must not change a seeded request's answer."""
    loaded = cache.get(2)  # lenet, dropout 0.5
    batch = loaded.prepare(list(_pixels(4)))
    alone = loaded.mc_dropout(batch, 5, seed=3)
    network = loaded._mc_network()

    def another_thread_draws(*_: object) -> None:
        torch.rand(1000)

    meanwhile = network.register_forward_pre_hook(another_thread_draws)
    try:
        interleaved = loaded.mc_dropout(batch, 5, seed=3)
    finally:
        meanwhile.remove()
    assert torch.equal(alone[0], interleaved[0]) and torch.equal(alone[1], interleaved[1])


def test_mc_dropout_models_without_active_dropout(cache: ModelCache) -> None:
    assert not cache.get(1).has_active_dropout  # softmax: no dropout layers
    assert not cache.get(4).has_active_dropout  # lenet at p = 0
    assert cache.get(3).has_active_dropout
    with pytest.raises(ValueError):
        cache.get(3).mc_dropout(cache.get(3).prepare(list(_pixels(1))), 101, seed=0)


# ---- cache -----------------------------------------------------------------------------------


def test_cache_is_bounded_by_bytes(artifact_dir: Path) -> None:
    sizes = {job: ModelCache(artifact_dir).get(job).nbytes for job in (1, 2, 3)}
    assert all(size > 0 for size in sizes.values())
    cache = ModelCache(artifact_dir, max_models=8, max_bytes=sizes[1] + sizes[2])
    cache.get(1)
    cache.get(2)
    assert cache.loaded_job_ids() == [1, 2] and cache.nbytes() == sizes[1] + sizes[2]
    cache.get(3)  # mlp is larger than both: the others go, it stays alone
    assert cache.loaded_job_ids() == [3]
    assert cache.peek(3) is cache.get(3) and cache.peek(1) is None


def test_an_mc_dropout_copy_counts_in_the_bytes_and_the_others_make_room(
    artifact_dir: Path,
) -> None:
    lenet = ModelCache(artifact_dir).get(2).nbytes
    softmax = ModelCache(artifact_dir).get(1).nbytes
    cache = ModelCache(artifact_dir, max_bytes=2 * lenet + softmax // 2)
    cache.get(1)
    loaded = cache.get(2)
    assert cache.loaded_job_ids() == [1, 2]
    loaded.mc_dropout(loaded.prepare(list(_pixels(2))), passes=2, seed=0)  # makes its copy
    assert loaded.nbytes == 2 * lenet
    assert cache.peek(2) is loaded and cache.loaded_job_ids() == [2]  # softmax made room


def _description_with(**changes: object) -> Callable[[bytes], bytes]:
    return lambda data: json.dumps({**json.loads(data), **changes}).encode()


def _nan_weights(data: bytes) -> bytes:
    """The same header, with the last 64 bytes of data (floats) made NaN."""
    return data[:-64] + b"\xff" * 64


@pytest.mark.parametrize(
    ("name", "damage", "caught_by_the_check"),
    [
        ("model.safetensors", lambda d: b"garbage", True),
        ("model.safetensors", lambda d: d[: len(d) // 2], True),  # truncated
        ("model.safetensors", _nan_weights, False),  # only loading reads the data
        ("model.json", lambda d: b"{bad json", True),
        ("model.json", lambda d: b'{"job_id": 5}', True),  # fields missing
        ("model.json", lambda d: b"[]", True),
        ("model.json", _description_with(input_side="x"), True),
        ("model.json", _description_with(input_side=100_000), True),  # had allocated 40 GB
        ("model.json", _description_with(class_names=["a", "b", "c"]), True),
        ("model.json", _description_with(model="nope"), True),
        (
            "model.json",
            _description_with(model="softmax", model_kwargs={}),
            True,
        ),  # not its weights
        ("model.json", _description_with(input_side=20), False),  # a forward finds it
    ],
)
def test_damaged_model_files_are_not_available_not_a_crash(
    tmp_path: Path, name: str, damage: Callable[[bytes], bytes], caught_by_the_check: bool
) -> None:
    _save(tmp_path, 5, "lenet", dropout=0.5)
    path = tmp_path / "jobs" / "5" / name
    path.write_bytes(damage(path.read_bytes()))
    cache = ModelCache(tmp_path)
    if caught_by_the_check:
        with pytest.raises(ModelNotAvailable, match="damaged and cannot be loaded"):
            cache.check_servable(5)
    with pytest.raises(ModelNotAvailable, match="damaged and cannot be loaded"):
        cache.get(5)
    assert len(cache) == 0


def test_files_damaged_after_the_model_loaded_are_found_when_asked(tmp_path: Path) -> None:
    """Export sends the stored weights file: checked even though the model is loaded."""
    _save(tmp_path, 5, "lenet")
    cache = ModelCache(tmp_path)
    cache.get(5)
    (tmp_path / "jobs" / "5" / "model.safetensors").write_bytes(b"3000 random bytes")
    cache.check_servable(5)  # loaded: a probe does not read files
    with pytest.raises(ModelNotAvailable, match="damaged"):
        cache.check_servable(5, files_too=True)


def test_a_servable_check_loads_nothing(artifact_dir: Path) -> None:
    cache = ModelCache(artifact_dir, max_models=1)
    cache.get(1)
    for job_id in (2, 3, 4):
        cache.check_servable(job_id)
    assert cache.loaded_job_ids() == [1]
    with pytest.raises(ModelNotAvailable, match="missing"):
        cache.check_servable(99)


# ---- export ------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated
@pytest.mark.parametrize("job_id", [1, 2])
def test_export_parity_onnx_and_torchscript(
    cache: ModelCache, artifact_dir: Path, job_id: int
) -> None:
    ort = pytest.importorskip("onnxruntime")
    loaded = cache.get(job_id)
    pixels = _pixels(5, seed=job_id)
    expected = loaded.probabilities(loaded.prepare(list(pixels))).numpy()
    inputs = pixels[:, None].astype(np.float32)  # (N, 1, 28, 28) values 0-255

    onnx_path = export_model(artifact_dir, loaded, "onnx")
    assert export_model(artifact_dir, loaded, "onnx") == onnx_path  # written once
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    (got,) = session.run(["probabilities"], {"input": inputs})
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    script = torch.jit.load(str(export_model(artifact_dir, loaded, "torchscript")))
    with torch.no_grad():
        got = script(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    weights = export_model(artifact_dir, loaded, "safetensors")
    assert weights.name == "model.safetensors"


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated
def test_concurrent_exports_of_different_models(tmp_path: Path) -> None:
    """torch's ONNX exporter and tracer keep process-wide state: two at once failed with
    "GLOBALS.in_onnx_export must be False" (a 500 to two users exporting different models)."""
    for job_id, name in enumerate(["softmax", "lenet", "mlp", "lenet"], start=1):
        _save(tmp_path, job_id, name)
    cache = ModelCache(tmp_path)
    loaded = [cache.get(job_id) for job_id in range(1, 5)]
    tasks = [(m, fmt) for m in loaded for fmt in ("onnx", "torchscript")]
    with ThreadPoolExecutor(len(tasks)) as pool:
        paths = list(pool.map(lambda task: export_model(tmp_path, *task), tasks))
    assert len(set(paths)) == len(tasks) and all(p.stat().st_size > 0 for p in paths)
    for (model, fmt), path in zip(tasks, paths, strict=True):
        if fmt == "torchscript":
            script = torch.jit.load(str(path))
            pixels = torch.from_numpy(_pixels(2)[:, None].astype(np.float32))
            expected = model.probabilities(model.prepare(list(_pixels(2))))
            torch.testing.assert_close(script(pixels), expected.float(), atol=1e-4, rtol=0)


def test_export_from_a_read_only_artifact_dir(
    cache: ModelCache, artifact_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only artifact volume still exports: the file goes to a temp dir, once."""
    real_write = artifacts.atomic_write_bytes
    written: list[Path] = []

    def read_only_artifacts(path: Path, data: bytes) -> None:
        if path.resolve().is_relative_to(artifact_dir.resolve()):
            raise OSError(30, "Read-only file system", str(path))
        written.append(path)
        real_write(path, data)

    monkeypatch.setattr(artifacts, "atomic_write_bytes", read_only_artifacts)
    loaded = cache.get(3)  # not exported by the tests above (the directory is module-wide)
    path = export_model(artifact_dir, loaded, "torchscript")
    assert not path.resolve().is_relative_to(artifact_dir.resolve()) and path.stat().st_size > 0
    assert export_model(artifact_dir, loaded, "torchscript") == path and written == [path]
    export.remove_fallback_files()  # what runs at exit
    assert not path.exists()
    assert export_model(artifact_dir, loaded, "torchscript").is_file()  # a new temp dir
    export.remove_fallback_files()
