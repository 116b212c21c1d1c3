"""Parsing uploaded datasets: every accepted format, and the ways an upload is refused."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from service.dataset_uploads import (
    UploadError,
    format_of,
    parse_csv,
    parse_idx_pair,
    parse_npz,
    parse_zip_folders,
    sniff_format,
)

LIMIT = 10 * 1024 * 1024


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def png(value: int, size: tuple[int, int] = (20, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def refused(field: str, match: str, fn, *args) -> None:
    with pytest.raises(UploadError, match=match) as info:
        fn(*args)
    assert info.value.field == field


def test_npz_images_are_split_and_kept_as_uint8() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 12, 14), dtype=np.uint8)
    labels = np.arange(50) % 3
    parsed = parse_npz(npz_bytes(images=images, labels=labels), LIMIT)
    assert (parsed.kind, parsed.format, parsed.input_shape, parsed.num_classes) == (
        "image", "npz", [12, 14], 3,
    )  # fmt: skip
    assert (parsed.train_examples, parsed.test_examples) == (40, 10)
    assert parsed.arrays["train_images"].dtype == np.uint8
    assert parsed.class_names == ["0", "1", "2"]
    every = np.concatenate([parsed.arrays["train_images"], parsed.arrays["test_images"]])
    assert sorted(map(bytes, every)) == sorted(map(bytes, images))  # a split, nothing lost


def test_npz_channels_floats_names_and_test_set() -> None:
    rgb = np.full((12, 3, 8, 8), 1.0, dtype=np.float32)  # (N, C, H, W) intensities in [0, 1]
    parsed = parse_npz(
        npz_bytes(images=rgb, labels=np.arange(12) % 2, test_images=rgb[:2],
                  test_labels=np.array([0, 1]), class_names=np.array(["cat", "dog"])),
        LIMIT,
    )  # fmt: skip
    assert parsed.arrays["train_images"].shape == (12, 8, 8)
    assert int(parsed.arrays["train_images"].max()) == 255
    assert parsed.test_examples == 2 and parsed.class_names == ["cat", "dog"]


def test_npz_refusals() -> None:
    good = np.zeros((20, 10, 10), dtype=np.uint8)
    labels = np.arange(20) % 2
    refused("file", "not an .npz", parse_npz, b"hello", LIMIT)
    refused("file", "'images' and 'labels'", parse_npz, npz_bytes(x=good), LIMIT)
    refused("file", "one per image", parse_npz, npz_bytes(images=good, labels=labels[:5]), LIMIT)
    refused("file", "0..C-1", parse_npz, npz_bytes(images=good, labels=labels - 1), LIMIT)
    refused(
        "file", "at least 2 classes", parse_npz, npz_bytes(images=good, labels=0 * labels), LIMIT
    )
    refused(
        "file", "0..255", parse_npz, npz_bytes(images=good.astype(int) + 300, labels=labels), LIMIT
    )
    refused(
        "file",
        "pixels a side",
        parse_npz,
        npz_bytes(images=np.zeros((20, 2, 2)), labels=labels),
        LIMIT,
    )
    refused("file", "at least 10", parse_npz, npz_bytes(images=good[:5], labels=labels[:5]), LIMIT)
    objects = np.array([{"a": 1}] * 20, dtype=object)  # would need pickle: never loaded
    refused("file", "cannot read", parse_npz, npz_bytes(images=objects, labels=labels), LIMIT)
    refused("file", "unpacks to", parse_npz, npz_bytes(images=good, labels=labels), 100)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_pair(gz: bool) -> None:
    images = np.random.default_rng(1).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = (np.arange(30) % 10).astype(np.uint8)
    pack = gzip.compress if gz else (lambda b: b)
    parsed = parse_idx_pair(pack(idx_bytes(images)), pack(idx_bytes(labels)), LIMIT)
    assert parsed.format == "idx" and parsed.num_classes == 10 and parsed.input_shape == [28, 28]
    refused("images", "bad magic", parse_idx_pair, b"\x01\x02\x03\x04", idx_bytes(labels), LIMIT)
    refused(
        "labels", "one per image", parse_idx_pair, idx_bytes(images), idx_bytes(labels[:3]), LIMIT
    )
    refused("images", r"\(N, H, W\)", parse_idx_pair, idx_bytes(labels), idx_bytes(labels), LIMIT)


def test_zip_of_class_folders() -> None:
    members = {f"shapes/{name}/{i}.png": png(40 * k + i) for k, name in enumerate(["b", "a"])
               for i in range(6)}  # fmt: skip
    members |= {"shapes/README.txt": b"ignored", "__MACOSX/shapes/a/._0.png": b"junk"}
    parsed = parse_zip_folders(zip_bytes(members), LIMIT, image_side=16)
    assert parsed.class_names == ["a", "b"] and parsed.num_classes == 2
    assert parsed.input_shape == [16, 16] and parsed.train_examples + parsed.test_examples == 12
    every = np.concatenate([parsed.arrays["train_labels"], parsed.arrays["test_labels"]])
    assert sorted(every.tolist()) == [0] * 6 + [1] * 6
    # Folder "a" holds the brighter images (40 + i): sorted class names give its label 0.
    train = parsed.arrays["train_images"]
    assert train[parsed.arrays["train_labels"] == 0].min() >= 40


@pytest.mark.parametrize("wrapper", ["", "upload/", "upload/v2/"])
def test_zip_images_deeper_in_a_class_folder_belong_to_it(wrapper: str) -> None:
    """As torchvision's ImageFolder: the class is the folder below the ones all images share."""
    members = {f"{wrapper}{name}/{i}.png": png(i) for name in ("cat", "dog") for i in range(6)}
    members[f"{wrapper}cat/indoor/deeper.png"] = png(99)
    parsed = parse_zip_folders(zip_bytes(members), LIMIT, image_side=16)
    assert parsed.class_names == ["cat", "dog"]
    every = np.concatenate([parsed.arrays["train_labels"], parsed.arrays["test_labels"]])
    assert sorted(every.tolist()) == [0] * 7 + [1] * 6


