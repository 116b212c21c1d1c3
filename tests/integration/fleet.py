"""Fault-test helpers: standalone worker processes, process trees, direct looks at the job rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from service import queue
from service.config import Settings
from service.db import make_engine, make_session_factory
from service.tables import EpochMetric, Job
from tests.conftest import REPO_ROOT

# Short leases so that a dead worker's job is taken over within seconds.
FAULT_ENV = {
    "TRAINSERVE_POLL_SECONDS": "0.2",
    "TRAINSERVE_CHECKPOINT_SECONDS": "0",  # every epoch: the fault tests resume from one
    "TRAINSERVE_HEARTBEAT_SECONDS": "0.5",
    "TRAINSERVE_CANCEL_CHECK_SECONDS": "0.2",
    "TRAINSERVE_LEASE_SECONDS": "3",
    "TRAINSERVE_RETRY_BACKOFF_SECONDS": "1",
}

# LeNet on the synthetic set with tiny batches: about a second per epoch on 2 cores, so a fault
# can be aimed at the middle of an epoch.
SLOW_JOB = {
    "model": "lenet", "dataset": "synthetic", "epochs": 6, "batch_size": 4,
    "optimizer": "adam", "lr": 0.003, "dropout": 0.0, "weight_decay": 0.0, "seed": 3,
    "resize": None, "val_fraction": 0.1, "train_examples": None, "test_examples": None,
}  # fmt: skip


@dataclass
class Fleet:
    """A database, an artifact directory, and the standalone workers that share them."""

    database_url: str
    state_dir: Path
    env: dict[str, str]

    def __post_init__(self) -> None:
        from service.cli import migrate

        self.state_dir.mkdir(parents=True, exist_ok=True)
        migrate(Settings(database_url=self.database_url))
        self.engine: Engine = make_engine(self.database_url)
        self.sessions = make_session_factory(self.engine)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def artifact_dir(self) -> Path:
        return self.state_dir / "artifacts"

    def start_worker(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        env = {
            **os.environ, **FAULT_ENV, **self.env, **(extra_env or {}),
            "TRAINSERVE_DATABASE_URL": self.database_url,
            "TRAINSERVE_ARTIFACT_DIR": str(self.artifact_dir),
        }  # fmt: skip
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - lives as long as the process
        # Its own session: a signal to the group reaches the worker and its job process.
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--name", name, "--device", "cpu"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip

    def log_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def signal_worker(self, name: str, sig: int) -> None:
        """Signal the worker and its job process together, as a machine fault would."""
        os.killpg(self.workers[name].pid, sig)

    def stop_all(self) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGCONT)
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=30)
        self.engine.dispose()

    def submit(self, config: dict | None = None, **kwargs: object) -> int:
        with self.sessions() as session:
            return queue.submit_job(session, dict(config or SLOW_JOB), **kwargs).id  # type: ignore[arg-type]

    def job(self, job_id: int) -> Job:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def epochs(self, job_id: int) -> list[int]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(EpochMetric.epoch)
                    .where(EpochMetric.job_id == job_id)
                    .order_by(EpochMetric.epoch)
                )
            )

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except OperationalError:  # the database is restarting: look again
                self.engine.dispose()
            time.sleep(0.1)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.workers)
        raise AssertionError(f"timed out waiting for {what}\n{logs}")


def descendants(pid: int) -> list[int]:
    """All processes below `pid`, from /proc (children of children included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found.extend(children)
        frontier.extend(children)
    return found
