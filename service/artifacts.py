"""Per-job artifact files: final weights (safetensors) plus a JSON file describing the model.

Layout under the artifact directory:  jobs/<job_id>/model.safetensors
                                      jobs/<job_id>/model.json
                                      jobs/<job_id>/checkpoint.pt   (latest epoch, for resuming)
Nothing here unpickles user input: weights are safetensors, the description is JSON, and
checkpoints are written by our own workers only and read with ``weights_only=True``.

Across machines: with TRAINSERVE_ARTIFACT_URL set to an fsspec URL (s3://…, gs://…, file://…),
a worker also uploads each trained model there, and an API process whose local artifact
directory lacks a model downloads it from there before loading it. Each epoch's checkpoint goes
there too, so that a job requeued onto another machine resumes from it instead of starting
over; it is deleted there with the local one. The local directory stays the working copy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import models

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
WEIGHTS_FILE = "model.safetensors"
DESCRIPTION_FILE = "model.json"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class ModelDescription:
    """What inference needs to rebuild a trained network from its files alone."""

    job_id: int
    model: str  # registry name
    model_kwargs: dict[str, Any]  # passed to models.build(model, **model_kwargs)
    input_side: int  # pixels; inputs are resized to input_side x input_side
    class_names: list[str]
    config: dict[str, Any]  # the job's whole TrainConfig
    metrics: dict[str, Any]  # final train/val/test figures
    # [H, W] of the training images as stored (an upload's own size; 28x28 for Fashion-MNIST),
    # which predict's JSON instances may come in; None in files written before it was kept.
    image_shape: list[int] | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)


def job_dir(artifact_dir: Path, job_id: int) -> Path:
    return Path(artifact_dir) / "jobs" / str(int(job_id))


def checkpoint_path(artifact_dir: Path, job_id: int) -> Path:
    return job_dir(artifact_dir, job_id) / CHECKPOINT_FILE


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via temp file + fsync + rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_trained_model(
    artifact_dir: Path, description: ModelDescription, model: torch.nn.Module
) -> Path:
    """Write weights first and the description last: the JSON's presence marks a complete model."""
    directory = job_dir(artifact_dir, description.job_id)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".weights.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, directory / WEIGHTS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_bytes(directory / DESCRIPTION_FILE, description.to_json().encode())
    push_remote(artifact_dir, description.job_id)
    return directory


def _remote_url() -> str | None:
    return os.environ.get("TRAINSERVE_ARTIFACT_URL") or None


