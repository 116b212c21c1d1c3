"""Training throughput: the course's own loop versus `service.training.loop.train`.

(a) reference: as the course's `train_ch6` does it — a map-style Dataset returning one
    (ToTensor-style float tensor, label) per item, a `DataLoader(shuffle=True, num_workers=4)`,
    and per-batch host syncs for the metrics (`float(loss)`, accuracy `.item()`, an Accumulator);
(b) project: `train()` — the uint8 dataset on the device, batches gathered by a shuffled index,
    metrics accumulated on the device and read once per epoch.

Both train the same network (built by `models.build`, same initialisation) with plain SGD. The
reference runs in this process, as a course user runs it; the project runs in a spawned process
set up like a job's (`service.worker.allocator.keep_freed_memory`, which changes malloc for the
whole process and so must not touch the reference). Examples/s counts training examples over the
training time of the epoch (loader start and waits included for the reference; validation and
test evaluation excluded for both).

    .venv/bin/python bench/train_loop.py [--model lenet] [--epochs 1] [--batch-size 256]
                                         [--device cpu|cuda] [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from arguments import positive_float, positive_int, torch_device  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch.utils.data import Dataset as TorchDataset  # noqa: E402

import models  # noqa: E402
from service.training.config import TrainConfig  # noqa: E402
from service.training.data import load_dataset  # noqa: E402
from service.training.loop import train  # noqa: E402
from service.worker.allocator import keep_freed_memory  # noqa: E402


class IdxImages(TorchDataset):
    """torchvision-FashionMNIST-like: one (float (1, side, side) in [0, 1], label) per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, side: int):
        self.images, self.labels, self.side = images, labels, side

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i].float().div(255.0).unsqueeze(0)  # ToTensor: (1, 28, 28)
        if self.side != image.shape[-1]:  # transforms.Resize, as the course does for AlexNet
            image = models.to_model_input(self.images[i : i + 1], self.side)[0]
        return image, int(self.labels[i])


class Accumulator:
    """The course's d2l.Accumulator: sums of n Python floats."""

    def __init__(self, n: int):
        self.data = [0.0] * n

    def add(self, *args: float) -> None:
        self.data = [a + float(b) for a, b in zip(self.data, args, strict=True)]

    def __getitem__(self, i: int) -> float:
        return self.data[i]


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    return float((y_hat.argmax(dim=1).type(y.dtype) == y).sum().item())


def evaluate_accuracy(net: nn.Module, loader: DataLoader, device: torch.device) -> float:
    net.eval()
    metric = Accumulator(2)
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            metric.add(accuracy(net(x), y), y.numel())
    return metric[0] / metric[1]


@dataclass
class CourseRun:
    examples: int  # training examples seen, all epochs together
    train_seconds: float  # training time, loader waits included, evaluation excluded
    last_train_loss: float
    test_acc: float


def course_epochs(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    train_iter: DataLoader,
    test_iter: DataLoader,
    epochs: int,
    device: torch.device,
) -> CourseRun:
    """The epochs of d2l `train_ch6`: per-batch host syncs for the metrics, test after each."""
    seconds, seen, test_acc, metric = 0.0, 0, float("nan"), Accumulator(3)
    for _ in range(epochs):
        metric = Accumulator(3)
        net.train()
        start = time.perf_counter()
        for x, y in train_iter:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            y_hat = net(x)
            loss = loss_fn(y_hat, y)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                metric.add(float(loss) * x.shape[0], accuracy(y_hat, y), x.shape[0])
        sync_device(device)
        seconds += time.perf_counter() - start
        seen += int(metric[2])
        test_acc = evaluate_accuracy(net, test_iter, device)
    return CourseRun(seen, seconds, metric[0] / max(metric[2], 1), test_acc)


