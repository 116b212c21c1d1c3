"""Data-parallel training of one job on several devices (DistributedDataParallel).

The calling process is rank 0: it keeps the job's callbacks (curves, cancellation,
checkpoints) and returns the trained model. Ranks 1..N-1 are spawned processes that train on
their shard of every batch and report nothing. Backend: NCCL on GPUs, gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch

from service.training.config import TrainConfig
from service.training.loop import SaveCheckpoint, TrainResult, train
from service.training.steps import EpochMetrics, Shard

log = logging.getLogger(__name__)
COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # a rank that waits longer than this gives up


def job_devices(worker_device: str, count: int) -> list[str]:
    """The devices of a job with `devices: count`, starting at the worker's own device."""
    device = torch.device(worker_device)
    if device.type != "cuda":
        return ["cpu"] * count
    available = torch.cuda.device_count()
    if count > available:
        raise ValueError(
            f"devices: {count} asks for more GPUs than this worker's machine has ({available})"
        )
    first = device.index or 0
    return [f"cuda:{(first + i) % available}" for i in range(count)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init(rank: int, world_size: int, port: int, backend: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )


def _threads_per_rank(world_size: int) -> int:
    return max(1, torch.get_num_threads() // world_size)


def _rank_main(
    rank: int, world_size: int, port: int, backend: str, config: dict[str, Any], device: str,
    data_dir: str | None, datasets_dir: str | None, checkpoint: str | None, threads: int,
) -> None:  # fmt: skip
    import torch.distributed as dist

    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    _init(rank, world_size, port, backend)
    try:
        train(
            TrainConfig.from_dict(config),
            device=device,
            data_dir=Path(data_dir) if data_dir else None,
            datasets_dir=Path(datasets_dir) if datasets_dir else None,
            # Every rank resumes from the same checkpoint; only rank 0 writes it.
            checkpoint_path=Path(checkpoint) if checkpoint else None,
            shard=Shard(rank, world_size, torch.device(device)),
        )
    finally:
        dist.destroy_process_group()


def _exit_if_a_rank_dies(ranks: list[BaseProcess], done: threading.Event) -> None:
    """A rank that crashes leaves rank 0 blocked in a collective until the timeout: end this
    process at once instead, so that the worker sees a crash and retries the job."""
    while not done.wait(0.5):
        for process in ranks:
            if process.exitcode not in (None, 0):
                log.error(
                    "%s died with exit code %s; ending the job", process.name, process.exitcode
                )
                os._exit(70)
        if all(p.exitcode == 0 for p in ranks):
            return


def train_data_parallel(
    config: TrainConfig,
    devices: list[str],
    *,
    data_dir: Path | None = None,
    datasets_dir: Path | None = None,
    on_epoch: Callable[[EpochMetrics], None],
    should_stop: Callable[[], bool],
    checkpoint_path: Path | None = None,
    save_checkpoint_fn: SaveCheckpoint | None = None,
    checkpoint_last_epoch: bool = True,
    checkpoint_seconds: float = 0.0,
    checkpoint_on_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train on len(devices) processes; raises like `train` (cancelled, diverged, …)."""
    import torch.distributed as dist

    world_size = len(devices)
    backend = "nccl" if all(d.startswith("cuda") for d in devices) else "gloo"
    port = _free_port()
    threads = _threads_per_rank(world_size)
    context = torch.multiprocessing.get_context("spawn")
    others = [
        context.Process(
            target=_rank_main,
            args=(
                rank,
                world_size,
                port,
                backend,
                config.to_dict(),
                devices[rank],
                str(data_dir) if data_dir else None,
                str(datasets_dir) if datasets_dir else None,
                str(checkpoint_path) if checkpoint_path else None,
                threads,
            ),
            name=f"trainserve-rank-{rank}",
            daemon=True,
        )  # fmt: skip
        for rank in range(1, world_size)
    ]
    for process in others:
        process.start()
    done = threading.Event()  # set before rank 0 ends the other ranks itself
    watchdog = threading.Thread(target=_exit_if_a_rank_dies, args=(others, done), daemon=True)
    watchdog.start()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if devices[0].startswith("cuda"):
            torch.cuda.set_device(torch.device(devices[0]))
        _init(0, world_size, port, backend)
        try:
            result = train(
                config,
                device=devices[0],
                data_dir=data_dir,
                datasets_dir=datasets_dir,
                on_epoch=on_epoch,
                should_stop=should_stop,
                checkpoint_path=checkpoint_path,
                shard=Shard(0, world_size, torch.device(devices[0])),
                save_checkpoint_fn=save_checkpoint_fn,  # rank 0 alone writes checkpoints
                checkpoint_last_epoch=checkpoint_last_epoch,
                checkpoint_seconds=checkpoint_seconds,
                checkpoint_on_stop=checkpoint_on_stop,
            )
        finally:
            dist.destroy_process_group()
        for process in others:
            process.join(timeout=60)
            if process.exitcode != 0:
                raise RuntimeError(f"{process.name} ended with exit code {process.exitcode}")
        return result
    finally:
        done.set()
        torch.set_num_threads(previous_threads)
        for process in others:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
        log.info("data-parallel run on %s (%s) done", devices, backend)


__all__ = ["job_devices", "train_data_parallel"]