def _remote_job_dir(url: str, job_id: int) -> tuple[object, str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return fs, f"{root.rstrip('/')}/jobs/{int(job_id)}"


def push_remote(artifact_dir: Path, job_id: int) -> None:
    """Upload a job's model files to TRAINSERVE_ARTIFACT_URL (description last), if it is set."""
    url = _remote_url()
    if url is None:
        return
    fs, remote = _remote_job_dir(url, job_id)
    local = job_dir(artifact_dir, job_id)
    fs.makedirs(remote, exist_ok=True)  # type: ignore[attr-defined]
    for name in (WEIGHTS_FILE, DESCRIPTION_FILE):
        fs.pipe_file(f"{remote}/{name}", (local / name).read_bytes())  # type: ignore[attr-defined]


def _best_effort(what: str) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """A remote checkpoint is a convenience (resuming on another machine), not the job: a
    store that fails is logged, and the job goes on as if no URL were set."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R | None]:
        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R | None:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # any fsspec backend's error
                log.warning("could not %s at TRAINSERVE_ARTIFACT_URL: %s", what, exc)
                return None

        return guarded

    return wrap


@_best_effort("upload a checkpoint")
def push_checkpoint(artifact_dir: Path, job_id: int) -> None:
    """Upload a job's latest checkpoint to TRAINSERVE_ARTIFACT_URL, if it is set."""
    url = _remote_url()
    if url is None:
        return
    fs, remote = _remote_job_dir(url, job_id)
    fs.makedirs(remote, exist_ok=True)  # type: ignore[attr-defined]
    data = checkpoint_path(artifact_dir, job_id).read_bytes()
    # Written beside, then moved: a worker fetching meanwhile never reads half a checkpoint.
    fs.pipe_file(f"{remote}/.{CHECKPOINT_FILE}.part", data)  # type: ignore[attr-defined]
    fs.mv(f"{remote}/.{CHECKPOINT_FILE}.part", f"{remote}/{CHECKPOINT_FILE}")  # type: ignore[attr-defined]


@_best_effort("fetch a checkpoint")
def fetch_checkpoint(artifact_dir: Path, job_id: int) -> bool:
    """Take a job's checkpoint from TRAINSERVE_ARTIFACT_URL where it has one, in place of any
    here: every checkpoint is uploaded once written, so the shared one is the latest, whichever
    machine ran the job last. One left here by an earlier run on this machine is older when
    another machine has run the job since: resumed, it had trained 8 epochs again. False when
    there is none, here or there."""
    local = checkpoint_path(artifact_dir, job_id)
    files = _download(job_id, (CHECKPOINT_FILE,))
    if files is None:
        return local.is_file()
    atomic_write_bytes(local, files[CHECKPOINT_FILE])
    log.info("fetched the checkpoint of job %s from %s", job_id, _remote_url())
    return True


def local_checkpoint_job_ids(artifact_dir: Path) -> list[int]:
    """The jobs with a checkpoint in this artifact directory."""
    return sorted(
        int(path.parent.name)
        for path in (Path(artifact_dir) / "jobs").glob(f"*/{CHECKPOINT_FILE}")
        if path.parent.name.isdigit()
    )


def remove_checkpoint(artifact_dir: Path, job_id: int) -> None:
    """Delete a job's checkpoint here and at TRAINSERVE_ARTIFACT_URL: nothing will resume it."""
    checkpoint_path(artifact_dir, job_id).unlink(missing_ok=True)
    _remove_remote_checkpoint(job_id)


@_best_effort("delete a checkpoint")
def _remove_remote_checkpoint(job_id: int) -> None:
    url = _remote_url()
    if url is None:
        return
    fs, remote = _remote_job_dir(url, job_id)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(f"{remote}/{CHECKPOINT_FILE}")  # type: ignore[attr-defined]


def fetch_remote(artifact_dir: Path, job_id: int) -> bool:
    """Download a job's model files from TRAINSERVE_ARTIFACT_URL unless they are here already."""
    local = job_dir(artifact_dir, job_id)
    if (local / DESCRIPTION_FILE).is_file() and (local / WEIGHTS_FILE).is_file():
        return True
    files = _download(job_id, (WEIGHTS_FILE, DESCRIPTION_FILE))
    if files is None:
        return False
    for name in (WEIGHTS_FILE, DESCRIPTION_FILE):  # the description last marks it complete
        atomic_write_bytes(local / name, files[name])
    log.info("fetched model %s from %s", job_id, _remote_url())
    return True


def _download(job_id: int, names: tuple[str, ...]) -> dict[str, bytes] | None:
    """The named files of a job at TRAINSERVE_ARTIFACT_URL; None without a URL or a file."""
    url = _remote_url()
    if url is None:
        return None
    fs, remote = _remote_job_dir(url, job_id)
    try:
        return {name: fs.cat_file(f"{remote}/{name}") for name in names}  # type: ignore[attr-defined]
    except FileNotFoundError:
        return None


MAX_INPUT_SIDE = 512  # a job's largest resize


def read_description(artifact_dir: Path, job_id: int) -> ModelDescription:
    """Raises FileNotFoundError when the job has no complete model; ValueError or TypeError
    when its description is not one (a value of the wrong type or out of range: an input side
    of 100,000 had a load allocate 40 GB)."""
    fetch_remote(artifact_dir, job_id)
    raw = (job_dir(artifact_dir, job_id) / DESCRIPTION_FILE).read_text()
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise TypeError(f"{DESCRIPTION_FILE} holds {type(data).__name__}, not an object")
    description = ModelDescription(**data)
    _check_description(description)
    return description


def _check_description(d: ModelDescription) -> None:
    if d.model not in models.list_models():
        raise ValueError(f"unknown network {d.model!r}")
    if type(d.input_side) is not int or not 1 <= d.input_side <= MAX_INPUT_SIDE:
        raise ValueError(f"input_side must be an integer from 1 to {MAX_INPUT_SIDE}")
    names = d.class_names
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise ValueError("class_names must be a list of at least 2 names")
    if not isinstance(d.model_kwargs, dict):
        raise TypeError("model_kwargs must be an object")
    if d.model_kwargs.get("num_classes", 10) != len(names):  # models.build's default: 10
        raise ValueError(f"{len(names)} class_names for a network of other outputs")


def check_model_files(artifact_dir: Path, job_id: int) -> ModelDescription:
    """The description, once it is sound and the weights file holds the network it names: the
    same tensor names and shapes, read from its header against the network built without
    memory (on the meta device); no weights are read. Raises what loading would:
    FileNotFoundError, ValueError, TypeError, SafetensorError."""
    description = read_description(artifact_dir, job_id)
    with torch.device("meta"):
        expected = {
            k: tuple(v.shape)
            for k, v in models.build(description.model, **description.model_kwargs)
            .state_dict()
            .items()
        }
    with safe_open(str(job_dir(artifact_dir, job_id) / WEIGHTS_FILE), framework="pt") as weights:
        stored = {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}  # noqa: SIM118
    if stored != expected:
        missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        odd = sorted(k for k in set(stored) & set(expected) if stored[k] != expected[k])
        raise ValueError(
            f"the weights are not those of {description.model!r} (missing {missing[:3]}, "
            f"unexpected {extra[:3]}, other shapes {odd[:3]})"
        )
    return description


def load_trained_model(artifact_dir: Path, job_id: int) -> tuple[torch.nn.Module, ModelDescription]:
    """Rebuild the network from its files, in eval mode (dropout off), on the CPU. Raises
    ValueError for weights that are not all finite (damaged data under a sound header)."""
    fetch_remote(artifact_dir, job_id)
    description = read_description(artifact_dir, job_id)
    model = models.build(description.model, **description.model_kwargs)
    state = load_file(str(job_dir(artifact_dir, job_id) / WEIGHTS_FILE), device="cpu")
    if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
        raise ValueError("the weights hold NaN or infinite values")
    model.load_state_dict(state)
    model.eval()
    return model, description
