"""Queueing, priority, listing and cancellation through the API, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import httpx

from service.artifacts import checkpoint_path
from tests.conftest import wait_for_status

LONG_JOB = {"model": "mlp", "dataset": "synthetic", "epochs": 500, "batch_size": 16}


def test_cancel_queued_and_running_jobs(database_url: str, start_server) -> None:
    server = start_server(database_url, workers=1)
    client = httpx.Client(base_url=server.url, timeout=60)
    running = client.post("/jobs", json=LONG_JOB).json()
    wait_for_status(client, running["id"], {"running"}, timeout=60)
    # The only worker is busy: the next job waits queued.
    queued = client.post("/jobs", json=LONG_JOB).json()
    time.sleep(1)
    assert client.get(f"/jobs/{queued['id']}").json()["status"] == "queued"

    # As if it had run an epoch and been put back by a stopping worker: nothing will resume it
    # once cancelled, so its checkpoint goes.
    checkpoint = checkpoint_path(server.state_dir / "artifacts", queued["id"])
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"a checkpoint")
    response = client.post(f"/jobs/{queued['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"  # at once
    assert not checkpoint.exists()
    assert client.post(f"/jobs/{queued['id']}/cancel").status_code == 409

    asked = time.monotonic()
    response = client.post(f"/jobs/{running['id']}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    job = wait_for_status(client, running["id"], {"cancelled", "failed", "succeeded"}, timeout=30)
    assert job["status"] == "cancelled"
    assert time.monotonic() - asked < 10  # within seconds, not at the end of an epoch
    assert job["finished_at"] is not None
    # A cancelled job is never picked up again.
    time.sleep(1)
    assert client.get(f"/jobs/{running['id']}").json()["status"] == "cancelled"
    assert client.get(f"/models/{running['id']}").status_code == 409


def test_priority_then_age_and_listing(database_url: str, start_server) -> None:
    server = start_server(database_url, workers=0)  # the API alone: jobs stay queued
    client = httpx.Client(base_url=server.url, timeout=60)
    quick = {"model": "softmax", "dataset": "synthetic", "epochs": 1}
    ids = [client.post("/jobs", json={**quick, "priority": p}).json()["id"] for p in (0, 5, 0)]

    listed = client.get("/jobs").json()
    assert listed["count"] == 3
    assert [j["id"] for j in listed["data"]] == sorted(ids, reverse=True)  # newest first
    page = client.get("/jobs", params={"limit": 2, "offset": 1}).json()
    assert page["count"] == 3 and [j["id"] for j in page["data"]] == sorted(ids, reverse=True)[1:]
    assert client.get("/jobs", params={"status": "running"}).json()["count"] == 0

    # Start a worker: the priority-5 job runs first, then the older of the other two.
    server.stop()
    server.workers = 1
    server.start()
    client = httpx.Client(base_url=server.url, timeout=60)
    for job_id in ids:
        wait_for_status(client, job_id, {"succeeded"}, timeout=60)
    started = {i: client.get(f"/jobs/{i}").json()["started_at"] for i in ids}
    assert sorted(ids, key=lambda i: started[i]) == [ids[1], ids[0], ids[2]]
    assert client.get("/jobs", params={"status": "succeeded"}).json()["count"] == 3
    assert client.get("/models").json()["count"] == 3
