"""A job process started before its job, so that a claimed job starts training at once.

Every job runs in a fresh process (a crash, an out-of-memory kill or leaked GPU memory ends
that job only). Starting one costs seconds before the first batch: the interpreter, torch and
the training code, torch._dynamo (which the first optimizer of a process imports), together
5.2 s on the 2-core CPU machine; then the device (a CUDA context, cuBLAS and cuDNN) and the
Fashion-MNIST files (0.5 s). Two things hide that cost:
- the imports are done once, in a fork server (``multiprocessing``'s forkserver, with those
  modules preloaded); every job process is forked from it, imports done, and then sets up its
  device itself (the server never touches one, so no CUDA state is ever forked);
- a worker keeps one such process waiting: it sets up the device and reads the data while the
  worker looks for work, then receives its job through a pipe and becomes the job's process
  (``child.job_process_main``). A standby that is never used exits when the pipe closes or
  when its worker is gone.

Not a plain fork of the worker: a job must not inherit the worker's DB connections or threads.
The fork server's environment is the worker's when it started it: set environment variables
for jobs before the worker starts.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from service.config import Settings
from service.worker.child import job_process_main, prepare_process, worker_gone

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
JOB_PROCESSES = multiprocessing.get_context("forkserver")
# Imported once by the fork server (a module that fails to import is skipped, not fatal).
PRELOAD = ["torch", "torch._dynamo", "service.worker.execute", "service.worker.standby"]
PARENT_CHECK_SECONDS = 1.0  # how often a waiting standby looks whether its worker is alive


class Standby:
    """One warm process waiting for a job of this worker."""

    def __init__(self, settings_data: dict[str, Any], device: str) -> None:
        JOB_PROCESSES.set_forkserver_preload(PRELOAD)  # used when the server first starts
        receive, self._send = JOB_PROCESSES.Pipe(duplex=False)
        self.process = JOB_PROCESSES.Process(
            target=standby_main,
            args=(receive, settings_data, device),
            name="trainserve-standby",
        )
        self.process.start()
        receive.close()  # the child holds its own end; ours would keep the pipe from closing

    def start_job(self, job_id: int, token: str, config: dict) -> BaseProcess | None:
        """Hand the job over; the process then is the job's. None if the standby is gone."""
        if not self.process.is_alive():
            self.close()
            return None
        try:
            self._send.send((job_id, token, config))
        except OSError:  # it died just now
            self.close()
            return None
        self._send.close()
        self.process.name = f"trainserve-job-{job_id}"
        return self.process

    def close(self) -> None:
        """Stop a standby that got no job (closing the pipe tells it to exit)."""
        self._send.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def standby_main(jobs: Connection, settings_data: dict[str, Any], device: str) -> None:
    settings = Settings(**settings_data)
    prepare_process(settings)
    try:
        warm_up(settings, device)
    except Exception as exc:  # the job will meet the same problem and report it
        log.warning("standby warm-up failed: %s", exc)
    while True:
        if worker_gone():
            return
        try:
            if jobs.poll(PARENT_CHECK_SECONDS):
                job_id, token, config = jobs.recv()
                break
        except (EOFError, OSError):
            return  # the worker closed the pipe: no job for us
    jobs.close()
    job_process_main(settings_data, job_id, token, config, device)


def warm_up(settings: Settings, device: str) -> None:
    """Import the training code, set the device up, read Fashion-MNIST into the loader's cache."""
    import torch
    import torch._dynamo  # noqa: F401  (torch.optim.Optimizer() imports it on first use)

    from service.training.data import DatasetError, load_dataset
    from service.worker import execute  # noqa: F401  (imports the models and training code)

    target = torch.device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    use_kernel_libraries(target)
    # Not installed here: the jobs that need it fail with the loader's message.
    with contextlib.suppress(DatasetError):
        load_dataset("fashion-mnist", settings.data_dir)


def use_kernel_libraries(device: torch.device) -> None:
    """One tiny training step's worth of ops, so that the device's libraries are loaded and set
    up before a job needs them: on CUDA the context, cuBLAS and cuDNN (each loads and creates
    its handle on first use), on the CPU oneDNN. Shapes differ from any job's, so no job's
    cuDNN autotuning is done here."""
    import torch

    x = torch.rand(2, 1, 8, 8, device=device)
    conv = torch.nn.Conv2d(1, 4, 3).to(device)
    weight = torch.zeros(3, 4 * 6 * 6, device=device, requires_grad=True)
    cuda = device.type == "cuda"
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
        logits = torch.nn.functional.linear(conv(x).flatten(1), weight)
    logits.float().sum().backward()
    if cuda:
        torch.cuda.synchronize(device)
