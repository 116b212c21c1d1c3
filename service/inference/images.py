"""Decode uploaded image files into grayscale pixel arrays.

Any format Pillow reads (bar EPS, which would run Ghostscript) and any size up to
``MAX_SIDE`` pixels a side becomes a uint8 array (H, W) of 0-255 gray values. Resizing to
the model's input side is *not* done here: it belongs to ``models.to_model_input``, the
preprocessing shared with training.

Fashion-MNIST shows a light object on a black background, so transparent pixels are
composited onto black. Animated images give their first frame; EXIF orientation is applied.
16-bit samples (16-bit PNG, TIFF, PGM/PPM with a maxval over 255) are scaled from 0-65535
onto 0-255. A 32-bit integer image has no standard white, so its values are read as 0-255
pixel values, as in a .npy array, and any value outside that range is refused.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from PIL import Image, ImageOps

from service.inference.errors import InvalidInput, OverPixelBudget

MAX_SIDE = 4096  # pixels per side; also bounds the pixel count at 16.7 Mpx
MAX_PIXELS = MAX_SIDE * MAX_SIDE
# Decoded pixels per request, all files together: bounds the CPU time of one request that a
# few KB of compressed PNGs can ask for (16.7 Mpx each). About 8 s of decoding on one core.
MAX_REQUEST_PIXELS = 16 * MAX_PIXELS

# EPS is decoded by spawning Ghostscript: never hand it untrusted bytes.
_EXCLUDED_FORMATS = frozenset({"EPS"})


def _allowed_formats() -> list[str]:
    Image.init()
    return [f for f in Image.ID if f not in _EXCLUDED_FORMATS]


def over_request_budget(field: str, shape: str) -> OverPixelBudget:
    """The error for an upload that would take its request past MAX_REQUEST_PIXELS."""
    full = MAX_REQUEST_PIXELS // MAX_PIXELS
    return OverPixelBudget(
        field,
        f"{shape} pixels would take the request past {MAX_REQUEST_PIXELS} decoded pixels in "
        f"all (that is {full} images of {MAX_SIDE}×{MAX_SIDE}); send the rest in another request",
    )


def _holds_16bit_samples(im: Image.Image) -> bool:
    """Whether a mode "I" (32-bit) image was stored with 16-bit samples; read before load(),
    while the tiles still name the stored raw mode."""
    if im.format == "PPM":  # PGM and PPM alike: Pillow scales a maxval over 255 onto 0-65535
        return True
    for tile in im.tile:
        args = tile.args
        rawmode = args if isinstance(args, str) else (args or ("",))[0]
        if isinstance(rawmode, str) and rawmode.startswith("I;16"):
            return True
    return False


def _to_gray(im: Image.Image, field: str, *, sixteen_bit: bool) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W), alpha composited onto black."""
    mode = im.mode
    if mode == "P":
        # A palette may carry transparency (tRNS / GIF transparent index).
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    elif mode == "PA":
        im = im.convert("RGBA")
        mode = im.mode
    if mode.startswith("I;16") or (mode == "I" and sixteen_bit):
        # 16-bit grayscale: scale 0-65535 onto 0-255.
        wide = np.asarray(im).astype(np.float64)
        return np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    if mode == "I":
        hint = " (save it with 8- or 16-bit samples instead)"
        return _pixel_values(np.asarray(im), field, "32-bit integer", hint)
    if mode == "F":
        return _pixel_values(np.asarray(im, dtype=np.float64), field, "floating-point")
    if mode in ("RGBA", "LA", "RGBa", "La"):
        if mode in ("RGBa", "La"):  # premultiplied: undo first so the arithmetic below holds
            im = im.convert("RGBA" if mode == "RGBa" else "LA")
        la = np.asarray(im.convert("LA"), dtype=np.float64)
        gray = la[..., 0] * la[..., 1] / 255.0  # composite onto black
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    if mode != "L":
        try:
            im = im.convert("L")
        except ValueError:  # modes without a direct path to L (e.g. LAB, HSV)
            im = im.convert("RGB").convert("L")
    return np.array(im, dtype=np.uint8)


