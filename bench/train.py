"""Training throughput of every network: the course's reference loop versus the service's.

For each model, in one process on one device:

(a) reference — d2l `train_ch6`: a map-style Dataset returning one float tensor per item
    (ToTensor, and for the 224-px nets a per-item Resize on the CPU), `DataLoader(shuffle=True,
    num_workers=4)`, fp32, per-batch host syncs for the metrics (`float(loss)`, `.item()`);
(b) project — `service.training.loop.train` with the same model, initialisation, SGD lr,
    dropout and epochs (uint8 data on the device, channels_last for the conv nets, bf16
    autocast on CUDA, metrics read once per epoch), in a fresh spawned process set up like a
    job's (glibc keeps freed memory; so it also pays its own CUDA and cuDNN start-up).

Printed per model: examples/s of each (training time only; the reference's loader waits count,
test evaluation does not), project/reference, MFU (model FLOPs per example — forward+backward
counted by FlopCounterMode — x examples/s / the device's peak; the peak is bf16 dense, so the
fp32 reference's figure is against a peak it cannot reach), peak GPU memory and the test
accuracy of each after --epochs.

    python bench/train.py                          # all six, 1 epoch, full Fashion-MNIST
    python bench/train.py --models lenet --epochs 10
    python bench/train.py --quick                  # CPU smoke: 4,096 examples, softmax/mlp/lenet
    python bench/train.py --quick --models alexnet --quick-side 64
    python bench/train.py --concurrent 4           # 4 LeNet trainings at once on one device
    python bench/train.py --models lenet --eager-too   # also the project loop without CUDA graphs
    python bench/train.py --models vgg --epochs 10 --project-batch-size 256 --project-config \
        '{"resize": 112, "optimizer": "momentum", "lr_schedule": "onecycle", "lr": 0.05,
          "weight_decay": 5e-4, "augment": "flip"}'   # the service's VGG recipe against the course

With --project-config the project trains with those job fields instead (any `POST /jobs` training
field but the ones this script sets: model, dataset, epochs, batch size, seed, the split): a
different side, optimizer or schedule is then the project's choice, and the accuracy columns say
whether it pays. The printed side is each loop's own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import torch  # noqa: E402
from arguments import positive_float, positive_int, torch_device  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from train_loop import IdxImages, course_epochs, in_job_process  # noqa: E402

import models  # noqa: E402
from service.training.config import TrainConfig  # noqa: E402
from service.training.data import load_dataset  # noqa: E402
from service.training.graphed import ENV_SWITCH as GRAPHS_SWITCH  # noqa: E402
from service.training.loop import input_side, train  # noqa: E402

ALL_MODELS = ["softmax", "mlp", "lenet", "alexnet", "vgg", "nin"]
QUICK_MODELS = ["softmax", "mlp", "lenet"]
SMALL_BATCH_MODELS = {"softmax", "mlp", "lenet"}  # batch 256; the 224-px nets 128
# Dense bf16 tensor-core peak, TFLOP/s (SXM parts; the H200 has the H100's compute).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}


def default_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops
    return None


def flops_per_example(model_name: str, side: int, dropout: float) -> float:
    """Forward + backward FLOPs of one example (FlopCounterMode; about 3x the forward)."""
    batch = 2
    net = models.build(model_name, input_side=side, dropout=dropout)
    x = torch.zeros(batch, 1, side, side)
    counter = FlopCounterMode(display=False)
    with counter:
        nn.functional.cross_entropy(net(x), torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops() / batch


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def run_reference(model_name, data, side, batch_size, lr, dropout, epochs, device) -> dict:
    """d2l `train_ch6`: DataLoader of per-item float tensors, per-batch host syncs, fp32."""
    images, labels, test_images, test_labels = data
    _reset_peak(device)
    torch.manual_seed(0)
    net = models.build(model_name, input_side=side, dropout=dropout).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    train_iter = DataLoader(
        IdxImages(images, labels, side), batch_size=batch_size, shuffle=True, num_workers=4
    )
    test_iter = DataLoader(
        IdxImages(test_images, test_labels, side), batch_size=batch_size, num_workers=4
    )
    run = course_epochs(net, optimizer, loss_fn, train_iter, test_iter, epochs, device)
    return {
        "ex_per_s": run.examples / run.train_seconds,
        "train_s": run.train_seconds,
        "peak_bytes": _peak_bytes(device),
        "test_acc": run.test_acc,
    }


# The fields run_project sets itself (the rest may come from --project-config).
BENCH_FIELDS = frozenset(
    {"model", "dataset", "batch_size", "epochs", "seed", "val_fraction", "train_examples",
     "test_examples", "kind", "devices"}
)  # fmt: skip


def project_config(
    model_name, n, n_test, side, batch_size, lr, dropout, epochs, dataset, overrides
) -> TrainConfig:
    """The project's job for one model: the reference's settings (one validation example, so it
    trains on n - 1, the closest to the reference's n), then ``overrides``."""
    fields = dict(
        model=model_name,
        dataset=dataset,
        batch_size=batch_size,
        epochs=epochs,
        lr=lr,
        optimizer="sgd",
        dropout=dropout,
        seed=0,
        resize=side,
        val_fraction=1.0 / n,
        train_examples=n,
        test_examples=n_test,
    )
    return TrainConfig(**{**fields, **overrides})


def parse_project_config(text: str) -> dict:
    """--project-config: a JSON object of TrainConfig fields, checked before anything runs."""
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(overrides, dict):
        raise argparse.ArgumentTypeError("must be a JSON object of job fields")
    known = set(TrainConfig.__dataclass_fields__) - BENCH_FIELDS
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise argparse.ArgumentTypeError(f"fields {unknown} cannot be set; known: {sorted(known)}")
    return overrides


def run_project(config: TrainConfig, device, data_dir) -> dict:
    """`service.training.loop.train` on ``config`` (see ``project_config``)."""
    _reset_peak(device)
    result = train(config, device=device, data_dir=data_dir)
    examples = config.train_examples - 1
    epoch_s = [examples / m.examples_per_sec for m in result.epochs]
    return {
        "ex_per_s": examples * len(result.epochs) / sum(epoch_s),
        "train_s": sum(epoch_s),
        "epoch_ex_per_s": [m.examples_per_sec for m in result.epochs],
        "peak_bytes": _peak_bytes(device),
        "test_acc": result.test_acc,
    }


def _fmt_mem(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"


def _fmt_epochs(ex_per_s: list[float]) -> str:
    """Epoch 1 (which carries the run's one-time set-up) against the median of the others."""
    if len(ex_per_s) < 2:
        return ""
    return (
        f" | project epoch 1 {ex_per_s[0]:,.0f} ex/s, "
        f"later epochs median {statistics.median(ex_per_s[1:]):,.0f} ex/s"
    )


def _fmt_mfu(flops: float, ex_per_s: float, peak_tflops: float | None) -> str:
    return "n/a" if not peak_tflops else f"{100 * flops * ex_per_s / (peak_tflops * 1e12):.2f}%"


def _plan(args, name: str, n: int, n_test: int) -> tuple:
    """One model's settings: its side, the reference's batch and lr, dropout, the project's job."""
    spec = models.get_spec(name)
    side = spec.input_side
    if args.quick_side and side > 28:
        side = max(args.quick_side, spec.min_side)  # NiN needs 67, AlexNet/VGG less
    ref_batch = args.batch_size or (256 if name in SMALL_BATCH_MODELS else 128)
    lr = args.lr if args.lr is not None else spec.lr
    config = project_config(
        name, n, n_test, side, args.project_batch_size or ref_batch, lr * args.project_lr_scale,
        spec.dropout, args.epochs, args.dataset, args.project_config,
    )  # fmt: skip
    try:
        input_side(config)
    except ValueError as exc:
        raise SystemExit(f"train.py: --project-config for {name}: {exc}") from None
    return name, side, ref_batch, lr, spec.dropout, config


def bench_models(args, device: torch.device, peak_tflops: float | None) -> list[dict]:
    ds = load_dataset(args.dataset, args.data_dir)
    n = min(args.train_examples or len(ds.train_labels), len(ds.train_labels))
    n_test = min(args.test_examples or len(ds.test_labels), len(ds.test_labels))
    data = (
        ds.train_images[:n],
        ds.train_labels[:n],
        ds.test_images[:n_test],
        ds.test_labels[:n_test],
    )
    print(
        f"{args.dataset}: {n} train / {n_test} test examples, {args.epochs} epoch(s), sgd"
        + (f" (project: {json.dumps(args.project_config)})" if args.project_config else "")
        + f", device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", {torch.get_num_threads()} CPU threads, peak "
        + (f"{peak_tflops:g} TFLOP/s" if peak_tflops else "n/a"),
        flush=True,
    )
    plans = [_plan(args, name, n, n_test) for name in args.models]  # bad settings fail first
    rows = []
    for name, side, ref_batch, lr, dropout, config in plans:
        proj_batch, proj_side = config.batch_size, input_side(config)
        flops = flops_per_example(name, side, dropout)
        proj_flops = flops_per_example(name, proj_side, config.dropout)
        ref = run_reference(name, data, side, ref_batch, lr, dropout, args.epochs, device)
        proj = in_job_process(run_project, config, device, args.data_dir)
        eager = None
        if args.eager_too and device.type == "cuda":
            with mock.patch.dict(os.environ, {GRAPHS_SWITCH: "0"}):  # the spawned child sees it
                eager = in_job_process(run_project, config, device, args.data_dir)
        row = {
            "model": name,
            "side": side,
            "project_side": proj_side,
            "project_config": {k: v for k, v in config.to_dict().items() if v is not None},
            "ref_batch": ref_batch,
            "project_batch": proj_batch,
            "lr": lr,
            "project_lr": config.lr,
            "mflop_per_example": flops / 1e6,
            "project_mflop_per_example": proj_flops / 1e6,
            "reference": ref,
            "project": proj,
            "project_without_graphs": eager,
            "ratio": proj["ex_per_s"] / ref["ex_per_s"],
            "mfu_reference": _fmt_mfu(flops, ref["ex_per_s"], peak_tflops),
            "mfu_project": _fmt_mfu(proj_flops, proj["ex_per_s"], peak_tflops),
        }
        rows.append(row)
        print(
            f"{name:8} side {side}/{proj_side} batch {ref_batch}/{proj_batch} "
            f"lr {lr:g}/{config.lr:g}: reference "
            f"{ref['ex_per_s']:,.0f} ex/s (acc {ref['test_acc']:.3f}, MFU {row['mfu_reference']}, "
            f"peak {_fmt_mem(ref['peak_bytes'])}) | project {proj['ex_per_s']:,.0f} ex/s "
            f"(acc {proj['test_acc']:.3f}, MFU {row['mfu_project']}, peak "
            f"{_fmt_mem(proj['peak_bytes'])}) | {row['ratio']:.2f}x"
            + _fmt_epochs(proj["epoch_ex_per_s"])
            + (
                f" | without CUDA graphs {eager['ex_per_s']:,.0f} ex/s (acc "
                f"{eager['test_acc']:.3f}), graphs {proj['ex_per_s'] / eager['ex_per_s']:.2f}x"
                if eager
                else ""
            ),
            flush=True,
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print()
    print(
        "| model | side ref/proj | batch ref/proj | lr ref/proj | MFLOP/ex ref/proj (fwd+bwd) "
        "| reference ex/s "
        "| project ex/s | project/reference | MFU ref | MFU proj | peak mem ref | peak mem proj "
        "| test acc ref | test acc proj |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ref, proj = r["reference"], r["project"]
        print(
            f"| {r['model']} | {r['side']}/{r['project_side']} "
            f"| {r['ref_batch']}/{r['project_batch']} | {r['lr']:g}/{r['project_lr']:g} "
            f"| {r['mflop_per_example']:,.4g}/{r['project_mflop_per_example']:,.4g} "
            f"| {ref['ex_per_s']:,.0f} | {proj['ex_per_s']:,.0f} "
            f"| {r['ratio']:.2f}x | {r['mfu_reference']} | {r['mfu_project']} "
            f"| {_fmt_mem(ref['peak_bytes'])} | {_fmt_mem(proj['peak_bytes'])} "
            f"| {ref['test_acc']:.3f} | {proj['test_acc']:.3f} |"
        )
    return rows


# ------------------------------------------------------------------ --concurrent N (LeNet)


def _concurrent_child(rank, args_dict, barrier, queue) -> None:
    threads = args_dict["threads"]
    if threads:
        torch.set_num_threads(threads)
    spec = models.get_spec("lenet")
    n, n_test = args_dict["n"], args_dict["n_test"]
    config = TrainConfig(
        model="lenet",
        dataset=args_dict["dataset"],
        batch_size=args_dict["batch_size"],
        epochs=args_dict["epochs"],
        lr=args_dict["lr"] if args_dict["lr"] is not None else spec.lr,
        optimizer="sgd",
        seed=rank,
        val_fraction=1.0 / n,
        train_examples=n,
        test_examples=n_test,
    )
    data_dir = args_dict["data_dir"]
    load_dataset(config.dataset, data_dir)  # load (and cache) before the common start
    torch.zeros(1, device=args_dict["device"])  # and create the CUDA context
    barrier.wait()
    start = time.time()
    result = train(config, device=args_dict["device"], data_dir=data_dir)
    end = time.time()
    examples = (n - 1) * len(result.epochs)
    train_s = sum((n - 1) / m.examples_per_sec for m in result.epochs)
    queue.put((rank, start, end, examples, train_s, result.test_acc))


def bench_concurrent(args, device: torch.device) -> dict:
    ds = load_dataset(args.dataset, args.data_dir)
    n = min(args.train_examples or len(ds.train_labels), len(ds.train_labels))
    n_test = min(args.test_examples or len(ds.test_labels), len(ds.test_labels))
    k = args.concurrent
    threads = max(1, (os.cpu_count() or 1) // k) if device.type == "cpu" else None
    child_args = {
        "n": n,
        "n_test": n_test,
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "epochs": args.epochs,
        "batch_size": args.project_batch_size or args.batch_size or 256,
        "lr": args.lr,
        "device": str(device),
        "threads": threads,
    }
    print(
        f"{k} concurrent LeNet trainings (spawned processes) on {device}: {n} examples, "
        f"{args.epochs} epoch(s), batch {child_args['batch_size']}"
        + (f", {threads} torch thread(s) each" if threads else ""),
        flush=True,
    )
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    procs = [
        ctx.Process(target=_concurrent_child, args=(r, child_args, barrier, queue))
        for r in range(k)
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a training process failed with exit code {p.exitcode}")
    results.sort()
    span = max(r[2] for r in results) - min(r[1] for r in results)
    total = sum(r[3] for r in results)
    summed = sum(r[3] / r[4] for r in results)
    for rank, _, _, examples, train_s, acc in results:
        print(
            f"  process {rank}: {examples / train_s:,.0f} ex/s (training time), test acc {acc:.3f}"
        )
    print()
    print(
        "| jobs | aggregate ex/s (sum of each's training ex/s) "
        "| aggregate ex/s (wall, whole train()) |"
    )
    print("|---:|---:|---:|")
    print(f"| {k} | {summed:,.0f} | {total / span:,.0f} |")
    return {"jobs": k, "aggregate_ex_per_s": summed, "aggregate_wall_ex_per_s": total / span}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help=f"comma list of {','.join(ALL_MODELS)}")
    parser.add_argument("--epochs", type=positive_int, default=1)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="default: 256 softmax/mlp/lenet, else 128",
    )
    parser.add_argument(
        "--project-batch-size",
        type=positive_int,
        default=None,
        help="project loop only; default: same",
    )
    parser.add_argument(
        "--project-lr-scale",
        type=positive_float,
        default=1.0,
        help="project loop only: its lr is the reference's times this (a larger batch takes "
        "a larger lr); default 1",
    )
    parser.add_argument(
        "--project-config",
        type=parse_project_config,
        default={},
        metavar="JSON",
        help="project loop only: job fields it trains with instead, e.g. "
        '\'{"resize": 112, "optimizer": "momentum", "lr_schedule": "onecycle"}\'',
    )
    parser.add_argument(
        "--lr", type=positive_float, default=None, help="default: each model's course lr"
    )
    parser.add_argument(
        "--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--peak-tflops",
        type=positive_float,
        default=None,
        help="default: H100/H200 989 (bf16), CPU n/a",
    )
    parser.add_argument(
        "--dataset", default="fashion-mnist", choices=["fashion-mnist", "synthetic"]
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST IDX files")
    parser.add_argument("--train-examples", type=positive_int, default=None, help="default: all")
    parser.add_argument("--test-examples", type=positive_int, default=None, help="default: all")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="4,096 train / 1,000 test examples; softmax, mlp, lenet unless --models",
    )
    parser.add_argument(
        "--quick-side",
        type=positive_int,
        default=None,
        help="input side of the 224-px nets (smaller: faster)",
    )
    parser.add_argument(
        "--concurrent",
        type=positive_int,
        default=None,
        help="run N LeNet trainings at once instead",
    )
    parser.add_argument(
        "--eager-too",
        action="store_true",
        help="on CUDA, run the project loop again without CUDA graphs (TRAINSERVE_CUDA_GRAPHS=0)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    # The course's num_workers=4 is kept on purpose even where fewer cores exist.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    if args.data_dir is None and os.environ.get("TRAINSERVE_DATA_DIR"):
        args.data_dir = Path(os.environ["TRAINSERVE_DATA_DIR"])
    if args.quick:
        args.train_examples = args.train_examples or 4096
        args.test_examples = args.test_examples or 1000
    if args.models:
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        args.models = QUICK_MODELS if args.quick else ALL_MODELS
    unknown = set(args.models) - set(ALL_MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; known: {ALL_MODELS}")
    device = torch.device(args.device)
    if args.concurrent:
        out = bench_concurrent(args, device)
    else:
        peak = args.peak_tflops or default_peak_tflops(device)
        out = {"device": str(device), "peak_tflops": peak, "rows": bench_models(args, device, peak)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
