"""Uploaded files on the predict path: decoded off the event loop, one full-size image at a
time, within a per-request pixel budget; integer TIFFs read by their bit depth; MC dropout
held to the model's queue bound."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from service.api.params import decimal_int
from service.inference import (
    Abandoned,
    Batcher,
    DecodeBusy,
    InvalidInput,
    ModelCache,
    QueueFull,
    Serving,
    decode_image,
    uploads,
)
from service.inference.images import MAX_PIXELS
from service.inference.serving import JSON_INLINE_BYTES, MAX_JSON_BACKLOG
from tests.unit.saved_models import save_model

CLASSES = [f"class {k}" for k in range(10)]
FULL_SIZE = 4096


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    root: Path = tmp_path_factory.mktemp("artifacts")
    save_model(root, 1, "softmax", CLASSES)
    save_model(root, 2, "lenet", CLASSES, dropout=0.5)
    return ModelCache(root)


@pytest.fixture(scope="module")
def blank_full_size_png() -> bytes:
    """16 KB compressed, 16.7 Mpx decoded: the probe's memory bomb."""
    return _encode(Image.new("L", (FULL_SIZE, FULL_SIZE)), "PNG")


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _pixels(n: int, side: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side), dtype=np.uint8)


# ---- decoding: bit depth of integer images ---------------------------------------------------


def test_32bit_integer_tiff_holds_pixel_values() -> None:
    pixels = _pixels(1)[0]
    tiff = _encode(Image.fromarray(pixels.astype(np.int32)), "TIFF")
    assert Image.open(io.BytesIO(tiff)).mode == "I"
    np.testing.assert_array_equal(decode_image(tiff, "files[0]"), pixels)  # not / 257
    compressed = _encode(Image.fromarray(pixels.astype(np.int32)), "TIFF",
                         compression="tiff_adobe_deflate")  # fmt: skip
    np.testing.assert_array_equal(decode_image(compressed, "files[0]"), pixels)


def test_32bit_integer_tiff_outside_0_255_is_refused() -> None:
    wide = (_pixels(1)[0].astype(np.int32)) * 257
    with pytest.raises(InvalidInput) as info:
        decode_image(_encode(Image.fromarray(wide), "TIFF"), "files[2]")
    assert info.value.field == "files[2]" and "0 to 65535" in info.value.reason


def test_float_tiff_holds_pixel_values_and_nothing_else() -> None:
    pixels = _pixels(1)[0]
    tiff = _encode(Image.fromarray(pixels.astype(np.float32)), "TIFF")
    assert Image.open(io.BytesIO(tiff)).mode == "F"
    np.testing.assert_array_equal(decode_image(tiff, "files[0]"), pixels)
    for bad, words in ((1000.0, "0–255"), (-5.0, "0–255"), (np.nan, "NaN")):
        values = pixels.astype(np.float32)
        values[3, 4] = bad
        with pytest.raises(InvalidInput) as info:  # not clipped into another image
            decode_image(_encode(Image.fromarray(values), "TIFF"), "files[1]")
        assert info.value.field == "files[1]" and words in info.value.reason


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "PPM"])
def test_16bit_files_are_still_scaled_by_257(fmt: str) -> None:
    pixels = _pixels(1)[0]
    data = _encode(Image.fromarray(pixels.astype(np.uint16) * 257), fmt)
    np.testing.assert_array_equal(decode_image(data, "f"), pixels)


def test_pgm_with_a_maxval_over_255_is_scaled_to_its_maxval() -> None:
    pgm = b"P5 2 1 1000\n" + np.array([0, 1000], ">u2").tobytes()
    np.testing.assert_array_equal(decode_image(pgm, "f"), [[0, 255]])


# ---- uploads to the model's input ----------------------------------------------------------


def test_uploads_give_exactly_the_batched_preprocessing(cache: ModelCache) -> None:
    """Preparing each file as it is decoded changes no number: resizing is per image."""
    loaded = cache.get(2)
    small, odd = _pixels(3), _pixels(2, side=40, seed=1)
    files = [("a.png", _encode(Image.fromarray(small[0]), "PNG")),
             ("b.npy", _npy(small[1:])),
             ("c.png", _encode(Image.fromarray(odd[0]), "PNG")),
             (None, _encode(Image.fromarray(odd[1]), "PNG"))]  # fmt: skip
    got = uploads.uploads_to_model_input(loaded, files, max_images=256)
    expected = loaded.prepare([*small, *odd])
    assert got.shape == (5, 1, 28, 28) and torch.equal(got, expected)


