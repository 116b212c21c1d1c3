"""Load generator for POST /models/{id}/predict: single-image requests, batching on vs off.

    .venv/bin/python bench/predict.py                        # starts its own server, trains LeNet
    .venv/bin/python bench/predict.py --url http://127.0.0.1:8000 --model 1   # a running one
    .venv/bin/python bench/predict.py --url http://127.0.0.1:8000 --network alexnet  # trains it

Closed loop: C clients, each on its own keep-alive connection, send one single-image request,
wait for the answer, send the next, for --seconds at each concurrency C. Every level runs
twice in the same run against the same server: with dynamic batching (the default) and
with the query flag `batching=false` (a forward pass per request), then prints requests/s,
p50 and p99 latency of each and the ratio. Any response other than 200 counts as an error.

The client speaks HTTP/1.1 over raw asyncio streams (a few microseconds per request), but it
runs on the same machine as the server and competes with it for the CPU cores: the figures
are a floor for what the server does on a machine of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from arguments import choices_list, non_negative_float, positive_float, positive_ints

REPO_ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


# ---- one level of load ---------------------------------------------------------------------


@dataclass
class Level:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: dict[int, int] = field(default_factory=dict)  # status (0: connection) -> count

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _client(host: str, port: int, request: bytes, level: Level, t_start: float,
                  t_stop: float) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            sent = time.perf_counter()
            if sent >= t_stop:
                return
            writer.write(request)
            try:
                status = await _read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                level.errors[0] = level.errors.get(0, 0) + 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            if sent < t_start:  # warm-up: not counted
                continue
            if status == 200:
                level.latencies.append(time.perf_counter() - sent)
            else:
                level.errors[status] = level.errors.get(status, 0) + 1
    finally:
        writer.close()


async def run_level(url: str, request: bytes, concurrency: int, seconds: float,
                    warmup: float) -> Level:  # fmt: skip
    parts = urlsplit(url)
    level = Level(concurrency, seconds)
    now = time.perf_counter()
    t_start, t_stop = now + warmup, now + warmup + seconds
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    await asyncio.gather(
        *(_client(host, port, request, level, t_start, t_stop) for _ in range(concurrency))
    )
    return level


def http_request(url: str, path: str, body: bytes, content_type: str) -> bytes:
    host = urlsplit(url).netloc
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# ---- inputs ----------------------------------------------------------------------------------


def test_image() -> np.ndarray:
    """The first Fashion-MNIST test image if the dataset is installed, else a fixed pattern."""
    if FASHION_MNIST_TEST.exists():
        with gzip.open(FASHION_MNIST_TEST) as f:
            data = f.read(16 + 784)
        return np.frombuffer(data[16 : 16 + 784], dtype=np.uint8).reshape(28, 28).copy()
    return np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)


def request_body(fmt: str, image: np.ndarray) -> tuple[bytes, str]:
    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, image)
        return buffer.getvalue(), "application/x-npy"
    if fmt == "json":
        return json.dumps({"instances": [image.tolist()]}).encode(), "application/json"
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(image, mode="L").save(png, format="PNG")
    boundary = "benchboundary7d2f"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


# ---- a server of our own -------------------------------------------------------------------


def start_server(state_dir: Path, port: int, env: dict[str, str]):  # -> tests LiveServer
    sys.path.insert(0, str(REPO_ROOT))
    from tests.conftest import LiveServer

    return LiveServer(state_dir, f"sqlite:///{state_dir / 'bench.db'}", workers=1, env=env,
                      port=port).start()  # fmt: skip


def train_model(url: str, model: str, dataset: str) -> int:
    with httpx.Client(base_url=url, timeout=60) as client:
        body = {"model": model, "dataset": dataset, "epochs": 1, "seed": 0}
        if dataset == "fashion-mnist":
            body |= {"train_examples": 6000, "test_examples": 1000}
        job = client.post("/jobs", json=body)
        if job.status_code != 201:
            raise SystemExit(f"POST {url}/jobs -> {job.status_code}: {job.text}")
        job_id = int(job.json()["id"])
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            status = client.get(f"/jobs/{job_id}").json()["status"]
            if status == "succeeded":
                return job_id
            if status in ("failed", "cancelled"):
                raise RuntimeError(f"training job {job_id} {status}")
            time.sleep(0.5)
    raise RuntimeError(f"training job {job_id} did not finish")


# ---- main ------------------------------------------------------------------------------------


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running service (default: start one here)")
    parser.add_argument("--model", type=int, help="model id (with --url; default: train "
                        "--network there first)")  # fmt: skip
    parser.add_argument("--network", default="lenet", help="network to train when starting "
                        "a server of its own (default lenet)")  # fmt: skip
    parser.add_argument("--dataset", default="synthetic", help="dataset for that training "
                        "(default synthetic: the weights do not change the speed)")  # fmt: skip
    parser.add_argument("--concurrency", type=positive_ints, default="1,8,32,128")
    parser.add_argument("--seconds", type=positive_float, default=4.0, help="measured, per level")
    parser.add_argument(
        "--warmup", type=non_negative_float, default=1.0, help="not measured, per level"
    )
    parser.add_argument("--format", choices=("npy", "json", "png"), default="npy",
                        help="request body: .npy (application/x-npy), JSON instances, or a PNG "
                        "in multipart 'files'")  # fmt: skip
    parser.add_argument(
        "--modes", type=choices_list("on", "off"), default="on,off", help="batching modes to run"
    )
    args = parser.parse_args(argv)
    if args.model is not None and not args.url:
        parser.error("--model names a model of the service at --url; without --url the bench "
                     "starts a server of its own and trains --network there")  # fmt: skip
    levels, modes = args.concurrency, args.modes

    server = None
    state_dir = None
    try:
        if args.url:
            url = args.url.rstrip("/")
            if args.model is not None:
                model_id = args.model
            else:
                print(f"training {args.network} on {args.dataset} for 1 epoch at {url} ...",
                      flush=True)  # fmt: skip
                model_id = train_model(url, args.network, args.dataset)
        else:
            state_dir = Path(tempfile.mkdtemp(prefix="trainserve-bench-"))
            server = start_server(state_dir, _free_port(), env={})
            url = server.url
            print(f"server: {url} (state in {state_dir}); training {args.network} "
                  f"on {args.dataset} for 1 epoch ...", flush=True)  # fmt: skip
            model_id = train_model(url, args.network, args.dataset)
        body, content_type = request_body(args.format, test_image())
        with httpx.Client(base_url=url, timeout=60) as client:
            first = client.post(f"/models/{model_id}/predict", content=body,
                                headers={"content-type": content_type})  # fmt: skip
            if first.status_code != 200:  # an unknown model, a job that did not succeed, ...
                raise SystemExit(
                    f"POST {url}/models/{model_id}/predict -> {first.status_code}: {first.text}"
                )
            info = client.get(f"/models/{model_id}").json()
            stats_before = client.get(f"/v2/models/{model_id}/stats").json()
        print(
            f"model {model_id}: {info.get('model')}; body {args.format}, {len(body)} bytes; "
            f"server batching max {stats_before.get('max_batch_size')} images, "
            f"max delay {stats_before.get('max_delay_ms')} ms, "
            f"torch threads {stats_before.get('torch_threads')}; "
            f"{os.cpu_count()} CPU cores shared by server and load generator",
            flush=True,
        )

        results: dict[tuple[str, int], Level] = {}
        batches: dict[tuple[str, int], float] = {}
        for concurrency in levels:
            for mode in modes:
                path = f"/models/{model_id}/predict" + ("" if mode == "on" else "?batching=false")
                request = http_request(url, path, body, content_type)
                before = httpx.get(f"{url}/v2/models/{model_id}/stats").json()
                with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                    level = runner.run(
                        run_level(url, request, concurrency, args.seconds, args.warmup)
                    )
                after = httpx.get(f"{url}/v2/models/{model_id}/stats").json()
                forwards = after["batches"] - before["batches"]
                batches[(mode, concurrency)] = (
                    (after["images"] - before["images"]) / forwards if forwards else 0.0
                )
                results[(mode, concurrency)] = level
                print(f"  batching {mode:>3}  concurrency {concurrency:>3}: "
                      f"{level.rps:8.0f} req/s  p50 {_fmt_ms(level.percentile(0.5))} ms  "
                      f"p99 {_fmt_ms(level.percentile(0.99))} ms  "
                      f"mean batch {batches[(mode, concurrency)]:.1f}  "
                      f"errors {sum(level.errors.values())}", flush=True)  # fmt: skip

        print()
        head = "| concurrency |"
        rule = "| ---: |"
        for mode in modes:
            head += f" batching {mode}: req/s | p50 ms | p99 ms | mean batch | errors |"
            rule += " ---: | ---: | ---: | ---: | ---: |"
        if modes == ["on", "off"]:
            head += " req/s on / off |"
            rule += " ---: |"
        print(head)
        print(rule)
        for concurrency in levels:
            row = f"| {concurrency} |"
            for mode in modes:
                lv = results[(mode, concurrency)]
                errors = ", ".join(f"{k or 'conn'}: {v}" for k, v in sorted(lv.errors.items()))
                row += (f" {lv.rps:.0f} | {_fmt_ms(lv.percentile(0.5))} | "
                        f"{_fmt_ms(lv.percentile(0.99))} | {batches[(mode, concurrency)]:.1f} | "
                        f"{errors or 0} |")  # fmt: skip
            if modes == ["on", "off"]:
                off = results[("off", concurrency)].rps
                ratio = results[("on", concurrency)].rps / off if off else float("nan")
                row += f" {ratio:.2f}× |"
            print(row)
        print(f"\n(closed loop, {args.seconds:g} s per cell after {args.warmup:g} s warm-up; "
              f"the load generator runs on the same {os.cpu_count()} cores)")  # fmt: skip
        latencies = [lv.percentile(0.5) for lv in results.values() if lv.latencies]
        if latencies:
            print(f"median of p50s: {_fmt_ms(statistics.median(latencies))} ms")
    except httpx.TransportError as exc:  # nothing listens at --url, say
        raise SystemExit(f"{url}: {exc}") from None
    finally:
        if server is not None:
            server.stop()
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def _loop_factory():  # uvloop when installed (it is, with uvicorn[standard]): a cheaper client
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:
        return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
