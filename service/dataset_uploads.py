"""Turn an uploaded dataset into validated, normalised arrays (no HTTP, no SQL, no disk).

Accepted uploads:
  npz   ``images`` (N, H, W), (N, H, W, 1|3) or (N, 1|3, H, W) and ``labels`` (N,); optional
        ``test_images`` + ``test_labels`` and ``class_names`` (C strings). uint8, or integers
        0..255, or floats in [0, 255] (floats all within [0, 1] are taken as intensities x 255).
  idx   an images file (N, H, W) and a labels file (N,) in the IDX format, gzipped or not.
  zip   one folder per class (the folder name is the class name) of image files, below any
        folders that every image shares; images in subfolders of a class folder belong to that
        class. Every image is decoded as the predict path decodes an upload
        (service.inference.images.decode_image) and resized to ``image_side`` x ``image_side``.
  csv   plain decimal numbers only, an optional header row; the last column is the target, the
        others are the features (a regression dataset).

Images end up as uint8 (N, H, W) grayscale with labels 0..C-1 (2 <= C <= 1000, every class with
examples, class names non-empty and distinct, every class of an explicit test set also among
the training labels); features as float32 (N, D), all finite. Without an explicit test set, a
fixed, seeded fifth of the examples is held out as the test set: for images a fifth of every
class, each keeping at least one training example. Nothing is ever unpickled, extracted to
disk, or named after user input.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from service.inference.errors import InvalidInput, OverPixelBudget
from service.inference.images import decode_image
from service.training.data import DatasetError, idx_declared_size, parse_idx

MIN_EXAMPLES = 10  # enough for a test, a validation and a training split
MIN_CLASSES, MAX_CLASSES = 2, 1000
MAX_SIDE = 512  # pixels, like a job's resize
MIN_SIDE = 4
MAX_FEATURES = 10_000
MAX_ZIP_MEMBERS = 200_000
MAX_IMAGE_FILE_BYTES = 20 * 1024 * 1024  # one image inside a zip
# Archives may unpack, and a zip's images decode, to this many times the upload limit, no more.
DECOMPRESSED_FACTOR = 4
TEST_FRACTION = 0.2
SPLIT_SEED = 20240609  # fixed: the held-out test set of a dataset never depends on a job
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
FORMATS = ("npz", "idx", "zip", "csv")
NPY_MAGIC = b"\x93NUMPY"
WHAT_A_DATASET_IS = (
    "a dataset is an .npz (arrays 'images' and 'labels'), a zip of class folders of images, "
    "a CSV (features..., target), or an IDX pair in the fields 'images' + 'labels'"
)


class UploadError(ValueError):
    """The upload is not a usable dataset; `field` names the form field to blame."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass
class ParsedDataset:
    kind: str  # image | regression
    format: str  # npz | idx | zip | csv
    arrays: dict[str, np.ndarray]  # what data.npz holds (see service.training.data)
    input_shape: list[int]  # [H, W] or [D]
    num_classes: int | None = None
    class_names: list[str] | None = field(default=None)

    @property
    def train_examples(self) -> int:
        key = "train_images" if self.kind == "image" else "train_x"
        return len(self.arrays[key])

    @property
    def test_examples(self) -> int:
        key = "test_images" if self.kind == "image" else "test_x"
        return len(self.arrays[key])


# ------------------------------------------------------------------------------- helpers


def held_out_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: a fixed seeded permutation, the last fifth (at least 1) as test."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = max(1, round(TEST_FRACTION * n))
    return perm[n_test:], perm[:n_test]


