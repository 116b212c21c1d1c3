"""Datasets: IDX parsing, Fashion-MNIST discovery, the synthetic set, and the splits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from service.training import data
from service.training.data import (
    DatasetError,
    DatasetNotFoundError,
    load_dataset,
    make_splits,
    parse_idx,
    read_idx,
    split_indices,
)

FASHION_PRESENT = data._fashion_mnist_files(data.SYSTEM_DATA_DIR) is not None


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    dtype = np.dtype(np.uint8) if array.dtype == np.uint8 else np.dtype(">i4")
    header = bytes([0, 0, codes[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_fashion_dir(directory: Path, *, gz: bool, n_train: int = 6, n_test: int = 4) -> None:
    rng = np.random.default_rng(0)
    parts = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in parts.items():
        raw = idx_bytes(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_tiny_file(tmp_path: Path, gz: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(array)
    path = tmp_path / ("tiny-idx3-ubyte.gz" if gz else "tiny-idx3-ubyte")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path)
    assert out.dtype == np.uint8
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


def test_parse_idx_int32_and_labels() -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(idx_bytes(labels)), labels)
    wide = np.array([[1, -2], [70000, 4]], dtype=np.int64)
    out = parse_idx(idx_bytes(wide))
    assert out.shape == (2, 2)
    np.testing.assert_array_equal(out, wide)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "magic"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01\x07", "data type"),
        (b"\x00\x00\x08\x02\x00\x00", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x07", "need 3"),
    ],
)
def test_parse_idx_rejects_bad_files(raw: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_idx(raw)


@pytest.mark.parametrize("gz", [False, True])
def test_load_from_data_dir(tmp_path: Path, gz: bool) -> None:
    write_fashion_dir(tmp_path / "fm", gz=gz)
    ds = load_dataset("fashion-mnist", tmp_path / "fm")
    assert ds.train_images.shape == (6, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.train_labels.dtype == torch.int64
    assert ds.test_images.shape == (4, 28, 28)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert load_dataset("fashion-mnist", tmp_path / "fm") is ds  # cached per process


def test_missing_data_names_both_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "system" / "fashion-mnist"
    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", system)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", mine)
    message = str(info.value)
    assert str(mine) in message and str(system) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "TRAINSERVE_DATA_DIR" in message
    assert isinstance(info.value, DatasetError)
    with pytest.raises(DatasetNotFoundError, match="TRAINSERVE_DATA_DIR"):
        load_dataset("fashion-mnist", None)


def test_incomplete_data_dir_falls_back_to_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fashion_dir(tmp_path / "system", gz=True, n_train=8)
    (tmp_path / "partial").mkdir()
    write_fashion_dir(tmp_path / "partial", gz=False)
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    assert len(load_dataset("fashion-mnist", tmp_path / "partial").train_labels) == 8


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("imagenet", None)


@pytest.mark.skipif(not FASHION_PRESENT, reason="Fashion-MNIST is not installed")
def test_real_fashion_mnist_shapes() -> None:
    ds = load_dataset("fashion-mnist", None)
    assert ds.train_images.shape == (60000, 28, 28)
    assert ds.test_images.shape == (10000, 28, 28)
    assert ds.train_images.dtype == torch.uint8
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    for labels in (ds.train_labels, ds.test_labels):
        assert labels.dtype == torch.int64
        assert labels.min().item() == 0 and labels.max().item() == 9
    assert ds.class_names == data.FASHION_MNIST_CLASSES


def test_synthetic_is_deterministic_and_balanced() -> None:
    ds = load_dataset("synthetic", None)
    fresh = data._load_synthetic.__wrapped__()  # regenerate, bypassing the cache
    for a, b in [
        (ds.train_images, fresh.train_images),
        (ds.train_labels, fresh.train_labels),
        (ds.test_images, fresh.test_images),
        (ds.test_labels, fresh.test_labels),
    ]:
        assert torch.equal(a, b)
    assert ds.train_images.shape == (2000, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (500, 28, 28)
    assert torch.bincount(ds.train_labels, minlength=10).tolist() == [200] * 10
    assert ds.class_names == [f"pattern {i}" for i in range(10)]
    assert not torch.equal(ds.train_images[0], ds.train_images[1])


def test_split_sizes_disjoint_and_deterministic() -> None:
    ds = load_dataset("synthetic", None)
    a = make_splits(ds, seed=3, val_fraction=0.1)
    assert len(a.train_labels) == 1800 and len(a.val_labels) == 200
    assert len(a.test_labels) == 500
    train_idx, val_idx = split_indices(2000, seed=3, val_fraction=0.1)
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert len(set(train_idx.tolist()) | set(val_idx.tolist())) == 2000
    assert torch.equal(ds.train_images[train_idx], a.train_images)
    b = make_splits(ds, seed=3, val_fraction=0.1)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.val_labels, b.val_labels)
    c_train, _ = split_indices(2000, seed=4, val_fraction=0.1)
    assert not torch.equal(train_idx, c_train)


def test_split_subsets_and_edges() -> None:
    ds = load_dataset("synthetic", None)
    s = make_splits(ds, seed=0, val_fraction=0.2, train_examples=100, test_examples=7)
    assert len(s.train_labels) == 80 and len(s.val_labels) == 20
    assert torch.equal(s.test_images, ds.test_images[:7])
    for fraction in (0.0, 0.999):
        t, v = split_indices(10, seed=0, val_fraction=fraction)
        assert len(t) >= 1 and len(v) >= 1 and len(t) + len(v) == 10
    t, v = split_indices(2, seed=0, val_fraction=0.5)
    assert len(t) == 1 and len(v) == 1
    with pytest.raises(DatasetError):
        split_indices(1, seed=0, val_fraction=0.1)
    with pytest.raises(DatasetError):
        split_indices(10, seed=0, val_fraction=1.0)
    with pytest.raises(DatasetError):
        make_splits(ds, seed=0, val_fraction=0.1, test_examples=0)
