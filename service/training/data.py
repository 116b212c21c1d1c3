"""Datasets for training: Fashion-MNIST from its IDX files, and a small synthetic stand-in.

Images are kept as ``(N, 28, 28)`` uint8 tensors and labels as ``(N,)`` int64 tensors; the
conversion to model input (float, resizing) is ``models.to_model_input``, shared with prediction.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

KNOWN_DATASETS: tuple[str, ...] = ("fashion-mnist", "synthetic")

FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
SYNTHETIC_CLASSES: list[str] = [f"pattern {i}" for i in range(10)]
CLASS_NAMES: dict[str, list[str]] = {
    "fashion-mnist": FASHION_MNIST_CLASSES,
    "synthetic": SYNTHETIC_CLASSES,
}

# Where the Debian package `dataset-fashion-mnist` installs the files; searched after data_dir.
SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

SYNTHETIC_SEED = 20240607  # fixed: the synthetic data never depends on a job's seed
SYNTHETIC_TRAIN = 2000
SYNTHETIC_TEST = 500


class DatasetError(Exception):
    """The dataset cannot be used: unknown name, corrupt file, impossible split."""


class DatasetNotFoundError(DatasetError):
    """The dataset's files are in none of the places searched."""


@dataclass(frozen=True)
class Dataset:
    name: str
    train_images: torch.Tensor  # (N, 28, 28) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor  # (M, 28, 28) uint8
    test_labels: torch.Tensor  # (M,) int64
    class_names: list[str]


