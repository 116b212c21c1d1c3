"""Parsing uploaded datasets: every accepted format, and the ways an upload is refused."""

from __future__ import annotations

import gzip
import io
import re
import struct
import time
import zipfile

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from service import dataset_uploads
from service.api.datasets import _check_name, _parse
from service.dataset_uploads import (
    UploadError,
    format_of,
    parse_csv,
    parse_idx_pair,
    parse_npz,
    parse_zip_folders,
    sniff_format,
    stratified_split,
)
from service.errors import InvalidRequest
from service.inference.errors import InvalidInput
from service.inference.images import decode_image

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
    # with a test set, the same checks run on four arrays: the message names the wrong one
    test = {"test_images": good[:5], "test_labels": labels[:5]}
    nan = np.full((5, 10, 10), np.nan)
    refused(
        "file",
        "'test_images': images contain NaN",
        parse_npz,
        npz_bytes(images=good, labels=labels, **{**test, "test_images": nan}),
        LIMIT,
    )
    refused(
        "file",
        "'test_labels': labels must be 0..C-1",
        parse_npz,
        npz_bytes(images=good, labels=labels, **{**test, "test_labels": labels[:5] - 1}),
        LIMIT,
    )
    refused("file", "'labels': expected 20 labels", parse_npz,
            npz_bytes(images=good, labels=labels[:5], **test), LIMIT)  # fmt: skip
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


def test_a_gzipped_idx_file_is_inflated_no_further_than_its_header_declares() -> None:
    """A small gzip whose header declares more than the limit is refused before it is inflated
    (1 MB of zeros filled 800 MB first); one holding more than it declares, after that size."""
    labels = (np.arange(30) % 10).astype(np.uint8)
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 1_300_000, 28, 28)
    bomb = gzip.compress(header + bytes(10_000_000))  # the zeros stop long before 1,300,000 images
    started = time.perf_counter()
    refused("images", "declares", parse_idx_pair, bomb, idx_bytes(labels), LIMIT)
    assert time.perf_counter() - started < 1.0
    images = np.zeros((30, 28, 28), dtype=np.uint8)
    longer = gzip.compress(idx_bytes(images) + bytes(1000))
    refused("images", "more than the", parse_idx_pair, longer, idx_bytes(labels), LIMIT)
    shorter = gzip.compress(idx_bytes(images)[:-10])
    refused("images", "dims", parse_idx_pair, shorter, idx_bytes(labels), LIMIT)


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
    refused("file", r"c0/broken.png: not an image Pillow can read \(unrecognised format\)$",
            parse_zip_folders, zip_bytes({**ok, "c0/broken.png": b"not a png"}), LIMIT)  # fmt: skip
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
    refused("file", "line 22, column 2: 'abc' is not a number", parse_csv,
            ("\n".join(rows) + "\n1,abc,3").encode())  # fmt: skip
    refused("file", "line 22 has 2 columns", parse_csv, ("\n".join(rows) + "\n1,2").encode())
    refused("file", "at least 10", parse_csv, b"1,2\n3,4\n")
    refused("file", "line 22, column 2 is nan; NaN", parse_csv,
            ("\n".join(rows) + "\n1,nan,3").encode())  # fmt: skip
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


# ------------------------------------------------- zip: decoded size, decoding as predict does


