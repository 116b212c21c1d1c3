"""`serve` wakes its idle workers when a job or a sweep is queued (pool.WAKE_SIGNAL), instead of
leaving the job queued until their next poll."""

from __future__ import annotations

import time

import httpx

from tests.conftest import wait_for_status

QUICK_JOB = {"model": "softmax", "dataset": "synthetic", "epochs": 1, "train_examples": 64}
POLL_SECONDS = 600  # no poll of an idle worker can pick the jobs up within the test


def test_queued_jobs_start_without_waiting_for_a_poll(database_url: str, start_server) -> None:
    server = start_server(
        database_url, workers=1, env={"TRAINSERVE_POLL_SECONDS": str(POLL_SECONDS)}
    )
    client = httpx.Client(base_url=server.url, timeout=60)
    # The worker may claim this one on its first poll; afterwards it waits idle.
    first = client.post("/jobs", json=QUICK_JOB).json()
    assert wait_for_status(client, first["id"], {"succeeded"}, timeout=60)
    time.sleep(2)

    job = client.post("/jobs", json=QUICK_JOB).json()
    assert wait_for_status(client, job["id"], {"succeeded"}, timeout=60)
    time.sleep(2)
    sweep = client.post("/sweeps", json={"base": QUICK_JOB, "grid": {"lr": [0.1, 0.2]}}).json()
    for point in sweep["points"]:
        assert wait_for_status(client, point["job_id"], {"succeeded"}, timeout=60)