# header_pixels reads at most this much of a file: a header is near its start, and Pillow parses
# some files for seconds before it finds one (an 18 MB PNG of empty text chunks: 7 s).
HEADER_PREFIX_BYTES = 65536


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header in the first HEADER_PREFIX_BYTES of ``data`` (no pixel
    data is read); None where that prefix shows no readable header."""
    try:
        with Image.open(io.BytesIO(data[:HEADER_PREFIX_BYTES]), formats=_allowed_formats()) as im:
            return im.size
    except Exception:  # not an image, or its header lies past the prefix
        return None


def header_pixels(data: bytes) -> int | None:
    """The pixels decoding ``data`` would produce, from its header (``header_size``): 0 for a
    file that decode_image refuses before decoding (no pixels, too large); None where no
    header is read."""
    size = header_size(data)
    if size is None:
        return None
    width, height = size
    return width * height if 0 < width * height <= MAX_PIXELS else 0


def decode_image(data: bytes, field: str, *, pixels_left: int | None = None) -> np.ndarray:
    """Decode one uploaded file; raise InvalidInput(field, ...) when it is not a usable image
    or holds more than ``pixels_left`` pixels (what its request's budget has left)."""
    if not data:
        raise InvalidInput(field, "not an image Pillow can read (the file is empty)")
    try:
        im = Image.open(io.BytesIO(data), formats=_allowed_formats())
    except Image.DecompressionBombError as exc:
        raise InvalidInput(field, f"image too large ({exc})") from None
    except Exception as exc:  # every decoder failure is the client's input
        raise InvalidInput(field, f"not an image Pillow can read ({_describe(exc)})") from None
    with im:
        width, height = im.size
        if width < 1 or height < 1:
            raise InvalidInput(field, f"image has no pixels ({width}×{height})")
        # Checked from the header, before any pixel data is decompressed.
        if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
            raise InvalidInput(
                field,
                f"image too large: {width}×{height} pixels, at most {MAX_SIDE}×{MAX_SIDE}",
            )
        if pixels_left is not None and width * height > pixels_left:
            # Predict's message; another caller (a dataset upload) catches OverPixelBudget.
            raise over_request_budget(field, f"{width}×{height}")
        try:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animated images: the first frame (a one-image SPIDER file refuses)
            sixteen_bit = _holds_16bit_samples(im)
            im.load()
            with contextlib.suppress(Exception):  # broken EXIF: keep the pixels as stored
                im = ImageOps.exif_transpose(im)
            return _to_gray(im, field, sixteen_bit=sixteen_bit)
        except InvalidInput:
            raise
        except Exception as exc:  # truncated or corrupt pixel data
            raise InvalidInput(field, f"not an image Pillow can read ({_describe(exc)})") from None


def _pixel_values(values: np.ndarray, field: str, what: str, hint: str = "") -> np.ndarray:
    """A 32-bit integer or float image read as 0-255 pixel values, as a .npy array is: NaN or a
    value out of range is refused, not clipped (the answer would be for another image)."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InvalidInput(field, f"a {what} image holds NaN or infinite values")
    low, high = values.min().item(), values.max().item()
    if low < 0 or high > 255:
        shown = "g" if values.dtype.kind == "f" else "d"  # 16777215, not 1.67772e+07
        raise InvalidInput(
            field,
            f"a {what} image must hold pixel values 0–255, got {low:{shown}} to {high:{shown}}"
            f"{hint}",
        )
    return (np.rint(values) if values.dtype.kind == "f" else values).astype(np.uint8)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    # Pillow's "cannot identify image file <_io.BytesIO object at 0x...>" leaks an address.
    if isinstance(exc, Image.UnidentifiedImageError) or text.startswith("cannot identify"):
        return "unrecognised format"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
