"""Where a training step's time goes: torch.profiler over a few of the service's steps, and the
same step under other layouts, precisions or torch.compile, to choose between them.

    python bench/profile_step.py --models vgg,alexnet --batch-size 128 --steps 10
    python bench/profile_step.py --models lenet --batch-size 256 \\
        --variants service,nchw,fp32,nchw-fp32,compile --no-table

Random pixels stand in for Fashion-MNIST (the speed does not depend on them). For each model and
variant it prints the warm-up time (the first steps: cuDNN autotuning, CUDA graph capture,
compilation), the steady step time and, unless --no-table, the ops that took the most time.

Variants (bench-only: they patch the service's choices for this process, nothing else):
- service: what a job does (channels_last for conv nets, bf16 autocast on CUDA, CUDA graphs
  where the service uses them; LeNet at 28 px on CUDA: fp32 and NCHW);
- nchw: no channels_last; fp32: no autocast; nchw-fp32: both;
- bf16: LeNet on CUDA in bf16 channels_last, as the other conv nets (what it did before);
- eager: the service's choices without CUDA graphs;
- compile: `torch.compile` of the model's forward, eager steps (graphs off);
- compile-graphs: the compiled forward inside the service's CUDA-graphed step (fewer, fused
  kernels per replay: LeNet's graphed step at batch 256 is bound by its ~100 small kernels);
- reduce-overhead: `torch.compile(mode="reduce-overhead")` (Inductor's own CUDA graphs around
  forward and backward), eager steps otherwise;
- nobench: cuDNN's heuristics for every step (the service autotunes full training batches of the
  conv nets' eager steps: service/training/autotune.py);
- limit1, limit3: autotuning that times at most 1 or 3 of cuDNN's algorithms per convolution
  (``torch.backends.cudnn.benchmark_limit``; torch's default is 10).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from arguments import positive_int, torch_device  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from train_loop import sync_device  # noqa: E402

from service.training import loop  # noqa: E402
from service.training.config import TrainConfig  # noqa: E402
from service.training.graphed import ENV_SWITCH as GRAPHS_SWITCH  # noqa: E402
from service.training.steps import EagerSteps  # noqa: E402
from service.worker.allocator import keep_freed_memory  # noqa: E402

VARIANTS = (
    "service",
    "eager",
    "nchw",
    "fp32",
    "nchw-fp32",
    "bf16",
    "compile",
    "compile-graphs",
    "reduce-overhead",
    "nobench",
    "limit1",
    "limit3",
)
COMPILE_MODES = {
    "compile": "default",
    "compile-graphs": "default",
    "reduce-overhead": "reduce-overhead",
}
WARMUP_STEPS = 3


def _untuned(objective, optimizer, device, _batch_size) -> EagerSteps:
    return EagerSteps(objective, optimizer, device)


@contextlib.contextmanager
def _benchmark_limit(limit: int):
    before = torch.backends.cudnn.benchmark_limit
    torch.backends.cudnn.benchmark_limit = limit
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark_limit = before


@contextlib.contextmanager
def variant_patches(variant: str):
    """The service's training path with one of its choices changed, for this process only."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    with contextlib.ExitStack() as stack:
        env = {GRAPHS_SWITCH: "0"} if variant in ("eager", "compile", "reduce-overhead") else {}
        stack.enter_context(mock.patch.dict(os.environ, env))
        if "nchw" in variant:  # the runner and prepare_classifier both ask _has_conv
            stack.enter_context(mock.patch.object(loop, "_has_conv", lambda model: False))
        if variant == "bf16":
            stack.enter_context(mock.patch.object(loop, "plain_fp32_on_gpu", lambda *_: False))
        if variant == "nobench":  # full batches step without autotuning, like the others
            stack.enter_context(mock.patch.object(loop, "FullBatchAutotunedSteps", _untuned))
        if variant.startswith("limit"):
            stack.enter_context(_benchmark_limit(int(variant.removeprefix("limit"))))
        if "fp32" in variant:
            stack.enter_context(
                mock.patch.object(loop._Runner, "autocast", lambda self: contextlib.nullcontext())
            )
        yield


def profile_model(
    name: str,
    variant: str,
    batch_size: int,
    steps: int,
    device: torch.device,
    rows: int,
    resize: int | None = None,
) -> dict:
    config = TrainConfig(model=name, batch_size=batch_size, optimizer="sgd", lr=0.01, resize=resize)
    n = 8 * batch_size
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (n,), device=device)
    torch.manual_seed(0)
    with variant_patches(variant):
        run = loop.prepare_classifier(config, images, labels, 10, device)
        if variant in COMPILE_MODES:  # before run.steps: the objective calls model.forward
            run.model.forward = torch.compile(run.model.forward, mode=COMPILE_MODES[variant])
        run.model.train()
        step = run.steps(batch_size)
        batches = [torch.randperm(n, device=device)[:batch_size] for _ in range(steps)]
        sync_device(device)
        start = time.perf_counter()
        for b in batches[:WARMUP_STEPS]:  # cuDNN autotuning, graph capture, compilation
            step(b)
        sync_device(device)
        warmup_s = time.perf_counter() - start
        for b in batches:
            step(b)
        sync_device(device)
        start = time.perf_counter()
        for b in batches:
            step(b)
        sync_device(device)
        per_step = (time.perf_counter() - start) / steps
        print(
            f"\n## {name} [{variant}], batch {batch_size}: {per_step * 1e3:.2f} ms per step, "
            f"{batch_size / per_step:,.0f} examples/s ({type(step).__name__}); "
            f"first {WARMUP_STEPS} steps {warmup_s:.2f} s",
            flush=True,
        )
        if rows:
            cuda = device.type == "cuda"
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=activities) as prof:
                for b in batches:
                    step(b)
                sync_device(device)
            sort = "cuda_time_total" if cuda else "cpu_time_total"
            print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60))
    return {"model": name, "variant": variant, "ms": per_step * 1e3, "warmup_s": warmup_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg,alexnet")
    parser.add_argument("--variants", default="service", help=f"comma list of {','.join(VARIANTS)}")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--steps", type=positive_int, default=10)
    parser.add_argument(
        "--resize", type=positive_int, default=None, help="input side (default: the model's)"
    )
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--no-table", action="store_true", help="step times only, no profile")
    parser.add_argument(
        "--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu"
    )
    args = parser.parse_args(argv)
    keep_freed_memory()  # as a job's process does
    device = torch.device(args.device)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results = [
        profile_model(
            name.strip(),
            variant,
            args.batch_size,
            args.steps,
            device,
            0 if args.no_table else args.rows,
            args.resize,
        )  # fmt: skip
        for name in args.models.split(",")
        for variant in variants
    ]
    if len(variants) > 1:
        side = f", {args.resize} px" if args.resize else ""
        print(f"\n| model | {' | '.join(variants)} |  (ms per step, batch {args.batch_size}{side})")
        print("|---|" + "---:|" * len(variants))
        for name in dict.fromkeys(r["model"] for r in results):
            cells = [
                f"{r['ms']:.2f} (warm-up {r['warmup_s']:.1f} s)"
                for r in results
                if r["model"] == name
            ]
            print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