def stratified_split(labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of a classification set: the held-out fifth taken class by class.

    A plain random fifth can take every example of a rare class (12 images with one of class 2:
    a 1 in 6 chance; 1,000 classes of 2 images: some 40 such classes), leaving a class the model
    is scored on but never trained on. Here every class keeps at least one training example and
    gives the test set its share of the fifth, rounded. Fixed seed: the same labels in the same
    order always give the same split. Both parts keep the seeded permutation's order.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    perm = rng.permutation(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    n_test = min(max(1, round(TEST_FRACTION * len(labels))), len(labels) - len(classes))
    if n_test < 1:
        raise UploadError(
            what,
            f"every class has a single example ({len(classes)} classes, {len(labels)} images): "
            "a test set needs a class with at least 2, one to train on and one to test",
        )
    per_class = _apportion(n_test, counts, tie_break=rng.random(len(classes)))
    # Class by class (np.unique's sorted order), each class in permutation order: the first
    # per_class[c] of class c go to the test set.
    by_class = perm[np.argsort(labels[perm], kind="stable")]
    rank = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[by_class[rank < np.repeat(per_class, counts)]] = True
    return perm[~is_test[perm]], perm[is_test[perm]]


def _apportion(total: int, counts: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
    """Split `total` test examples among classes of `counts` examples in proportion to their
    size, each class getting its share rounded down or up (largest remainders first, ties in
    `tie_break` order), and never all of a class's examples."""
    quota = total * counts / counts.sum()
    cap = counts - 1  # one example of every class stays for training
    taken = np.minimum(np.floor(quota).astype(np.int64), cap)
    while (left := total - int(taken.sum())) > 0:
        # The classes furthest below their quota first; a capped class gives its share to the
        # next ones, which may then pass theirs by one (hence the loop).
        open_ = np.flatnonzero(taken < cap)
        order = open_[np.lexsort((tie_break[open_], taken[open_] - quota[open_]))]
        taken[order[:left]] += 1
    return taken


def _to_gray_uint8(images: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W) uint8 from (N, H, W), (N, H, W, 1|3) or (N, 1|3, H, W) numbers."""
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
        images = np.moveaxis(images, 1, -1)  # (N, C, H, W) -> (N, H, W, C)
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if images.ndim != 3 and not (images.ndim == 4 and images.shape[3] == 3):
        raise UploadError(what, f"expected images (N, H, W) or (N, H, W, 1|3), got {images.shape}")
    if images.dtype.kind not in "uif":
        raise UploadError(what, f"images must be numbers, got dtype {images.dtype}")
    if images.dtype != np.uint8:
        values = images.astype(np.float64)
        if not np.isfinite(values).all():
            raise UploadError(what, "images contain NaN or infinite values")
        low, high = float(values.min(initial=0)), float(values.max(initial=0))
        if low < 0 or high > 255:
            raise UploadError(what, f"pixel values must lie in 0..255, got {low:g}..{high:g}")
        if images.dtype.kind == "f" and high <= 1.0:
            values = values * 255.0  # intensities in [0, 1]
        images = np.rint(values).astype(np.uint8)
    if images.ndim == 4:  # RGB -> luma (ITU-R 601), as Pillow's convert("L")
        weights = np.array([0.299, 0.587, 0.114])
        images = np.rint(images.astype(np.float64) @ weights).clip(0, 255).astype(np.uint8)
    n, height, width = images.shape
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise UploadError(
            what, f"images must be {MIN_SIDE}..{MAX_SIDE} pixels a side, got {height}x{width}"
        )
    return np.ascontiguousarray(images)


def _labels(labels: np.ndarray, n: int, what: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != n:
        raise UploadError(what, f"expected {n} labels (one per image), got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or not np.equal(np.mod(labels, 1), 0).all():
            raise UploadError(what, "labels must be whole numbers")
    elif labels.dtype.kind not in "ui":
        raise UploadError(what, f"labels must be integers, got dtype {labels.dtype}")
    # Range-checked in the array's own dtype: cast to int64 first, a float 1e20 or a uint64
    # 2**63 would wrap to a negative number and the message would show that instead.
    if n and labels.min() < 0:
        raise UploadError(what, f"labels must be 0..C-1, got {int(labels.min())}")
    if n and labels.max() >= MAX_CLASSES:
        raise UploadError(
            what,
            f"at most {MAX_CLASSES} classes (labels 0..{MAX_CLASSES - 1}), "
            f"got label {int(labels.max())}",
        )
    return labels.astype(np.int64)


def _class_count(
    labels: np.ndarray, test_labels: np.ndarray, class_names: list[str] | None, what: str
) -> int:
    """C, once the labels are known to be 0..C-1 with at least one example of every class.

    A class without examples cannot be learnt, yet the model would still give it an output and
    the accuracy would hide it: all-1 labels would train a "two-class" model that always says 1.
    """
    seen = np.union1d(labels, test_labels)
    highest = int(seen.max())
    num_classes = len(class_names) if class_names else highest + 1
    if class_names and highest >= num_classes:
        raise UploadError(what, f"label {highest} has no class name ({num_classes} given)")
    if num_classes < MIN_CLASSES:
        raise UploadError(what, f"need at least {MIN_CLASSES} classes, got {num_classes}")
    if num_classes > MAX_CLASSES:
        raise UploadError(what, f"at most {MAX_CLASSES} classes, got {num_classes} class names")
    missing = np.setdiff1d(np.arange(num_classes), seen)
    if missing.size:
        raise UploadError(
            what,
            "labels must be 0..C-1 with examples of every class; no example of "
            f"{_class_list(missing, class_names)} "
            f"(C = {num_classes}: renumber the labels, or drop the unused class names)",
        )
    return num_classes


def _check_trained(
    labels: np.ndarray, test_labels: np.ndarray, class_names: list[str] | None, what: str
) -> None:
    """Refuse a test set holding a class the training set has no example of: the model could
    never learn it, and would be scored on it all the same."""
    untrained = np.setdiff1d(test_labels, labels)
    if untrained.size:
        raise UploadError(
            what,
            f"'test_labels' hold {_class_list(untrained, class_names)}, which 'labels' have no "
            "example of: every class tested on needs training examples",
        )


def _class_list(labels: np.ndarray, class_names: list[str] | None, shown: int = 5) -> str:
    """The first few of ``labels`` by name, and how many more there are."""
    listed = ", ".join(_class_label(int(c), class_names) for c in labels[:shown])
    return listed + (f" and {labels.size - shown} more" if labels.size > shown else "")


def _class_label(label: int, class_names: list[str] | None) -> str:
    return f"class {class_names[label]!r} (label {label})" if class_names else f"label {label}"


def _check_named(names: list[str], what: str) -> None:
    """Predictions name their class: an empty name would say nothing. Refused rather than
    replaced by the label's number, which could clash with another name ('0' of ['', '0'])."""
    if "" in names:
        raise UploadError(
            what,
            f"class names must not be empty; class_names[{names.index('')}] is empty or "
            "only spaces",
        )


def _check_distinct(names: list[str], what: str) -> None:
    """Predictions name their class: two classes of one name could not be told apart."""
    name, times = Counter(names).most_common(1)[0] if names else ("", 0)
    if times > 1:
        raise UploadError(what, f"class names must be distinct; {name!r} is given {times} times")


def _in_array(name: str, named: bool, check: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
    """``check(*args)``; ``named`` (an npz with a test set: four arrays), an UploadError says
    which array it found wrong, since the same checks run on the training and the test arrays."""
    try:
        return check(*args)
    except UploadError as exc:
        if not named:
            raise
        raise UploadError(exc.field, f"'{name}': {exc.reason}") from None


def _image_dataset(
    fmt: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    class_names: list[str] | None = None,
    images_field: str = "file",
    labels_field: str = "file",
) -> ParsedDataset:
    named = test is not None
    images = _in_array("images", named, _to_gray_uint8, images, images_field)
    labels = _in_array("labels", named, _labels, labels, len(images), labels_field)
    if test is not None:
        test_images = _in_array("test_images", named, _to_gray_uint8, test[0], images_field)
        test_labels = _in_array(
            "test_labels", named, _labels, test[1], len(test_images), labels_field
        )
        if test_images.shape[1:] != images.shape[1:]:
            raise UploadError(images_field, "test images must have the training images' size")
        if len(test_images) < 1:
            raise UploadError(images_field, "the test set is empty")
    else:
        if len(images) < MIN_EXAMPLES:
            raise UploadError(
                images_field, f"need at least {MIN_EXAMPLES} images, got {len(images)}"
            )
        train_idx, test_idx = stratified_split(labels, labels_field)
        images, test_images = images[train_idx], images[test_idx]
        labels, test_labels = labels[train_idx], labels[test_idx]
    if len(images) < 2:
        raise UploadError(images_field, "need at least 2 training images")
    num_classes = _class_count(labels, test_labels, class_names, labels_field)
    _check_trained(labels, test_labels, class_names, labels_field)
    names = class_names or [str(i) for i in range(num_classes)]
    return ParsedDataset(
        kind="image",
        format=fmt,
        arrays={
            "train_images": images,
            "train_labels": labels,
            "test_images": test_images,
            "test_labels": test_labels,
            "class_names": np.array(names, dtype=np.str_),
        },
        input_shape=[int(images.shape[1]), int(images.shape[2])],
        num_classes=num_classes,
        class_names=names,
    )


def _clean_label(text: str) -> str:
    """A class or dataset name for display: printable, at most 100 characters."""
    cleaned = "".join(c if c.isprintable() else "_" for c in text).strip()
    return cleaned[:100]


def _check_archive(archive: zipfile.ZipFile, max_bytes: int, what: str) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise UploadError(what, f"more than {MAX_ZIP_MEMBERS} files in the archive")
    total = sum(i.file_size for i in infos)
    if total > DECOMPRESSED_FACTOR * max_bytes:
        raise UploadError(what, f"the archive unpacks to {total} bytes, over the limit")
    return infos


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, what: str) -> bytes:
    """A member's bytes, in memory, refusing to read past `limit` whatever its header says."""
    with archive.open(info) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise UploadError(what, f"a file in the archive is larger than {limit} bytes")
    return data


# --------------------------------------------------------------------------------- parsers


def parse_npz(raw: bytes, max_bytes: int) -> ParsedDataset:
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise UploadError("file", "not an .npz file (not a zip archive)") from None
    with archive:
        _check_archive(archive, max_bytes, "file")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            keys = set(npz.files)
            if not {"images", "labels"} <= keys:
                raise UploadError(
                    "file", f"an .npz needs arrays 'images' and 'labels', has {sorted(keys)}"
                )
            arrays = {
                k: npz[k]
                for k in keys & {"images", "labels", "test_images", "test_labels", "class_names"}
            }
    except UploadError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        # Object arrays (which need pickle) land here too.
        raise UploadError("file", f"cannot read the .npz: {exc}") from exc
    test = None
    if "test_images" in arrays or "test_labels" in arrays:
        if not {"test_images", "test_labels"} <= arrays.keys():
            raise UploadError("file", "give both 'test_images' and 'test_labels', or neither")
        test = (arrays["test_images"], arrays["test_labels"])
    names = None
    if "class_names" in arrays:
        raw_names = arrays["class_names"]
        if raw_names.ndim != 1 or raw_names.dtype.kind not in "US":
            raise UploadError("file", "'class_names' must be a 1-D array of strings")
        names = [_clean_label(str(n)) for n in raw_names.tolist()]
        _check_named(names, "file")
        _check_distinct(names, "file")
    return _image_dataset("npz", arrays["images"], arrays["labels"], test=test, class_names=names)


def _maybe_gunzip(raw: bytes, max_bytes: int, what: str) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        return raw
    limit = DECOMPRESSED_FACTOR * max_bytes
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            # The header says how large the file is: a small gzip declaring more than the limit
            # is refused before it is inflated (1 MB of zeros would fill 800 MB first).
            head = stream.read(4)
            head += stream.read(4 * head[3]) if len(head) == 4 else b""
            declared = idx_declared_size(head)
            if declared is not None and declared > limit:
                raise UploadError(
                    what, f"the file declares {declared} bytes, over the limit of {limit}"
                )
            wanted = limit if declared is None else declared
            data = head + stream.read(wanted + 1 - len(head))
    except (OSError, EOFError) as exc:
        raise UploadError(what, f"a broken gzip file: {exc}") from exc
    if declared is not None and len(data) > declared:
        raise UploadError(
            what, f"the file holds more than the {declared} bytes its header declares"
        )
    if len(data) > limit:
        raise UploadError(what, "the file unpacks to more than the size limit allows")
    return data


def parse_idx_pair(images_raw: bytes, labels_raw: bytes, max_bytes: int) -> ParsedDataset:
    arrays = {}
    for what, raw in (("images", images_raw), ("labels", labels_raw)):
        try:
            arrays[what] = parse_idx(_maybe_gunzip(raw, max_bytes, what), source=what)
        except DatasetError as exc:
            raise UploadError(what, str(exc).removeprefix(f"{what}: ")) from exc
    if arrays["images"].ndim != 3:
        raise UploadError(
            "images", f"expected an IDX file of (N, H, W) images, got {arrays['images'].shape}"
        )
    return _image_dataset(
        "idx", arrays["images"], arrays["labels"], images_field="images", labels_field="labels"
    )


def _decode_member(data: bytes, side: int, name: str, pixels_left: int) -> tuple[np.ndarray, int]:
    """One image file as the predict path decodes an upload, resized to side x side.

    The same decoder keeps training and serving pixels alike (16-bit scaled, transparency on
    black, EXIF orientation applied) and keeps EPS, which runs Ghostscript, away from user bytes.
    Returns the resized image and how many pixels the file held; ``pixels_left`` is what the
    upload may still decode before resizing (see _decode_into_split).
    """
    try:
        gray = decode_image(data, name, pixels_left=pixels_left)
    except OverPixelBudget:
        raise UploadError(
            "file",
            f"{name}: the zip's images hold too many pixels before resizing; in all they may "
            f"hold {DECOMPRESSED_FACTOR} x the upload limit in pixels, and this one passes what "
            f"is left ({pixels_left}): send smaller images or fewer of them",
        ) from None
    except InvalidInput as exc:
        raise UploadError("file", f"{name}: {exc.reason}") from None
    resized = Image.fromarray(gray).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8), gray.size


def _class_folder_depth(paths: list[list[str]]) -> int:
    """Where the class folders sit: below the folders that every image shares (an archive often
    wraps everything in one top folder). An image deeper inside a class folder belongs to that
    class, as with torchvision's ImageFolder. If all images share one folder, it is the class."""
    if not paths:
        return 0
    shared = os.path.commonprefix([parts[:-1] for parts in paths])  # element-wise on lists
    deepest_shared = min(len(parts) - 2 for parts in paths)  # keep a class folder below it
    return max(0, min(len(shared), deepest_shared))


def _image_members(
    archive: zipfile.ZipFile, max_bytes: int
) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """The archive's image files with their path split into folders, in archive order."""
    members: list[tuple[zipfile.ZipInfo, list[str]]] = []
    for info in _check_archive(archive, max_bytes, "file"):
        # The member name is only ever split into strings: nothing is extracted, so a
        # name like ../../etc/passwd can only become an (odd) class label, and is refused.
        path = info.filename.replace("\\", "/")
        parts = [p for p in path.split("/") if p]
        if info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
            continue
        if ".." in parts or path.startswith("/"):
            raise UploadError("file", f"refusing the archive member {path[:100]!r}")
        if len(parts) < 2:
            raise UploadError("file", f"{path[:100]!r}: images must be inside class folders")
        members.append((info, parts))
    return members


def _folder_labels(folders: list[str]) -> tuple[np.ndarray, list[str]]:
    """(label of each image, class names): label i is the i-th class name in sorted order."""
    folder_of: dict[str, str] = {}  # class name -> the folder it comes from
    for folder in dict.fromkeys(folders):
        name = _clean_label(folder)
        if not name:  # a folder named " ": as an empty entry in an npz's class_names
            raise UploadError("file", f"class folder {folder!r} has only spaces for a name")
        if folder_of.setdefault(name, folder) != folder:  # e.g. folders alike for 100 characters
            raise UploadError(
                "file",
                f"class folders {folder_of[name][:100]!r} and {folder[:100]!r} would both be "
                f"named {name!r}; class names must be distinct",
            )
    if len(folder_of) < MIN_CLASSES:
        raise UploadError(
            "file", f"need at least {MIN_CLASSES} class folders with images, found {len(folder_of)}"
        )
    if len(folder_of) > MAX_CLASSES:
        raise UploadError("file", f"at most {MAX_CLASSES} class folders")
    names = sorted(folder_of)
    label_of = {folder_of[name]: i for i, name in enumerate(names)}
    return np.array([label_of[f] for f in folders], dtype=np.int64), names


def _check_decoded_size(count: int, side: int, max_bytes: int) -> None:
    """Refuse, before decoding, images that would take more memory than an archive may unpack to.

    The zip's own size bounds nothing here: a 1x1 PNG of 70 bytes resized to 512 x 512 takes
    256 KiB, so 3,000 copies in a 0.5 MB zip would take 0.8 GB, 200,000 would take 52 GB.
    """
    decoded, limit = count * side * side, DECOMPRESSED_FACTOR * max_bytes
    if decoded > limit:
        raise UploadError(
            "image_side",
            f"{count} images at {side}x{side} pixels take {decoded} bytes decoded, over the limit "
            f"of {limit} bytes ({DECOMPRESSED_FACTOR} x the upload limit); at this side at most "
            f"{limit // (side * side)} images fit: give a smaller image_side or fewer images",
        )


def _decode_into_split(
    archive: zipfile.ZipFile,
    members: list[tuple[zipfile.ZipInfo, list[str]]],
    side: int,
    split: tuple[np.ndarray, np.ndarray],
    max_bytes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) images of the stratified split, each image decoded straight into its slot.

    Stacking the images and then splitting them would hold every pixel three times over.
    """
    train_idx, test_idx = split
    train = np.empty((len(train_idx), side, side), dtype=np.uint8)
    test = np.empty((len(test_idx), side, side), dtype=np.uint8)
    # Member i goes where stratified_split puts example i: a view into train or test.
    slot_of = {int(i): train[k] for k, i in enumerate(train_idx)}
    slot_of |= {int(i): test[k] for k, i in enumerate(test_idx)}
    # Decoding time follows the images' own pixels, not the zip's size: a blank 4096 x 4096 PNG
    # is 16 KB. Bounded like the decoded bytes (read from each header, before decoding).
    pixels_left = DECOMPRESSED_FACTOR * max_bytes
    for i, (info, parts) in enumerate(members):
        data = _read_member(archive, info, MAX_IMAGE_FILE_BYTES, "file")
        slot_of[i][...], pixels = _decode_member(data, side, "/".join(parts)[:100], pixels_left)
        pixels_left -= pixels
    return train, test


def parse_zip_folders(raw: bytes, max_bytes: int, image_side: int = 28) -> ParsedDataset:
    if not MIN_SIDE <= image_side <= MAX_SIDE:
        raise UploadError("image_side", f"must be {MIN_SIDE}..{MAX_SIDE}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise UploadError("file", "not a zip archive") from None
    with archive:
        members = _image_members(archive, max_bytes)
        depth = _class_folder_depth([parts for _, parts in members])
        labels, names = _folder_labels([parts[depth] for _, parts in members])
        # Class by class (archive order within a class): the order the held-out split is
        # drawn over, so the test set does not depend on how a zip tool ordered the classes.
        order = np.argsort(labels, kind="stable")
        members, labels = [members[i] for i in order], labels[order]
        if len(members) < MIN_EXAMPLES:
            raise UploadError("file", f"need at least {MIN_EXAMPLES} images, got {len(members)}")
        _check_decoded_size(len(members), image_side, max_bytes)
        train_idx, test_idx = stratified_split(labels, "file")
        train, test = _decode_into_split(
            archive, members, image_side, (train_idx, test_idx), max_bytes
        )
    return _image_dataset(
        "zip", train, labels[train_idx], test=(test, labels[test_idx]), class_names=names
    )


def parse_csv(raw: bytes) -> ParsedDataset:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UploadError("file", f"not UTF-8 text, so not a CSV; {WHAT_A_DATASET_IS}") from None
    rows = _csv_rows(text)
    if rows and not _numeric(rows[0][1]):
        rows = rows[1:]  # a header row
    if len(rows) < MIN_EXAMPLES:
        raise UploadError("file", f"need at least {MIN_EXAMPLES} data rows, got {len(rows)}")
    width = len(rows[0][1])
    if not 2 <= width <= MAX_FEATURES + 1:
        raise UploadError(
            "file", f"need 2..{MAX_FEATURES + 1} columns (features, then the target), got {width}"
        )
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, (line, row) in enumerate(rows):
        if len(row) != width:
            raise UploadError("file", f"line {line} has {len(row)} columns, the first has {width}")
        try:
            values[i] = [_number(c) for c in row]
        except ValueError:
            raise UploadError("file", _not_a_number(row, line)) from None
    # Checked after the cast to float32, the dtype stored and trained on: 1e39 is finite as a
    # float64 but infinite as a float32, and would surface only as a diverged job.
    with np.errstate(over="ignore"):  # an overflow to inf is what _check_finite reports
        stored = values.astype(np.float32)
    _check_finite(values, stored, [line for line, _ in rows])
    train_idx, test_idx = held_out_split(len(values))
    x, y = stored[:, :-1], stored[:, -1]
    return ParsedDataset(
        kind="regression",
        format="csv",
        arrays={
            "train_x": x[train_idx],
            "train_y": y[train_idx],
            "test_x": x[test_idx],
            "test_y": y[test_idx],
        },
        input_shape=[width - 1],
    )


def _csv_rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of the non-blank rows: messages point at the line an editor shows,
    header and blanks included.

    newline="" lets the csv module split lines itself, on \n, \r\n and a lone \r alike (old
    Mac files end their lines with \r; read line by line on \n they are one long line that
    the csv module refuses). Whatever else it refuses (a cell past its field size limit) is the
    file's fault, never a 500.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except csv.Error as exc:
        line = reader.line_num
        if "field limit" in str(exc):
            reason = (
                f"line {line} holds a cell over {csv.field_size_limit()} characters, "
                "which is no number"
            )
        else:
            reason = f"line {line} is not readable CSV ({exc})"
        raise UploadError("file", reason) from None


def _numeric(row: list[str]) -> bool:
    """Whether every cell parses as a number (else the row is a header)."""
    try:
        for cell in row:
            _number(cell)
    except ValueError:
        return False
    return True


def _number(cell: str) -> float:
    """A cell as a number, refusing what float() takes but no CSV writer means as a number:
    digit-group underscores ('1_00' would be 100) and digits of other scripts ('١٢')."""
    if "_" in cell or not cell.isascii():
        raise ValueError(f"not a plain decimal number: {cell!r}")
    return float(cell)


def _not_a_number(row: list[str], line: int) -> str:
    """Which cell of a row that failed to parse is not a number, and where."""
    for column, cell in enumerate(row, start=1):
        try:
            _number(cell)
        except ValueError:
            hint = " (write numbers without '_')" if "_" in cell else ""
            return f"line {line}, column {column}: {cell.strip()[:40]!r} is not a number{hint}"
    return f"line {line} holds a value that is not a number"


def _check_finite(values: np.ndarray, stored: np.ndarray, lines: list[int]) -> None:
    """Refuse NaN, infinities, and numbers beyond float32's range, naming the first one."""
    bad = np.argwhere(~np.isfinite(stored))
    if not len(bad):
        return
    row, column = (int(k) for k in bad[0])
    value = values[row, column]
    where = f"line {lines[row]}, column {column + 1}"
    if np.isfinite(value):
        raise UploadError(
            "file",
            f"{where}: {value:g} is beyond the float32 range the data is stored in "
            f"(magnitudes up to {float(np.finfo(np.float32).max):.4g})",
        )
    raise UploadError("file", f"{where} is {value}; NaN and infinite values are not allowed")


def format_of(filename: str, raw: bytes) -> str:
    """The format a file's extension names (.npz, .zip, .csv), else the one its bytes suggest.

    The name wins: random bytes called data.npz should be refused as a broken .npz, not
    parsed as a CSV that then has too few rows.
    """
    suffix = filename.lower().rsplit(".", 1)[-1] if "." in filename else ""
    if suffix in ("npz", "zip", "csv"):
        return suffix
    if suffix == "npy" or raw.startswith(NPY_MAGIC):
        # Else sniffed as a CSV and refused as "not UTF-8", which would not say what to send.
        raise UploadError("file", f"a .npy array is not a dataset format; {WHAT_A_DATASET_IS}")
    return sniff_format(raw)


def sniff_format(raw: bytes) -> str:
    """npz | zip | csv from the first bytes (an IDX upload comes as two files instead)."""
    if raw[:2] == b"PK":  # any zip signature; a broken archive then says so, not "bad CSV"
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "zip"
        return "npz" if names and all(n.endswith(".npy") for n in names) else "zip"
    return "csv"