def reference_loop(args, images, labels, test_images, test_labels, side, device) -> dict:
    """d2l `train_ch6`, timed over whole epochs (the course's timer skips loader waits)."""
    torch.manual_seed(0)
    net = models.build(args.model, input_side=side).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    train_iter = DataLoader(
        IdxImages(images, labels, side), batch_size=args.batch_size, shuffle=True, num_workers=4
    )
    test_iter = DataLoader(
        IdxImages(test_images, test_labels, side), batch_size=args.batch_size, num_workers=4
    )
    wall = time.perf_counter()
    run = course_epochs(net, optimizer, loss_fn, train_iter, test_iter, args.epochs, device)
    return {
        "examples": run.examples // args.epochs,
        "train_s": run.train_seconds,
        "ex_per_s": run.examples / run.train_seconds,
        "wall_s": time.perf_counter() - wall,
        "train_loss": run.last_train_loss,
        "test_acc": run.test_acc,
    }


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer read next covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_job_process(fn, *args):
    """fn(*args) in a fresh spawned process set up like a job's, and its return value.

    A job's process keeps freed memory in glibc's heap (service/worker/child.prepare_process);
    that changes malloc for the whole process, so it must not touch the reference's."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_job_process_call, (fn, *args))


def _job_process_call(fn, *args):
    keep_freed_memory()
    return fn(*args)


def project_loop(args, n_examples: int, n_test: int, side: int, device) -> dict:
    # One validation example: train on n_examples - 1, the closest to the reference's count.
    config = TrainConfig(
        model=args.model,
        dataset="fashion-mnist",
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        optimizer="sgd",
        seed=0,
        resize=side,
        val_fraction=1.0 / n_examples,
        train_examples=n_examples,
        test_examples=n_test,
    )
    wall = time.perf_counter()
    result = train(config, device=device)
    wall_s = time.perf_counter() - wall
    examples = n_examples - 1
    train_s = sum(examples / m.examples_per_sec for m in result.epochs)
    return {
        "examples": examples,
        "train_s": train_s,
        "ex_per_s": examples * len(result.epochs) / train_s,
        "wall_s": wall_s,
        "train_loss": result.train_loss,
        "test_acc": result.test_acc,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet", choices=models.list_models())
    parser.add_argument("--epochs", type=positive_int, default=1)
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument(
        "--lr", type=positive_float, default=None, help="default: the model's course lr"
    )
    parser.add_argument(
        "--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--side", type=positive_int, default=None, help="default: the model's own")
    parser.add_argument("--quick", action="store_true", help="10,000 examples, 2,000 test")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        help="alternate the two loops N times; keep each's best",
    )
    args = parser.parse_args(argv)
    # The course's num_workers=4 is kept on purpose even where fewer cores exist.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    spec = models.get_spec(args.model)
    args.lr = spec.lr if args.lr is None else args.lr
    side = args.side or spec.input_side
    try:
        models.check_input_side(args.model, side)
    except ValueError as exc:
        parser.error(f"--side {side}: {exc}")
    device = torch.device(args.device)

    ds = load_dataset("fashion-mnist", None)
    n = 10_000 if args.quick else len(ds.train_labels)
    n_test = 2_000 if args.quick else len(ds.test_labels)
    print(
        f"{args.model} (side {side}), {args.epochs} epoch(s) of {n} Fashion-MNIST examples, "
        f"batch {args.batch_size}, sgd lr {args.lr:g}, device {device}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    refs, ours_runs = [], []
    for _ in range(max(1, args.repeats)):
        refs.append(
            reference_loop(
                args,
                ds.train_images[:n],
                ds.train_labels[:n],
                ds.test_images[:n_test],
                ds.test_labels[:n_test],
                side,
                device,
            )
        )
        ours_runs.append(in_job_process(project_loop, args, n, n_test, side, device))
    ref = max(refs, key=lambda r: r["ex_per_s"])
    ours = max(ours_runs, key=lambda r: r["ex_per_s"])
    if args.repeats > 1:
        print(f"best of {args.repeats} alternating runs; all ex/s:")
        print(f"  reference {[round(r['ex_per_s']) for r in refs]}")
        print(f"  project   {[round(r['ex_per_s']) for r in ours_runs]}")
        paired = sorted(o["ex_per_s"] / r["ex_per_s"] for r, o in zip(refs, ours_runs, strict=True))
        print(
            f"  ratio of each pair {[round(x, 2) for x in paired]}, "
            f"median {statistics.median(paired):.2f}x"
        )
    print()
    print(
        f"{'loop':<38} {'train ex':>9} {'train s':>8} {'ex/s':>9} {'wall s':>7} "
        f"{'loss':>6} {'test acc':>8}"
    )
    for name, r in (("reference (DataLoader, d2l train_ch6)", ref), ("project (train())", ours)):
        print(
            f"{name:<38} {r['examples']:>9} {r['train_s']:>8.2f} {r['ex_per_s']:>9.0f} "
            f"{r['wall_s']:>7.2f} {r['train_loss']:>6.3f} {r['test_acc']:>8.3f}"
        )
    print(f"\nproject / reference examples/s: {ours['ex_per_s'] / ref['ex_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
