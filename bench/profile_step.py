"""Where a training step's GPU time goes: torch.profiler over a few of the service's steps.

    python bench/profile_step.py --models vgg,alexnet --batch-size 128 --steps 10

Random pixels stand in for Fashion-MNIST (the speed does not depend on them). Prints the
step's wall time and the kernels that took the most device time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from service.training.config import TrainConfig  # noqa: E402
from service.training.loop import prepare_classifier  # noqa: E402


def profile_model(name: str, batch_size: int, steps: int, device: torch.device, rows: int) -> None:
    config = TrainConfig(model=name, batch_size=batch_size, optimizer="sgd", lr=0.01)
    n = 8 * batch_size
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (n,), device=device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    run = prepare_classifier(config, images, labels, 10, device)
    run.model.train()
    step = run.steps(batch_size)
    batches = [torch.randperm(n, device=device)[:batch_size] for _ in range(steps)]
    for b in batches:  # warm-up: cuDNN picks its algorithms, graphs get captured
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for b in batches:
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - start) / steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for b in batches:
            step(b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    print(
        f"\n## {name}, batch {batch_size}: {per_step * 1e3:.2f} ms per step, "
        f"{batch_size / per_step:,.0f} examples/s ({type(step).__name__})"
    )
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg,alexnet")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    for name in args.models.split(","):
        profile_model(name.strip(), args.batch_size, args.steps, device, args.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
