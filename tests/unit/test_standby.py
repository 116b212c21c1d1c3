"""The warm job process a worker keeps waiting (service.worker.standby)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.cli import migrate
from service.config import Settings
from service.db import make_session_factory
from service.queue import submit_job
from service.worker import loop
from service.worker.standby import JOB_PROCESSES, PRELOAD, Standby, use_kernel_libraries


def _settings_data(tmp_path) -> dict:
    return Settings(state_dir=tmp_path).model_dump(mode="json")


def test_a_standby_without_a_job_exits_when_its_pipe_closes(tmp_path) -> None:
    standby = Standby(_settings_data(tmp_path), "cpu")
    assert standby.process.is_alive()
    standby._send.close()  # what close() does first; it kills only a standby that lingers
    standby.process.join(timeout=60)
    assert standby.process.exitcode == 0  # it left on its own, after its warm-up


def test_close_stops_a_standby(tmp_path) -> None:
    standby = Standby(_settings_data(tmp_path), "cpu")
    standby.close()
    assert not standby.process.is_alive()


def test_a_dead_standby_is_not_given_the_job(tmp_path) -> None:
    standby = Standby(_settings_data(tmp_path), "cpu")
    standby.process.kill()
    standby.process.join()
    assert standby.start_job(1, "token", {"model": "lenet"}) is None


WARM_JOB_SCRIPT = """
import sys
from service.config import Settings
from service.training.config import TrainConfig
from service.training.loop import train
from service.worker.standby import warm_up

warm_up(Settings(), "cpu")
before = set(sys.modules)
for fields in ({"model": "softmax"}, {"model": "lenet", "optimizer": "adam", "dropout": 0.5}):
    config = {"dataset": "synthetic", "epochs": 1, "train_examples": 256, **fields}
    train(TrainConfig.from_dict(config), device="cpu")
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_after_the_warm_up_a_job_imports_nothing() -> None:
    """What a job imports on its way is paid inside it: torch._dynamo, imported by the first
    optimizer, took 3.8 s of every CPU job until the warm-up imported it."""
    done = subprocess.run(
        [sys.executable, "-c", WARM_JOB_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    assert done.stdout.split() == []


@pytest.mark.gpu
def test_the_warm_up_step_runs_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    use_kernel_libraries(torch.device("cuda", torch.cuda.current_device()))  # bf16 autocast


def test_the_warm_up_step_runs_on_the_cpu() -> None:
    use_kernel_libraries(torch.device("cpu"))


def test_the_next_process_warms_during_a_job_only_when_jobs_wait(tmp_path, monkeypatch) -> None:
    """A queue of jobs gets its next process warmed while the current job runs; a lone job
    does not share its cores with a warm-up it does not need."""
    settings = Settings(state_dir=tmp_path)
    migrate(settings)
    started: list[str] = []
    monkeypatch.setattr(loop, "Standby", lambda data, device: started.append(device) or device)
    worker = loop.Worker(settings, device="cpu")
    try:
        worker._warm_next_if_queued()
        assert started == [] and worker._standby is None  # nothing waits
        with make_session_factory(worker.engine)() as session:
            submit_job(session, {"model": "softmax", "dataset": "synthetic", "epochs": 1})
        worker._warm_next_if_queued()
        assert started == ["cpu"] and worker._standby == "cpu"
    finally:
        worker._standby = None
        worker.engine.dispose()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_process_from_the_fork_server_sets_up_its_device(device: str) -> None:
    """The fork server has imported torch but must never have touched CUDA: a process forked
    after CUDA is initialised cannot use it."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    JOB_PROCESSES.set_forkserver_preload(PRELOAD)
    process = JOB_PROCESSES.Process(target=use_kernel_libraries, args=(torch.device(device),))
    process.start()
    process.join(120)
    assert process.exitcode == 0
