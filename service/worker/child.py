"""The job's own process: its set-up, and its entry point once it has its job (both called by
the standby process its worker started, ``standby``).

A crash here, an out-of-memory kill or leaked GPU memory ends this job's process only.
SIGTERM asks the job to stop between two batches; its worker then writes the outcome.
SIGUSR1 asks the same of a job to be requeued (its worker shuts down), which first writes a
checkpoint of its last finished epoch if none has it yet.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
from typing import Any

from service.config import Settings
from service.db import make_engine
from service.worker.allocator import keep_freed_memory
from service.worker.execute import Outcome, execute_job

# The worker's "stop, the job is requeued": like SIGTERM (cancel, lost lease: stop between two
# batches), and the epochs trained since the last checkpoint are written first.
KEEP_AND_STOP_SIGNAL = signal.SIGUSR1

# Fault injection for the tests, never set in production: "job-process-crash".
FAILPOINT_ENV = "TRAINSERVE_FAILPOINT"


def worker_gone() -> bool:
    """Whether the worker that started this process has exited (the parent of a forked
    process is the fork server; multiprocessing keeps a pipe from the worker instead)."""
    parent = multiprocessing.parent_process()
    return parent is not None and not parent.is_alive()


def prepare_process(settings: Settings) -> None:
    """What a job's process sets before any work (the standby does it before its warm-up)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when we stop
    keep_freed_memory()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


def job_process_main(
    settings_data: dict[str, Any], job_id: int, token: str, config: dict, device: str
) -> None:
    """Run the job; the process was set up by ``prepare_process``."""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s job-{job_id}: %(message)s"
    )
    stop = threading.Event()
    keep = threading.Event()  # the stop requeues the job: save the epochs it has trained

    def stop_and_keep(*_: object) -> None:
        keep.set()
        stop.set()

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(KEEP_AND_STOP_SIGNAL, stop_and_keep)
    if os.environ.get(FAILPOINT_ENV) == "job-process-crash":
        os._exit(70)  # fault tests: a job whose process dies every time
    settings = Settings(**settings_data)
    engine = make_engine(settings.resolved_database_url)
    try:
        outcome = execute_job(
            engine, settings, job_id, token, config, device=device, stop=stop,
            should_stop_extra=worker_gone,
            # A worker gone without a word will not write the outcome: the lease lapses and
            # the job is requeued, so its epochs are worth keeping too.
            keep_progress=lambda: keep.is_set() or worker_gone(),
        )  # fmt: skip
    finally:
        engine.dispose()
    # The outcome is decided (and, for FINISHED, written). Our worker may still send SIGTERM:
    # it sees the lease we just cleared. Python restores the default action of SIGTERM when
    # the interpreter finalises, and tearing down a CUDA context takes a second or more, so a
    # late SIGTERM would turn a finished job's exit code into a kill (seen on an H100: every
    # job succeeded, and its worker logged each one as "lease lost"). Ignore it from here on.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(int(outcome))


__all__ = ["Outcome", "job_process_main", "prepare_process"]