def test_a_request_holds_one_full_size_image_at_a_time(
    cache: ModelCache, blank_full_size_png: bytes
) -> None:
    files = [(f"{k}.png", blank_full_size_png) for k in range(4)]
    tracemalloc.start()
    try:
        got = uploads.uploads_to_model_input(cache.get(1), files, max_images=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.shape == (4, 1, 28, 28) and float(got.abs().max()) == 0.0
    # Decoding keeps ~2 copies of one image (16.7 MB each); holding all four would be 67 MB+.
    assert peak < 3 * MAX_PIXELS, f"peak {peak / 1e6:.0f} MB of numpy arrays"


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> int:
    """A request's pixel budget of three 64x64 images."""
    pixels = 3 * 64 * 64
    monkeypatch.setattr(uploads, "MAX_REQUEST_PIXELS", pixels)
    monkeypatch.setattr("service.inference.images.MAX_REQUEST_PIXELS", pixels)
    return pixels


def test_request_pixel_budget_names_the_file(cache: ModelCache, budget: int) -> None:
    png = _encode(Image.fromarray(_pixels(1, side=64)[0]), "PNG")
    assert len(uploads.uploads_to_model_input(cache.get(1), [(None, png)] * 3, max_images=9)) == 3
    with pytest.raises(InvalidInput) as info:
        uploads.uploads_to_model_input(cache.get(1), [(None, png)] * 4, max_images=9)
    assert info.value.field == "files[3]" and str(budget) in info.value.reason
    with pytest.raises(InvalidInput) as info:
        uploads.uploads_to_model_input(
            cache.get(1), [(None, png), ("x.npy", _npy(_pixels(3, side=64)))], max_images=9
        )
    assert info.value.field == "files[1]"


def test_the_headers_refuse_a_request_past_the_budget_before_any_decoding(
    cache: ModelCache, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """17 blank 4096-px PNGs had 16 decoded (2 s of CPU) before the 17th was refused."""
    decoded: list[str] = []
    real = uploads.decode_image

    def counting(data: bytes, field: str, **kwargs: object) -> np.ndarray:
        decoded.append(field)
        return real(data, field, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(uploads, "decode_image", counting)
    png = _encode(Image.fromarray(_pixels(1, side=64)[0]), "PNG")
    with pytest.raises(InvalidInput) as info:
        uploads.uploads_to_model_input(cache.get(1), [(None, png)] * 4, max_images=9)
    assert info.value.field == "files[3]" and "64×64" in info.value.reason
    assert decoded == []


def test_decoding_leaves_the_event_loop_free(cache: ModelCache, blank_full_size_png: bytes) -> None:
    serving = Serving(cache)
    files = [(None, blank_full_size_png)] * 4

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        lags: list[float] = []

        async def tick() -> None:
            while True:
                start = loop.time()
                await asyncio.sleep(0.01)
                lags.append(loop.time() - start - 0.01)

        ticker = asyncio.create_task(tick())
        start = loop.time()
        await serving.decode_uploads(cache.get(1), files, max_images=256)
        took = loop.time() - start
        ticker.cancel()
        return took, max(lags)

    try:
        took, worst_lag = asyncio.run(scenario())
    finally:
        serving.close()
    assert worst_lag < max(0.3, took / 3), (took, worst_lag)


def test_decode_cost_reads_headers_only(blank_full_size_png: bytes) -> None:
    png = _encode(Image.fromarray(_pixels(1, side=64)[0]), "PNG")
    array = _npy(_pixels(2))
    assert uploads.decode_cost([(None, png), ("a.npy", array)]) == 64 * 64 + len(array)
    assert uploads.decode_cost([(None, blank_full_size_png)]) == MAX_PIXELS
    # no header in its first bytes: its size in bytes stands in
    assert uploads.decode_cost([(None, b"not an image"), (None, b"")]) == len(b"not an image")
    many = [(None, blank_full_size_png)] * 40
    assert uploads.decode_cost(many) == uploads.MAX_REQUEST_PIXELS  # what one request decodes


def test_decode_cost_reads_a_bounded_prefix_within_a_time_budget() -> None:
    """Pillow parsed an 18 MB PNG of empty text chunks for 7 s looking for its data: only the
    first HEADER_PREFIX_BYTES are read, and past the budget sizes in bytes stand in."""
    png = _encode(Image.fromarray(_pixels(1)[0]), "PNG")
    empty_text = b"\x00\x00\x00\x00tEXt" + zlib.crc32(b"tEXt").to_bytes(4, "big")
    stuffed = png[:33] + empty_text * 400_000 + png[33:]  # IHDR, then 4.8 MB of chunks
    started = time.perf_counter()
    # Pillow wants the chunks up to the image data: past the prefix, its bytes stand in
    assert uploads.decode_cost([(None, stuffed)]) == len(stuffed)
    no_header = b"P5 " + b" " * 5_000_000  # a PNM whose size never comes
    assert uploads.decode_cost([(None, no_header)]) == len(no_header)
    assert time.perf_counter() - started < 1.0
    over_budget = uploads.decode_cost([(None, png)] * 3, budget_seconds=0)
    assert over_budget == 3 * len(png)  # no header read at all


def test_decode_backlog_answers_busy_instead_of_a_long_wait(cache: ModelCache) -> None:
    """Uploads queue for 2 decode threads; past the backlog bound a request gets DecodeBusy (the
    API's 503 + Retry-After) at once, and one request alone is always taken."""
    serving = Serving(cache)
    serving.max_decode_backlog = 100
    gate = threading.Event()

    def held() -> torch.Tensor:
        gate.wait(10)
        return torch.zeros(1, 1, 28, 28)

    async def scenario() -> None:
        first = asyncio.ensure_future(serving._decode(80, held))
        await asyncio.sleep(0.05)
        assert serving.decode_backlog == 80
        second = asyncio.ensure_future(serving._decode(20, held))  # 100: still within
        await asyncio.sleep(0.05)
        with pytest.raises(DecodeBusy) as info:
            await serving._decode(1, held)
        assert info.value.retry_after >= 1 and "retry in" in str(info.value)
        gate.set()
        await asyncio.gather(first, second)
        assert serving.decode_backlog == 0
        huge = await serving._decode(10_000, lambda: torch.ones(1))  # alone: taken
        assert float(huge) == 1.0

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        serving.close()


def test_a_large_json_body_is_parsed_in_a_decode_thread_under_the_backlog(
    cache: ModelCache,
) -> None:
    """Parsing 20 MB of JSON numbers takes about a second: a body over JSON_INLINE_BYTES is
    parsed in a decode thread (the event loop keeps answering), counting its bytes against the
    decode backlog; a small one is parsed at once, where it is."""
    serving = Serving(cache)
    gate = threading.Event()

    def where() -> str:
        return threading.current_thread().name

    async def scenario() -> None:
        loop_thread = threading.current_thread().name
        assert await serving.parse_body(b"x" * JSON_INLINE_BYTES, where) == loop_thread
        large = b"x" * (JSON_INLINE_BYTES + 1)
        assert (await serving.parse_body(large, where)).startswith("decode")
        held = asyncio.ensure_future(serving.parse_body(large, lambda: gate.wait(10)))
        await asyncio.sleep(0.05)
        assert serving.decode_backlog == len(large)
        serving.max_decode_backlog = len(large) + 10
        with pytest.raises(DecodeBusy):
            await serving.parse_body(large, where)
        gate.set()
        await held
        assert serving.decode_backlog == 0 == serving.json_backlog
        # Large JSON bodies have a bound of their own too: each parse holds the GIL.
        serving.max_decode_backlog = 10**12
        huge = b"x" * (MAX_JSON_BACKLOG // 2 + 1)
        gate.clear()
        held = asyncio.ensure_future(serving.parse_body(huge, lambda: gate.wait(10)))
        await asyncio.sleep(0.05)
        with pytest.raises(DecodeBusy, match="bytes of JSON"):
            await serving.parse_body(huge, where)
        gate.set()
        await held

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        serving.close()


def test_an_npy_body_is_prepared_a_few_images_at_a_time(
    cache: ModelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same numbers as the batcher's preprocessing, but never a float copy of the whole
    stack: its images reach the model's side NPY_CHUNK_PIXELS at a time."""
    loaded = cache.get(2)
    stack = _pixels(6, side=300, seed=4)
    expected = loaded.prepare(list(stack))
    monkeypatch.setattr(uploads, "NPY_CHUNK_PIXELS", 2 * 300 * 300)
    sizes: list[int] = []
    prepare = loaded.prepare_pixels

    def counted(pixels: np.ndarray) -> torch.Tensor:
        sizes.append(len(pixels))
        return prepare(pixels)

    monkeypatch.setattr(loaded, "prepare_pixels", counted)
    got = uploads.npy_body_to_model_input(loaded, _npy(stack), max_images=256)
    assert got.shape == (6, 1, 28, 28) and torch.equal(got, expected)
    assert sizes == [2, 2, 2]
    with pytest.raises(InvalidInput) as info:
        uploads.npy_body_to_model_input(loaded, b"junk", max_images=256)
    assert info.value.field == "body"


def test_stats_outlive_the_cache_letting_a_model_go(tmp_path: Path) -> None:
    """/v2/models/{id}/stats counts since the server started, also across an eviction."""
    save_model(tmp_path, 1, "softmax", CLASSES)
    save_model(tmp_path, 2, "softmax", CLASSES)
    serving = Serving(ModelCache(tmp_path, max_models=1))
    images = _pixels(1)

    async def predict(job_id: int) -> None:
        await serving.probabilities(serving.cache.get(job_id), images)

    async def scenario() -> None:
        await predict(1)
        await predict(2)  # evicts model 1 from the cache of one
        await predict(2)  # a new batcher: model 1's goes
        assert serving.cache.loaded_job_ids() == [2]
        models = serving.stats()["models"]
        assert models["1"]["requests"] == 1 and models["2"]["requests"] == 2, models
        assert models["1"]["queued"] == 0
        await predict(1)
        assert serving.stats()["models"]["1"]["requests"] == 2

    try:
        asyncio.run(scenario())
    finally:
        serving.close()


def test_a_one_image_spider_file_is_read(tmp_path: Path) -> None:
    """Pillow reads SPIDER; seeking to frame 0 of a one-image file raised EOFError."""
    pixels = _pixels(1, side=20)[0]
    path = tmp_path / "x.spi"
    Image.fromarray(pixels.astype(np.float32)).save(path, "SPIDER")
    assert np.array_equal(decode_image(path.read_bytes(), "files[0]"), pixels)


def test_model_input_keeps_request_order_across_prepared_and_pixel_inputs(
    cache: ModelCache,
) -> None:
    loaded = cache.get(1)
    a, b, c = _pixels(2, seed=1), _pixels(1, seed=2), _pixels(3, seed=3)
    mixed = loaded.model_input([list(a), loaded.prepare_pixels(b), c])
    assert torch.equal(mixed, loaded.prepare([*a, *b, *c]))


# ---- MC dropout and the queue bound ----------------------------------------------------------


def test_run_in_turns_counts_its_whole_cost_against_the_queue() -> None:
    gate = threading.Event()
    batcher = Batcher(lambda inputs: torch.cat(inputs), max_queue=100)
    threads: list[str] = []

    def heavy() -> str:
        threads.append(threading.current_thread().name)
        gate.wait(5)
        return "done"

    async def scenario() -> None:
        # 4 steps of 20 images: admitted as 80 at once, and counted until the last is done.
        running = asyncio.create_task(batcher.run_in_turns([heavy] * 4, images=20))
        await asyncio.sleep(0.05)
        assert batcher.queued == 80
        with pytest.raises(QueueFull) as info:
            await batcher.submit(torch.ones(30, 1))  # 80 + 30 > 100
        assert info.value.queued == 80 and info.value.retry_after >= 1
        with pytest.raises(QueueFull):
            await batcher.run_in_turns([lambda: "more"], images=30)
        gate.set()
        assert await running == ["done"] * 4
        assert batcher.queued == 0
        assert await batcher.run_in_turns([lambda: "alone"], images=500) == ["alone"]

    asyncio.run(scenario())
    assert batcher.stats.rejected == 2
    assert threads and threads[0] != threading.main_thread().name
    # Served work is in the stats: 4 passes over 20 images, then 1 over 500, one request each;
    # images counts each pass's, so that mean_batch is a forward's.
    stats = batcher.stats.as_dict()
    assert stats["requests"] == 2 and stats["batches"] == 5 and stats["images"] == 580
    assert stats["sizes"] == {"20": 4, "500": 1} and stats["mean_batch"] == 116


def test_turns_leave_the_queue_as_they_are_done_and_stop_when_abandoned() -> None:
    """Retry-After counts what is left of a long MC request, not its whole; a client gone
    (asked between passes: uvicorn does not cancel a handler whose client left) stops it."""
    batcher = Batcher(lambda inputs: torch.cat(inputs), max_queue=1000)
    seen: list[int] = []
    ran: list[int] = []

    def step() -> None:
        ran.append(1)
        seen.append(batcher.queued)

    async def gone_after_three() -> bool:
        return len(ran) >= 3

    async def scenario() -> None:
        assert len(await batcher.run_in_turns([step] * 4, images=10)) == 4
        assert seen == [40, 30, 20, 10] and batcher.queued == 0
        ran.clear()
        with pytest.raises(Abandoned):
            await batcher.run_in_turns([step] * 10, images=10, abandoned=gone_after_three)
        assert len(ran) == 3 and batcher.queued == 0

    asyncio.run(scenario())


def test_other_work_on_the_forward_thread_runs_between_the_turns() -> None:
    """The forward thread is every model's: a request queued for another model while an MC
    request runs waits for one pass, not for all of them."""
    executor = ThreadPoolExecutor(1)
    heavy = Batcher(lambda inputs: torch.cat(inputs), executor=executor)
    other = Batcher(lambda inputs: torch.cat(inputs), executor=executor)
    order: list[str] = []

    def one_pass() -> None:
        order.append("pass")
        time.sleep(0.05)

    async def scenario() -> None:
        turns = asyncio.create_task(heavy.run_in_turns([one_pass] * 6, images=1))
        await asyncio.sleep(0.07)  # into the second pass
        await other.submit(torch.ones(1, 1))
        order.append("other")
        await turns

    asyncio.run(scenario())
    executor.shutdown()
    assert order.index("other") <= 3, order  # after the pass under way (and at most one more)


def test_a_client_gone_mid_turns_stops_after_the_step_under_way() -> None:
    gate = threading.Event()
    batcher = Batcher(lambda inputs: torch.cat(inputs), max_queue=100)
    ran: list[int] = []

    def step() -> None:
        ran.append(1)
        gate.wait(5)

    async def scenario() -> None:
        turns = asyncio.create_task(batcher.run_in_turns([step] * 5, images=10))
        await asyncio.sleep(0.05)
        turns.cancel()  # the client went away during the first step
        await asyncio.sleep(0.05)
        assert batcher.queued == 50  # still counted: the thread is busy with that step
        gate.set()
        for _ in range(100):
            if batcher.queued == 0:
                break
            await asyncio.sleep(0.01)
        assert batcher.queued == 0

    asyncio.run(scenario())
    assert len(ran) == 1


def test_retry_after_weighs_each_run_by_its_images() -> None:
    """200 lone images at 5 ms each, then one batch of 256 at 0.1 ms an image: a queue of large
    batches drains at about the large batches' rate, not at the lone images' (which gave a
    Retry-After of 17 s for a queue that drained in 2)."""
    batcher = Batcher(lambda inputs: torch.cat(inputs))
    clock = iter(float(t) for t in range(10**6))
    costs = [(1, 0.005)] * 200 + [(256, 0.0256)]
    for images, seconds in costs:
        start = next(clock)
        with mock.patch.object(time, "perf_counter", side_effect=[start, start + seconds]):
            batcher._timed(lambda: None, images)
    assert batcher.seconds_per_image < 0.001  # per-run mean: 0.0045


def test_mc_dropout_requests_get_queue_full_when_over_the_bound(cache: ModelCache) -> None:
    serving = Serving(cache, max_queue=1000)
    loaded = cache.get(2)
    images = list(_pixels(8))

    async def scenario() -> list[object]:
        # 8 images × 100 passes = 800 image passes each: a second one does not fit beside it.
        return await asyncio.gather(
            *(serving.mc_dropout(loaded, images, 100, seed=0) for _ in range(3)),
            return_exceptions=True,
        )

    try:
        outcomes = asyncio.run(scenario())
    finally:
        serving.close()
    full = [o for o in outcomes if isinstance(o, QueueFull)]
    done = [o for o in outcomes if isinstance(o, tuple)]
    assert len(done) == 1 and len(full) == 2, outcomes
    mean, std = done[0]
    assert mean.shape == std.shape == (8, 10)


# ---- query integers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [("5", 5), (" 12 ", 12), ("-3", -3), ("²", None), ("٣", None), ("1_0", None),
     ("+4", None), ("", None), ("0x10", None)],
)  # fmt: skip
def test_decimal_int_takes_ascii_digits_only(raw: str, value: int | None) -> None:
    assert decimal_int(raw) == value