def image_file(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def zip_of(data: bytes, per_class: int = 6) -> bytes:
    """Two class folders holding `per_class` copies of one image file each."""
    return zip_bytes({f"c{k}/{i}.png": data for k in range(2) for i in range(per_class)})


def every_image(parsed) -> np.ndarray:
    return np.concatenate([parsed.arrays["train_images"], parsed.arrays["test_images"]])


def test_zip_source_pixels_are_bounded_before_each_decode() -> None:
    """Decoding time follows the images' own pixels: 12 blank 400x400 PNGs zip to a few KB but
    hold 1.92 Mpx, over the 4 x 100,000 that a 100 KB upload may decode."""
    big = zip_of(png(0, size=(400, 400)))
    assert len(big) < 20_000
    refused("file", "too many pixels before resizing", parse_zip_folders, big, 100_000)
    assert parse_zip_folders(big, 1_000_000).train_examples == 10  # 4 Mpx may be decoded


def test_zip_decoded_size_is_bounded_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """12 1x1 PNGs are under 1 KB zipped; at 64 px a side they decode to 49,152 bytes."""
    tiny = zip_of(png(1, size=(1, 1)))
    max_bytes = 10_000  # archives and decoded images may reach 4x: 40,000 bytes
    assert parse_zip_folders(tiny, max_bytes, image_side=56).train_examples == 10  # 37,632 B

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(dataset_uploads, "decode_image", no_decoding)
    refused(
        "image_side",
        r"12 images at 64x64 pixels take 49152 bytes decoded, over the limit of 40000 bytes"
        r".*at most 9 images",
        parse_zip_folders, tiny, max_bytes, 64,
    )  # fmt: skip


def test_zip_split_is_the_stratified_split_of_the_images_in_class_order() -> None:
    """Images decoded straight into train/test slots land where stack-then-split put them."""
    members = {f"{name}/{i}.png": png(10 * i + k, size=(8, 8))
               for i in range(7) for k, name in enumerate(["b", "a"])}  # fmt: skip
    parsed = parse_zip_folders(zip_bytes(members), LIMIT, image_side=8)
    in_class_order = np.array([10 * i + 1 for i in range(7)] + [10 * i for i in range(7)])
    labels = np.array([0] * 7 + [1] * 7)
    train_idx, test_idx = stratified_split(labels, "file")
    assert parsed.arrays["train_images"][:, 0, 0].tolist() == in_class_order[train_idx].tolist()
    assert parsed.arrays["test_images"][:, 0, 0].tolist() == in_class_order[test_idx].tolist()
    assert parsed.arrays["train_labels"].tolist() == labels[train_idx].tolist()


SIXTEEN_BIT = image_file(Image.fromarray(np.full((16, 16), 128 * 257, dtype=np.uint16)))
HALF_TRANSPARENT = image_file(Image.new("RGBA", (16, 16), (200, 200, 200, 128)))


@pytest.mark.parametrize(
    ("data", "pixel"),
    [(SIXTEEN_BIT, 128), (HALF_TRANSPARENT, 100)],  # not 255 (saturated), not 200 (alpha dropped)
    ids=["16-bit", "rgba"],
)
def test_zip_members_decode_as_on_the_predict_path(data: bytes, pixel: int) -> None:
    parsed = parse_zip_folders(zip_of(data), LIMIT, image_side=16)  # the images' own side
    predicted = decode_image(data, "files[0]")
    assert (every_image(parsed) == predicted).all() and int(predicted[0, 0]) == pixel


def test_zip_members_are_turned_upright_by_their_exif_orientation() -> None:
    """Stored 16 wide x 8 high with its left half white; orientation 6 rotates it clockwise,
    so upright it is 8 x 16 with its top half white."""
    pixels = np.zeros((8, 16), dtype=np.uint8)
    pixels[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    parsed = parse_zip_folders(zip_of(image_file(Image.fromarray(pixels), exif=exif)), LIMIT, 16)
    image = every_image(parsed)[0]
    assert image[:6].min() == 255 and image[10:].max() == 0


def test_zip_never_hands_eps_to_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[bool] = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(True))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n"
    archive = zip_bytes({**{f"c{k}/{i}.png": png(i) for k in range(2) for i in range(6)},
                         "c0/evil.png": eps})  # fmt: skip
    with pytest.raises(InvalidInput) as on_predict:
        decode_image(eps, "files[0]")
    refused("file", f"^file: c0/evil.png: {re.escape(on_predict.value.reason)}$",
            parse_zip_folders, archive, LIMIT)  # fmt: skip
    assert not opened


def test_zip_folders_named_alike_after_cleaning_are_refused() -> None:
    members = {f"{name}/{i}.png": png(i) for name in ("a\x01", "a\x02") for i in range(6)}
    refused("file", "would both be named 'a_'", parse_zip_folders, zip_bytes(members), LIMIT)


# ---------------------------------------------------------------- labels and class names


def test_labels_must_cover_every_class() -> None:
    images = np.zeros((20, 8, 8), dtype=np.uint8)
    ones = np.ones(20, dtype=np.int64)  # a "2-class" set with no example of class 0
    refused("file", "no example of label 0 .C = 2", parse_npz,
            npz_bytes(images=images, labels=ones), LIMIT)  # fmt: skip
    names = np.array(["cat", "dog", "bird"])
    refused("file", r"no example of class 'bird' \(label 2\)", parse_npz,
            npz_bytes(images=images, labels=np.arange(20) % 2, class_names=names), LIMIT)  # fmt: skip
    gappy = np.arange(20) % 4 * 2  # 0, 2, 4, 6
    refused("file", "no example of label 1, label 3, label 5", parse_npz,
            npz_bytes(images=images, labels=gappy), LIMIT)  # fmt: skip


@pytest.mark.parametrize(
    ("labels", "shown"),
    [(np.full(20, 1e20), "100000000000000000000"), (np.full(20, 2**63, np.uint64), str(2**63))],
    ids=["float", "uint64"],
)
def test_out_of_range_labels_are_reported_as_given(labels: np.ndarray, shown: str) -> None:
    images = np.zeros((20, 8, 8), dtype=np.uint8)
    refused(
        "file", f"got label {shown}$", parse_npz, npz_bytes(images=images, labels=labels), LIMIT
    )


def test_class_names_must_be_distinct() -> None:
    images, labels = np.zeros((20, 8, 8), dtype=np.uint8), np.arange(20) % 3
    refused("file", "'a' is given 3 times", parse_npz,
            npz_bytes(images=images, labels=labels, class_names=np.array(["a"] * 3)), LIMIT)  # fmt: skip


@pytest.mark.parametrize("names", [["", "0"], ["", "b"], ["a", "  "]])
def test_an_empty_class_name_is_refused_not_renamed(names: list[str]) -> None:
    """Once an empty name became its label's number: ['', '0'] clashed with itself, and
    ['', 'b'] was stored as ['0', 'b']."""
    images, labels = np.zeros((20, 8, 8), dtype=np.uint8), np.arange(20) % 2
    blank = 0 if names[0].strip() == "" else 1
    refused("file", rf"class names must not be empty; class_names\[{blank}\] is empty",
            parse_npz, npz_bytes(images=images, labels=labels, class_names=np.array(names)),
            LIMIT)  # fmt: skip


def test_a_class_folder_named_only_spaces_is_refused() -> None:
    members = {f"{name}/{i}.png": png(i) for name in (" ", "b") for i in range(6)}
    refused("file", "class folder ' ' has only spaces", parse_zip_folders, zip_bytes(members),
            LIMIT)  # fmt: skip


def test_a_test_class_without_training_examples_is_refused() -> None:
    images, labels = np.zeros((20, 8, 8), dtype=np.uint8), np.arange(20) % 2
    test_labels = np.array([0, 1, 2, 2])  # class 2 only in the test set
    upload = npz_bytes(images=images, labels=labels, test_images=images[:4],
                       test_labels=test_labels)  # fmt: skip
    refused("file", r"'test_labels' hold label 2, which 'labels' have no example of",
            parse_npz, upload, LIMIT)  # fmt: skip
    named = npz_bytes(images=images, labels=labels, test_images=images[:4],
                      test_labels=test_labels, class_names=np.array(["a", "b", "c"]))  # fmt: skip
    refused("file", r"hold class 'c' \(label 2\), which", parse_npz, named, LIMIT)


# ----------------------------------------------------------------- the held-out split


def train_counts(labels: list[int] | np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    images = np.zeros((len(labels), 8, 8), dtype=np.uint8)
    parsed = parse_npz(npz_bytes(images=images, labels=labels), LIMIT)
    return np.bincount(parsed.arrays["train_labels"], minlength=int(labels.max()) + 1)


def test_the_split_leaves_every_class_training_examples() -> None:
    """A plain random fifth put the one image of class 2 in the test set: trained [6 4 0]."""
    assert train_counts([0, 0, 0, 1, 0, 1, 0, 1, 2, 1, 1, 0]).tolist() == [5, 4, 1]
    # 1,000 classes of 2 images: a plain random fifth left 48 classes with no training example.
    counts = train_counts(np.repeat(np.arange(1000), 2))
    assert counts.min() == 1 and counts.sum() == 1600


def test_the_split_holds_out_each_class_s_share() -> None:
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train_idx, test_idx = stratified_split(labels, "file")
    assert np.bincount(labels[test_idx]).tolist() == [10, 6, 4]
    assert sorted([*train_idx, *test_idx]) == list(range(100))  # a split, nothing lost
    # Shares that do not come out whole are rounded one way or the other, the total kept.
    labels = np.arange(50) % 3  # 17, 17, 16: quotas 3.4, 3.4, 3.2
    test = labels[stratified_split(labels, "file")[1]]
    assert len(test) == 10 and sorted(np.bincount(test).tolist()) == [3, 3, 4]


def test_the_split_is_fixed() -> None:
    labels = np.random.default_rng(5).integers(0, 7, 300)
    first, again = stratified_split(labels, "file"), stratified_split(labels.copy(), "file")
    assert all((a == b).all() for a, b in zip(first, again, strict=True))


def test_no_test_set_without_a_class_of_two_examples() -> None:
    images, labels = np.zeros((10, 8, 8), dtype=np.uint8), np.arange(10)
    refused("file", "every class has a single example", parse_npz,
            npz_bytes(images=images, labels=labels), LIMIT)  # fmt: skip


# ------------------------------------------------------------------------------ CSV, .npy


def csv_rows(last: str) -> bytes:
    return "\n".join(["x,y"] + [f"{i},{2 * i}" for i in range(20)] + [last]).encode()


def test_csv_with_old_mac_line_endings() -> None:
    """Lines ended by a lone \\r were once one line, refused by the csv module: a 500."""
    rows = ["x,y,t"] + [f"{i},{i + 1},{2 * i + 1}" for i in range(1, 11)]
    parsed = parse_csv(("\r".join(rows) + "\r").encode())
    assert (parsed.input_shape, parsed.train_examples, parsed.test_examples) == ([2], 8, 2)
    assert sorted(parsed.arrays["train_y"].tolist() + parsed.arrays["test_y"].tolist()) == [
        2 * i + 1 for i in range(1, 11)
    ]
    refused("file", "line 12, column 2: 'z' is not a number", parse_csv,
            ("\r".join([*rows, "1,z,3"]) + "\r").encode())  # fmt: skip


def test_a_csv_cell_over_the_field_limit_is_refused_not_a_crash() -> None:
    long_cell = "9" * 131_073
    refused("file", "line 3 holds a cell over 131072 characters", parse_csv,
            csv_rows("1,1").replace(b"\n1,2\n", f"\n{long_cell},2\n".encode(), 1))  # fmt: skip


@pytest.mark.parametrize("last", ["1,1e39", "-1e39,1"])
def test_csv_values_beyond_float32_are_refused(last: str) -> None:
    column = 2 if last == "1,1e39" else 1
    refused("file", f"line 22, column {column}: -?1e\\+39 is beyond the float32 range",
            parse_csv, csv_rows(last))  # fmt: skip
    assert np.isfinite(parse_csv(csv_rows("1,3e38")).arrays["train_y"]).all()  # within range


@pytest.mark.parametrize("cell", ["1_00", "١٢"])  # float() reads 100 and 12
def test_csv_numbers_are_plain_ascii_decimals(cell: str) -> None:
    refused(
        "file", f"line 22, column 1: '{cell}' is not a number", parse_csv, csv_rows(f"{cell},1")
    )


@pytest.mark.parametrize("name", ["plain.npy", "upload"])
def test_a_npy_is_not_taken_for_a_csv(name: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((20, 8, 8), dtype=np.uint8))
    refused("file", r"a \.npy array is not a dataset format; a dataset is an \.npz",
            format_of, name, buffer.getvalue())  # fmt: skip


# --------------------------------------------------------------------- the form's text fields


@pytest.mark.parametrize("side", ["²", "٣", "2.5", "-8", " 28"])
def test_image_side_must_be_ascii_digits(side: str) -> None:
    texts = {"image_side": side}
    refused("image_side", "whole number", _parse, {"file": b"PK"}, texts, {"file": "x.zip"}, LIMIT)


def test_image_side_with_thousands_of_digits_is_out_of_range_not_a_crash() -> None:
    files, names = {"file": zip_of(png(1))}, {"file": "x.zip"}
    refused("image_side", "4..512", _parse, files, {"image_side": "9" * 5000}, names, LIMIT)
    parsed = _parse(files, {"image_side": "0" * 5000 + "12"}, names, LIMIT)
    assert parsed.input_shape == [12, 12]


def idx_pair_files() -> dict[str, bytes]:
    images = np.zeros((20, 8, 8), dtype=np.uint8)
    return {"images": idx_bytes(images), "labels": idx_bytes(np.arange(20) % 2)}


def test_image_side_is_refused_with_an_idx_pair_as_with_an_npz() -> None:
    texts = {"image_side": "16"}
    refused("image_side", "only for a zip of class folders", _parse, idx_pair_files(), texts,
            {}, LIMIT)  # fmt: skip
    npz = {"file": npz_bytes(images=np.zeros((20, 8, 8)), labels=np.arange(20) % 2)}
    refused("image_side", "only for a zip of class folders", _parse, npz, texts, {}, LIMIT)


def test_file_and_an_idx_pair_are_refused_together_naming_them() -> None:
    files = {"file": b"1,2\n", **idx_pair_files()}
    refused("file", r"'file' and 'images' \+ 'labels' cannot be sent together", _parse,
            files, {}, {}, LIMIT)  # fmt: skip
    # format idx with one 'file' and no pair: the format is what does not fit
    refused("format", "'idx' is two files", _parse, {"file": b"1,2\n"}, {"format": "idx"}, {},
            LIMIT)  # fmt: skip


def test_a_name_over_100_characters_is_refused_naming_it() -> None:
    _check_name({"name": "n" * 100})
    with pytest.raises(InvalidRequest) as info:
        _check_name({"name": "n" * 101})
    assert "name: at most 100 characters, got 101" in str(info.value)
