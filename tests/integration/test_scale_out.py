"""Scale-out: the API alone plus a standalone worker with its own disk, sharing PostgreSQL and
an fsspec artifact URL; an idle worker starts a queued job within a second."""

from __future__ import annotations

import time
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
        time.sleep(3)  # let the worker start polling
        submitted = time.monotonic()
        job = client.post(
            "/jobs",
            json={"model": "softmax", "dataset": "synthetic", "epochs": 1, "batch_size": 64},
        ).json()
        wait_for_status(client, job["id"], {"running", "succeeded"}, timeout=10)
        claim_latency = time.monotonic() - submitted
        assert claim_latency < 1.5  # polling every 0.2 s here; 0.5 s by default
        job = wait_for_status(client, job["id"], {"succeeded", "failed"}, timeout=120)
        assert job["status"] == "succeeded", job["error"]

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
    body = {"model": "mlp", "dataset": "synthetic", "epochs": 2, "batch_size": 60, "devices": 2}
    job = client.post("/jobs", json=body).json()
    assert job["devices"] == 2
    job = wait_for_status(client, job["id"], {"succeeded", "failed"}, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert [r["epoch"] for r in client.get(f"/jobs/{job['id']}/metrics").json()["data"]] == [1, 2]
    assert job["test_acc"] > 0.3