@dataclass(frozen=True)
class Splits:
    """The examples one job trains, validates and tests on (all on the CPU)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


# --------------------------------------------------------------------------------------- IDX

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(raw: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode one IDX file's bytes: magic ``00 00 <type> <ndim>``, big-endian uint32 dims, data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{source}: not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise DatasetError(f"{source}: unknown IDX data type 0x{type_code:02x}")
    if ndim == 0:
        raise DatasetError(f"{source}: IDX file with zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{source}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{source}: IDX data is {len(raw) - header} bytes, dims {dims} need {expected}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)  # native order, writable


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gzipped (``.gz``) or not."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    return parse_idx(raw, source=str(path))


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist_files(directory: Path) -> dict[str, Path] | None:
    found = {key: _idx_file(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
    if any(p is None for p in found.values()):
        return None
    return found  # type: ignore[return-value]


def find_fashion_mnist(data_dir: Path | None) -> dict[str, Path]:
    """The four IDX files: from ``data_dir`` if it holds them all, else from SYSTEM_DATA_DIR."""
    places: list[Path] = []
    if data_dir is not None:
        places.append(Path(data_dir))
    places.append(SYSTEM_DATA_DIR)
    for place in places:
        files = _fashion_mnist_files(place)
        if files is not None:
            return files
    where = (
        f"the data directory {Path(data_dir)} (TRAINSERVE_DATA_DIR)"
        if data_dir is not None
        else "the data directory (TRAINSERVE_DATA_DIR is not set)"
    )
    names = ", ".join(f"{stem}[.gz]" for stem in FASHION_MNIST_FILES.values())
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found: looked in {where} and in {SYSTEM_DATA_DIR}. "
        f"Install it with `apt-get install dataset-fashion-mnist`, or set TRAINSERVE_DATA_DIR "
        f"to a directory holding {names}."
    )


@lru_cache(maxsize=4)
def _load_fashion_mnist(files: tuple[tuple[str, str], ...]) -> Dataset:
    arrays = {key: read_idx(Path(path)) for key, path in files}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise DatasetError(f"{part} images: expected (N, 28, 28) uint8, got {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DatasetError(f"{part} labels: expected ({images.shape[0]},), got {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DatasetError(f"{part} labels outside 0..9")
    return Dataset(
        name="fashion-mnist",
        train_images=torch.from_numpy(arrays["train_images"]),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["test_images"]),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        class_names=list(FASHION_MNIST_CLASSES),
    )


# --------------------------------------------------------------------------------- synthetic


def _synthetic_prototypes() -> np.ndarray:
    """Ten smooth, clearly distinct 28x28 shapes in [0, 1] on a dark background."""
    v, u = np.mgrid[0:28, 0:28].astype(np.float64)
    u, v = (u - 13.5) / 12.0, (v - 13.5) / 12.0  # about [-1.1, 1.1]
    r = np.hypot(u, v)

    def inside(distance: np.ndarray) -> np.ndarray:  # soft edge: > 0 inside, < 0 outside
        return 1.0 / (1.0 + np.exp(-distance / 0.06))

    hbar = inside(0.2 - np.abs(v)) * inside(0.8 - np.abs(u))
    vbar = inside(0.2 - np.abs(u)) * inside(0.8 - np.abs(v))
    box = np.maximum(np.abs(u), np.abs(v))
    shapes = [
        inside(0.5 - r),  # disc
        inside(0.15 - np.abs(r - 0.6)),  # ring
        hbar,  # horizontal bar
        vbar,  # vertical bar
        np.maximum(hbar, vbar),  # cross
        inside(0.2 - np.abs(u - v) / np.sqrt(2)) * inside(0.85 - r),  # diagonal stroke
        inside(0.2 - np.abs(u + v) / np.sqrt(2)) * inside(0.85 - r),  # anti-diagonal stroke
        inside(0.12 - np.abs(box - 0.6)),  # square frame
        inside(-v) * inside(0.7 - np.abs(u)) * inside(0.8 + v),  # upper block
        inside(0.3 - np.hypot(np.abs(u) - 0.5, v)),  # two blobs side by side
    ]
    return np.stack(shapes)


def _synthetic_split(
    rng: np.random.Generator, protos: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = protos[labels] * rng.uniform(0.6, 1.0, size=(n, 1, 1))  # contrast
    shifts = rng.integers(-2, 3, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):  # small random translation
        images[i] = np.roll(images[i], (int(dy), int(dx)), axis=(0, 1))
    images = images + rng.normal(0.0, 0.1, size=images.shape)
    images = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


@lru_cache(maxsize=1)
def _load_synthetic() -> Dataset:
    rng = np.random.default_rng(SYNTHETIC_SEED)
    protos = _synthetic_prototypes()
    train_x, train_y = _synthetic_split(rng, protos, SYNTHETIC_TRAIN)
    test_x, test_y = _synthetic_split(rng, protos, SYNTHETIC_TEST)
    return Dataset(
        name="synthetic",
        train_images=torch.from_numpy(train_x),
        train_labels=torch.from_numpy(train_y),
        test_images=torch.from_numpy(test_x),
        test_labels=torch.from_numpy(test_y),
        class_names=list(SYNTHETIC_CLASSES),
    )


# ----------------------------------------------------------------------------------- public


def load_dataset(name: str, data_dir: Path | None = None) -> Dataset:
    """Load a dataset by name; cached per process. The tensors are shared: do not modify them."""
    if name == "synthetic":
        return _load_synthetic()
    if name == "fashion-mnist":
        files = find_fashion_mnist(data_dir)
        key = tuple(sorted((k, str(p.resolve())) for k, p in files.items()))
        return _load_fashion_mnist(key)
    raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}")


def split_indices(
    n: int, *, seed: int, val_fraction: float, train_examples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, val) index tensors into a training set of ``n`` examples.

    A seeded permutation; the first ``train_examples`` of it (all if None) are used; of those,
    ``round(val_fraction * used)`` (at least 1, leaving at least 1) go to validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    used = n if train_examples is None else min(int(train_examples), n)
    if used < 2:
        raise DatasetError(
            f"need at least 2 training examples to split off a validation set, got {used}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)[:used]
    n_val = min(max(1, round(val_fraction * used)), used - 1)
    return perm[n_val:], perm[:n_val]


def make_splits(
    dataset: Dataset,
    *,
    seed: int,
    val_fraction: float,
    train_examples: int | None = None,
    test_examples: int | None = None,
) -> Splits:
    """Train/validation split of the training set (seeded), plus the first test examples."""
    if train_examples is not None and train_examples < 2:
        raise DatasetError(f"train_examples must be at least 2, got {train_examples}")
    if test_examples is not None and test_examples < 1:
        raise DatasetError(f"test_examples must be at least 1, got {test_examples}")
    train_idx, val_idx = split_indices(
        len(dataset.train_labels),
        seed=seed,
        val_fraction=val_fraction,
        train_examples=train_examples,
    )
    n_test = len(dataset.test_labels) if test_examples is None else test_examples
    return Splits(
        train_images=dataset.train_images[train_idx],
        train_labels=dataset.train_labels[train_idx],
        val_images=dataset.train_images[val_idx],
        val_labels=dataset.train_labels[val_idx],
        test_images=dataset.test_images[:n_test],
        test_labels=dataset.test_labels[:n_test],
    )
