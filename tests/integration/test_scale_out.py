"""Scale-out: the API alone plus a standalone worker with its own disk, sharing PostgreSQL and
an fsspec artifact URL; an idle worker starts a queued job within a second."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import httpx

from tests.conftest import wait_for_status
from tests.integration.fleet import Fleet
from tests.integration.helpers import as_instances


def test_api_and_standalone_worker_on_other_disks(
    postgres_url: str, tmp_path: Path, start_server
) -> None:
    remote = {"TRAINSERVE_ARTIFACT_URL": f"file://{tmp_path / 'shared-bucket'}"}
    fleet = Fleet(postgres_url, tmp_path / "worker-machine", remote)
    try:
        fleet.start_worker("gpu-box-1")
        api = start_server(postgres_url, workers=0, state_dir=tmp_path / "api-machine", env=remote)
        client = httpx.Client(base_url=api.url, timeout=60)
        body = {"model": "softmax", "dataset": "synthetic", "epochs": 1, "batch_size": 64}

        # The first job meets a worker still importing torch; the latency promise is for an
        # idle worker, so measure on the second, submitted once the worker has settled.
        first_id = client.post("/jobs", json=body).json()["id"]
        first = wait_for_status(client, first_id, {"succeeded", "failed"}, timeout=120)
        assert first["status"] == "succeeded", first["error"]
        time.sleep(3)  # the next job's process warms up; then the worker only polls
        job = client.post("/jobs", json=body).json()
        job = wait_for_status(client, job["id"], {"succeeded", "failed"}, timeout=120)
        assert job["status"] == "succeeded", job["error"]
        # Both stamps come from the database's clock: submission to claim, without the
        # HTTP round trips and this test's own polling.
        claim_latency = (
            datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(job["created_at"])
        ).total_seconds()
        assert 0 <= claim_latency < 1.0  # polling every 0.2 s here; 0.5 s by default

        # The model was written on the worker's disk and the shared URL, never the API's disk.
        assert not (tmp_path / "api-machine" / "artifacts" / "jobs" / str(job["id"])).exists()
        response = client.post(
            f"/models/{job['id']}/predict", json={"instances": as_instances([[[0] * 28] * 28])}
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 1
        print(f"\nscale-out: claim latency {claim_latency:.2f}s; model fetched from the shared URL")
    finally:
        fleet.stop_all()


def test_a_job_on_two_devices_through_the_service(sqlite_url: str, start_server) -> None:
    """devices: 2 on a CPU worker: two gloo processes, DistributedDataParallel."""
    server = start_server(sqlite_url, workers=1)
    client = httpx.Client(base_url=server.url, timeout=60)
    bad = client.post("/jobs", json={"model": "mlp", "kind": "lr_find", "devices": 2})
    assert bad.status_code == 422 and "devices" in bad.text
    # With a schedule, every rank must set the same lr at each step.
    body = {"model": "mlp", "dataset": "synthetic", "epochs": 2, "batch_size": 60, "devices": 2,
            "lr_schedule": "cosine"}  # fmt: skip
    job = client.post("/jobs", json=body).json()
    assert job["devices"] == 2
    job = wait_for_status(client, job["id"], {"succeeded", "failed"}, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert [r["epoch"] for r in client.get(f"/jobs/{job['id']}/metrics").json()["data"]] == [1, 2]
    assert job["test_acc"] > 0.3
