"""Export a trained model as ONNX or TorchScript, the way the service runs it.

The exported graph takes ``input``: float32 (N, 1, side, side) pixel values 0-255 (the
model's input side; resize first, as ``models.to_model_input`` does) and gives
``probabilities``: float32 (N, num_classes), softmax of the network with dropout off. The
batch axis is dynamic. That is the tensor contract of ``/v2/models/{id}/infer`` too.
Files are written once per job next to its weights (``jobs/<id>/export/``) and reused; where
the artifact directory is read-only (a shared volume mounted so), they go to a private temp
directory of this process instead, removed when the process exits.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from service import artifacts
from service.inference.predictor import LoadedModel

FORMATS = ("onnx", "torchscript", "safetensors")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
ONNX_OPSET = 17

_locks: dict[tuple[int, str], threading.Lock] = {}
_locks_guard = threading.Lock()
# torch.onnx.export and torch.jit.trace keep process-wide state (the exporter's GLOBALS, the
# tracing state), and warnings.catch_warnings is process-wide too: two conversions at once,
# even of different models, failed ("GLOBALS.in_onnx_export must be False"). One at a time.
_converting = threading.Lock()
_fallback_root: Path | None = None


class ServedNetwork(torch.nn.Module):
    """Pixels 0-255 at the model's input side -> probabilities, as the service computes them."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels / 255.0  # (N, 1, side, side) in [0, 1], as models.to_model_input scales
        return torch.softmax(self.network(x), dim=1)  # (N, num_classes)


def export_path(artifact_dir: Path, job_id: int, fmt: str) -> Path:
    """Where the job's file in ``fmt`` lives (safetensors: the stored weights themselves)."""
    if fmt == "safetensors":
        return artifacts.job_dir(artifact_dir, job_id) / artifacts.WEIGHTS_FILE
    return artifacts.job_dir(artifact_dir, job_id) / "export" / FILE_NAMES[fmt]


def export_model(artifact_dir: Path, loaded: LoadedModel, fmt: str) -> Path:
    """The path of the job's model in ``fmt``, exporting it first if needed."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    path = export_path(artifact_dir, loaded.job_id, fmt)
    if fmt == "safetensors" or path.is_file():
        return path
    with _lock_for(loaded.job_id, fmt):
        if path.is_file():  # another request may have written it meanwhile
            return path
        fallback = _fallback_path(artifact_dir, loaded.job_id, fmt, create=False)
        if fallback is not None and fallback.is_file():
            return fallback
        with _converting:
            data = to_onnx(loaded) if fmt == "onnx" else to_torchscript(loaded)
        try:
            artifacts.atomic_write_bytes(path, data)
        except OSError:  # read-only or full artifact directory: serve from our own temp dir
            fallback = _fallback_path(artifact_dir, loaded.job_id, fmt, create=True)
            artifacts.atomic_write_bytes(fallback, data)
            return fallback
    return path


def _fallback_path(artifact_dir: Path, job_id: int, fmt: str, *, create: bool) -> Path | None:
    """A place in this process's temp directory, keyed by artifact directory and job; the
    directory is made only when a write needs it (None before that unless ``create``)."""
    global _fallback_root
    with _locks_guard:
        if _fallback_root is None:
            if not create:
                return None
            _fallback_root = Path(tempfile.mkdtemp(prefix="trainserve-export-"))
    key = hashlib.sha256(str(artifact_dir.resolve()).encode()).hexdigest()[:16]
    return _fallback_root / key / str(job_id) / FILE_NAMES[fmt]


def remove_fallback_files() -> None:
    """Delete this process's temp export files (at exit: nothing else would)."""
    global _fallback_root
    with _locks_guard:
        root, _fallback_root = _fallback_root, None
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


atexit.register(remove_fallback_files)


def _lock_for(job_id: int, fmt: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((job_id, fmt), threading.Lock())


def _served_copy(loaded: LoadedModel) -> tuple[ServedNetwork, torch.Tensor]:
    # A copy on the CPU: exporting never touches the network that serves.
    served = ServedNetwork(loaded.network_copy("cpu")).eval()
    example = torch.full((2, 1, loaded.input_side, loaded.input_side), 128.0)
    return served, example


def to_onnx(loaded: LoadedModel) -> bytes:
    """ONNX (TorchScript-based exporter: needs only the ``onnx`` package), dynamic batch."""
    served, example = _served_copy(loaded)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            served,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def to_torchscript(loaded: LoadedModel) -> bytes:
    """TorchScript by tracing (the networks have no data-dependent control flow)."""
    served, example = _served_copy(loaded)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(served, example)
        torch.jit.save(traced, buffer)
    return buffer.getvalue()