def test_zip_refusals() -> None:
    ok = {f"c{k}/{i}.png": png(i) for k in range(2) for i in range(6)}
    refused(
        "file", "refusing", parse_zip_folders, zip_bytes({**ok, "../evil/x.png": png(1)}), LIMIT
    )
    refused(
        "file", "class folders", parse_zip_folders, zip_bytes({**ok, "loose.png": png(1)}), LIMIT
    )
    refused("file", "not a readable image", parse_zip_folders,
            zip_bytes({**ok, "c0/broken.png": b"not a png"}), LIMIT)  # fmt: skip
    refused("file", "at least 2 class", parse_zip_folders,
            zip_bytes({f"only/{i}.png": png(i) for i in range(12)}), LIMIT)  # fmt: skip
    bomb = zip_bytes({"c0/a.png": png(1), "c1/zeros.png": b"\0" * (2 * 1024 * 1024)})
    refused("file", "unpacks to", parse_zip_folders, bomb, 100_000)  # 2 MB from a few KB
    refused("image_side", "4..512", parse_zip_folders, zip_bytes(ok), LIMIT, 1000)


def test_csv_for_regression() -> None:
    rows = ["x1,x2,y"] + [f"{i},{2 * i},{3 * i + 1}" for i in range(20)]
    parsed = parse_csv("\n".join(rows).encode())
    assert (parsed.kind, parsed.input_shape, parsed.train_examples, parsed.test_examples) == (
        "regression", [2], 16, 4,
    )  # fmt: skip
    assert parsed.arrays["train_x"].dtype == np.float32
    headerless = parse_csv("\n".join(rows[1:]).encode())
    assert headerless.train_examples == 16
    refused("file", "not a number", parse_csv, ("\n".join(rows) + "\n1,abc,3").encode())
    refused("file", "columns", parse_csv, ("\n".join(rows) + "\n1,2").encode())
    refused("file", "at least 10", parse_csv, b"1,2\n3,4\n")
    refused("file", "NaN", parse_csv, ("\n".join(rows) + "\n1,nan,3").encode())
    refused("file", "UTF-8", parse_csv, b"\xff\xfe\x00bad")


def test_sniff_format() -> None:
    assert sniff_format(npz_bytes(images=np.zeros(1), labels=np.zeros(1))) == "npz"
    assert sniff_format(zip_bytes({"a/b.png": png(1)})) == "zip"
    assert sniff_format(b"1,2,3\n") == "csv"
    assert sniff_format(b"PK broken archive") == "zip"  # then "not a zip archive", not a CSV error
    refused("file", "not a zip archive", parse_zip_folders, b"PK broken archive", LIMIT)


def test_a_file_name_s_extension_names_the_format() -> None:
    noise = bytes(range(256)) * 4
    assert format_of("data.NPZ", noise) == "npz"  # then "not an .npz file", not a CSV error
    refused("file", "not an .npz file", parse_npz, noise, LIMIT)
    assert format_of("photos.zip", b"1,2\n") == "zip"
    assert format_of("points.csv", b"PK\x03\x04") == "csv"
    # Without a known extension, the bytes decide.
    assert format_of("upload", zip_bytes({"a/b.png": png(1)})) == "zip"
    assert format_of("data.txt", b"1,2,3\n") == "csv"
