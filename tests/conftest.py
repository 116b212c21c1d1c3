"""Shared fixtures: database URLs (SQLite file, fresh PostgreSQL database) and live servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "TRAINSERVE_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist_available() -> bool:
    return (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists() or bool(
        os.environ.get("TRAINSERVE_DATA_DIR")
    )


def _postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _require_postgres() -> None:
    if not _postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432 (CI must start it)")
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    _require_postgres()
    from sqlalchemy import create_engine, text

    name = f"trainserve_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.dispose()  # PostgreSQL may have been restarted by the test: reconnect
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'trainserve.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'trainserve.db'}"
    return request.getfixturevalue("postgres_url")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Fast settings so that tests wait for a worker in tenths of a second, not seconds.
FAST_ENV = {
    "TRAINSERVE_POLL_SECONDS": "0.2",
    "TRAINSERVE_CHECKPOINT_SECONDS": "0",  # every epoch: the fault tests resume from one
    "TRAINSERVE_HEARTBEAT_SECONDS": "1",
    "TRAINSERVE_CANCEL_CHECK_SECONDS": "0.2",
    "TRAINSERVE_LEASE_SECONDS": "10",
}


@dataclass
class LiveServer:
    """`trainserve serve` in a subprocess, as a user runs it."""

    state_dir: Path
    database_url: str
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LiveServer:
        env = {
            **os.environ,
            **FAST_ENV,
            "TRAINSERVE_STATE_DIR": str(self.state_dir),
            "TRAINSERVE_DATABASE_URL": self.database_url,
            **self.env,
        }
        env.pop("TRAINSERVE_ARTIFACT_DIR", None)
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port),
               "--workers", str(self.workers)]  # fmt: skip
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.state_dir / "serve.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early; log:\n{self.log()[-5000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become healthy; log:\n{self.log()[-5000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        path = self.state_dir / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Factory: start_server(database_url, workers=1, state_dir=None) -> a started LiveServer."""
    servers: list[LiveServer] = []

    def start(database_url: str, *, workers: int = 1, state_dir: Path | None = None,
              env: dict[str, str] | None = None) -> LiveServer:  # fmt: skip
        server = LiveServer(state_dir or tmp_path / "state", database_url, workers, env or {})
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def wait_for_status(
    client: httpx.Client, job_id: int, statuses: set[str], timeout: float = 120.0
) -> dict:
    """Poll GET /jobs/{id} until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout}s: {job}")
