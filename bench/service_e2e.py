"""End to end through a running service: submit one job, poll it, time submit → succeeded.

Prints the wall seconds from POST /jobs to the first GET /jobs/{id} that says `succeeded`
(polled every --poll seconds, so the figure is up to one poll late), the job's test_acc and the
per-epoch examples/s from /jobs/{id}/metrics. Standard library only.

    python bench/service_e2e.py                                   # VGG, 10 epochs, its defaults
    python bench/service_e2e.py --model lenet --epochs 2 --batch-size 512
    python bench/service_e2e.py --body '{"model": "lenet", "dataset": "synthetic", "epochs": 1}'
    python bench/service_e2e.py --model softmax --epochs 1 --jobs 5   # a queue: the span
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from arguments import positive_float, positive_int

TERMINAL = {"succeeded", "failed", "cancelled"}


def request(method: str, url: str, body: dict | None = None, timeout: float = 30.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {url} -> {e.code}: {e.read().decode(errors='replace')}") from e
    except urllib.error.URLError as e:  # nothing listens there, say
        raise SystemExit(f"{method} {url}: {e.reason}") from None


def json_object(text: str) -> dict:
    """--body: a JSON object of job fields."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of job fields, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="vgg")
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--dataset", default=None, help="default: the service's (fashion-mnist)")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--lr", type=positive_float, default=None)
    parser.add_argument("--optimizer", default=None)
    parser.add_argument("--devices", type=positive_int, default=None)
    parser.add_argument(
        "--body", type=json_object, default=None, help="JSON job fields, applied over the flags"
    )
    parser.add_argument(
        "--poll", type=positive_float, default=0.2, help="seconds between GET /jobs/{id}"
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=6 * 3600, help="give up after (s)"
    )
    parser.add_argument(
        "--jobs", type=positive_int, default=1, help="submit N copies at once (seeds 1..N)"
    )
    args = parser.parse_args(argv)

    base = args.url.rstrip("/")
    body: dict = {"model": args.model, "epochs": args.epochs}
    for field, value in (
        ("dataset", args.dataset),
        ("batch_size", args.batch_size),
        ("lr", args.lr),
        ("optimizer", args.optimizer),
        ("devices", args.devices),
    ):
        if value is not None:
            body[field] = value
    if args.body:
        body.update(args.body)

    if args.jobs > 1:
        return queue_of_jobs(base, body, args)
    start = time.perf_counter()
    job = request("POST", f"{base}/jobs", body)
    job_id = job["id"]
    print(f"job {job_id} submitted: {json.dumps(body)}", flush=True)
    status, started_at = job["status"], None
    while status not in TERMINAL:
        if time.perf_counter() - start > args.timeout:
            print(f"job {job_id}: still {status} after {args.timeout:g} s; giving up")
            return 1
        time.sleep(args.poll)
        job = request("GET", f"{base}/jobs/{job_id}")
        if job["status"] == "running" and started_at is None:
            started_at = time.perf_counter()
        status = job["status"]
    wall = time.perf_counter() - start
    if status != "succeeded":
        print(f"job {job_id} {status} after {wall:.1f} s: {job.get('error')}")
        return 1

    metrics = request("GET", f"{base}/jobs/{job_id}/metrics")["data"]
    queued = f", {started_at - start:.1f} s of it queued" if started_at is not None else ""
    print(f"job {job_id} succeeded: {wall:.2f} s submit -> succeeded{queued}")
    print(f"test_acc {job.get('test_acc')}")
    print("| epoch | examples/s | seconds | train_loss | val_acc |")
    print("|---:|---:|---:|---:|---:|")
    for m in metrics:
        print(
            f"| {m['epoch']} | {m['examples_per_sec']:,.0f} | {m['seconds']:.2f} "
            f"| {m['train_loss']:.4f} | {m['val_acc']:.4f} |"
        )
    return 0


def queue_of_jobs(base: str, body: dict, args: argparse.Namespace) -> int:
    """--jobs N: N copies submitted at once (seeds 1..N); each one's wall time and the span."""
    start = time.perf_counter()
    ids = [
        request("POST", f"{base}/jobs", {**body, "seed": k})["id"] for k in range(1, args.jobs + 1)
    ]
    print(f"jobs {ids} submitted: {json.dumps(body)}", flush=True)
    done: dict[int, tuple[str, float]] = {}
    while len(done) < len(ids):
        if time.perf_counter() - start > args.timeout:
            print(f"jobs {sorted(set(ids) - set(done))} unfinished after {args.timeout:g} s")
            return 1
        time.sleep(args.poll)
        for job_id in ids:
            if job_id not in done:
                job = request("GET", f"{base}/jobs/{job_id}")
                if job["status"] in TERMINAL:
                    done[job_id] = (job["status"], time.perf_counter() - start)
    for job_id in ids:
        status, wall = done[job_id]
        print(f"job {job_id} {status}: {wall:.2f} s after the first submit")
    span = max(wall for _, wall in done.values())
    print(f"{len(ids)} jobs: {span:.2f} s from the first submit to the last finish")
    return 0 if all(status == "succeeded" for status, _ in done.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
