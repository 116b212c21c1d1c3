"""PostgreSQL unreachable for longer than the lease, seen by real worker processes.

The outage is a TCP proxy between the workers and the shared PostgreSQL server that drops
every connection and refuses new ones for a while: the server itself never stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.integration.fleet import Fleet


class Proxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL while up; while down, closes what it carries
    and every new connection at once (psycopg: "server closed the connection")."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.up = True
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        self.up = False
        with self._lock:
            carried, self._open = self._open, []
        for s in carried:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.down()
        self._listener.close()


@pytest.fixture
def proxied(postgres_url: str, tmp_path: Path):
    url = make_url(postgres_url)
    proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
    fleet = Fleet(
        url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        tmp_path / "state",
        {"TRAINSERVE_TORCH_THREADS": "1"},
    )
    yield proxy, fleet
    proxy.up = True
    fleet.stop_all()
    proxy.close()


def _cut_off_after_epoch(proxy: Proxy, fleet: Fleet, epoch: int) -> int:
    """Start worker w1 on a job and take the database away once the job has done `epoch`."""
    fleet.start_worker("w1")
    job_id = fleet.submit()
    fleet.wait_for(f"epoch {epoch}", lambda: fleet.job(job_id).epochs_done >= epoch)
    fleet.engine.dispose()
    proxy.down()
    return job_id


def _succeeded(fleet: Fleet, job_id: int):
    fleet.wait_for(
        "the job to finish",
        lambda: fleet.job(job_id).status in ("succeeded", "failed", "cancelled"),
        timeout=180,
    )
    job = fleet.job(job_id)
    assert job.status == "succeeded", job.error
    return job


def test_an_outage_longer_than_the_lease_requeues_the_job_and_never_fails_it(proxied) -> None:
    proxy, fleet = proxied
    job_id = _cut_off_after_epoch(proxy, fleet, 2)
    try:  # down until the job's process gave up its writes (the lease is 3 s: FAULT_ENV)
        deadline = time.monotonic() + 90
        while "stayed unreachable past the lease" not in fleet.log("w1"):
            assert time.monotonic() < deadline, fleet.log("w1")[-3000:]
            time.sleep(0.2)
    finally:
        proxy.up = True
    job = _succeeded(fleet, job_id)
    assert job.attempts == 2  # the lost run counts, as when a worker dies
    assert fleet.epochs(job_id) == [1, 2, 3, 4, 5, 6]
    log = fleet.log("w1")
    assert "training crashed" not in log
    assert "resuming lenet from epoch" in log  # from its checkpoint
    assert fleet.workers["w1"].poll() is None  # the worker lived through it


def test_a_worker_stopped_during_an_outage_exits_cleanly(proxied) -> None:
    proxy, fleet = proxied
    job_id = _cut_off_after_epoch(proxy, fleet, 1)
    try:
        os.kill(fleet.workers["w1"].pid, signal.SIGTERM)
        assert fleet.workers["w1"].wait(timeout=60) == 0
    finally:
        proxy.up = True
    log = fleet.log("w1")
    assert "Traceback" not in log, log[-3000:]
    fleet.start_worker("w2")
    _succeeded(fleet, job_id)
    assert fleet.epochs(job_id) == [1, 2, 3, 4, 5, 6]
