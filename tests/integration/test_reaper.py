"""The API reaps lapsed leases on its own timer: with no worker alive (`serve --workers 0`),
a dead worker's job does not stay `running`: out of attempts it shows `failed`, and its
checkpoint goes."""

from __future__ import annotations

import httpx
import pytest

from service import queue
from service.artifacts import checkpoint_path
from service.db import make_engine
from tests.conftest import wait_for_status

pytestmark = pytest.mark.timeout(120)
BODY = {"model": "softmax", "dataset": "synthetic", "epochs": 1}


def test_the_api_ends_a_dead_workers_job_without_any_worker(
    database_url: str, start_server
) -> None:
    env = {"TRAINSERVE_LEASE_SECONDS": "2", "TRAINSERVE_HEARTBEAT_SECONDS": "1",
           "TRAINSERVE_MAX_ATTEMPTS": "1"}  # fmt: skip
    server = start_server(database_url, workers=0, env=env)
    client = httpx.Client(base_url=server.url, timeout=30)
    job_id = client.post("/jobs", json=BODY).json()["id"]
    engine = make_engine(database_url)
    try:
        claimed = queue.claim_next_job(engine, "dies-at-once", 1.0)  # and never heartbeats
    finally:
        engine.dispose()
    assert claimed is not None and claimed.id == job_id
    ckpt = checkpoint_path(server.state_dir / "artifacts", job_id)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"epoch 1")
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
    job = wait_for_status(client, job_id, {"failed", "queued"}, timeout=20)  # lease 1 s, reap 1 s
    assert job["status"] == "failed" and "lease expired" in job["error"], job
    assert not ckpt.exists()
