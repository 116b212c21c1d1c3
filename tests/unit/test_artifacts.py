"""Artifact files: atomic writes, round trip, and the remote copy for workers on other machines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models
from service import artifacts
from service.artifacts import ModelDescription, load_trained_model, save_trained_model


def _description(job_id: int) -> ModelDescription:
    return ModelDescription(
        job_id=job_id, model="lenet", model_kwargs={"dropout": 0.5}, input_side=28,
        class_names=[f"c{i}" for i in range(10)], config={"model": "lenet"}, metrics={},
    )  # fmt: skip


def test_round_trip_in_eval_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.build("lenet", dropout=0.5)
    save_trained_model(tmp_path, _description(1), model)
    loaded, description = load_trained_model(tmp_path, 1)
    assert description.model == "lenet" and not loaded.training
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    assert not list(artifacts.job_dir(tmp_path, 1).glob("*.tmp"))


def test_remote_copy_reaches_another_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINSERVE_ARTIFACT_URL", f"file://{tmp_path / 'remote'}")
    worker_dir, api_dir = tmp_path / "worker", tmp_path / "api"
    model = models.build("lenet", dropout=0.5).eval()
    save_trained_model(worker_dir, _description(7), model)
    assert (tmp_path / "remote" / "jobs" / "7" / artifacts.WEIGHTS_FILE).is_file()

    loaded, _ = load_trained_model(api_dir, 7)  # not on this "machine" yet: fetched
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert (artifacts.job_dir(api_dir, 7) / artifacts.DESCRIPTION_FILE).is_file()
    with pytest.raises(FileNotFoundError):
        load_trained_model(api_dir, 8)


def test_a_checkpoint_shared_through_the_url_resumes_on_another_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job stopped on one worker resumes on a worker with another disk, not from epoch 1."""
    from service.training.config import TrainConfig
    from service.training.loop import TrainingCancelled, save_checkpoint, train

    monkeypatch.setenv("TRAINSERVE_ARTIFACT_URL", f"file://{tmp_path / 'remote'}")
    config = TrainConfig(model="softmax", dataset="synthetic", epochs=3, lr=0.1, seed=3)
    first, second = tmp_path / "first", tmp_path / "second"

    def share_from(artifact_dir: Path):
        def save_and_share(path: Path, state: dict) -> None:
            save_checkpoint(path, state)
            artifacts.push_checkpoint(artifact_dir, 5)

        return save_and_share

    done: list[int] = []
    with pytest.raises(TrainingCancelled):  # the first worker stops after epoch 2
        train(
            config,
            checkpoint_path=artifacts.checkpoint_path(first, 5),
            save_checkpoint_fn=share_from(first),
            on_epoch=lambda m: done.append(m.epoch),
            should_stop=lambda: len(done) >= 2,
        )
    assert not artifacts.checkpoint_path(second, 5).exists()
    assert artifacts.fetch_checkpoint(second, 5)
    resumed: list[int] = []
    result = train(
        config,
        checkpoint_path=artifacts.checkpoint_path(second, 5),
        on_epoch=lambda m: resumed.append(m.epoch),
    )
    assert resumed == [3] and [m.epoch for m in result.epochs] == [1, 2, 3]

    artifacts.remove_checkpoint(second, 5)  # the job ended: nothing will resume it
    assert not artifacts.checkpoint_path(second, 5).exists()
    assert not artifacts.fetch_checkpoint(tmp_path / "third", 5)


def test_the_shared_checkpoint_wins_over_an_older_one_left_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker A ran the job to epoch 3 and was killed; B took it to epoch 15 and was killed;
    A, claiming it again, resumed from its own epoch 3 and trained 12 epochs again."""
    monkeypatch.setenv("TRAINSERVE_ARTIFACT_URL", f"file://{tmp_path / 'remote'}")
    a, b = tmp_path / "a", tmp_path / "b"
    for machine, content in ((a, b"epoch 3"), (b, b"epoch 15")):
        path = artifacts.checkpoint_path(machine, 6)
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
        artifacts.push_checkpoint(machine, 6)  # each checkpoint is shared once written
    assert artifacts.fetch_checkpoint(a, 6)
    assert artifacts.checkpoint_path(a, 6).read_bytes() == b"epoch 15"
    # Without a shared one (never pushed, or no URL), the one here is the one to resume from.
    alone = artifacts.checkpoint_path(a, 7)
    alone.parent.mkdir(parents=True, exist_ok=True)
    alone.write_bytes(b"epoch 2")
    assert artifacts.fetch_checkpoint(a, 7) and alone.read_bytes() == b"epoch 2"
    monkeypatch.delenv("TRAINSERVE_ARTIFACT_URL")
    assert artifacts.fetch_checkpoint(a, 7) and not artifacts.fetch_checkpoint(a, 8)


def test_a_failing_checkpoint_store_does_not_stop_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Resuming on another machine is a convenience: an unusable store is logged, not raised."""
    monkeypatch.setenv("TRAINSERVE_ARTIFACT_URL", "nosuchprotocol://bucket/trainserve")
    local = artifacts.checkpoint_path(tmp_path, 9)
    local.parent.mkdir(parents=True)
    local.write_bytes(b"epoch 1")
    artifacts.push_checkpoint(tmp_path, 9)
    assert not artifacts.fetch_checkpoint(tmp_path / "elsewhere", 9)
    artifacts.remove_checkpoint(tmp_path, 9)
    assert not local.exists()
    assert caplog.text.count("TRAINSERVE_ARTIFACT_URL") == 3
