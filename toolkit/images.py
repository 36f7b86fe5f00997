"""Image files as 8-bit grayscale arrays, bounded and checked before any pixel is decoded: PNG, JPEG,
BMP, GIF, TIFF and WebP through Pillow (its other plugins never opened), PGM and .npy by our own code.
What `predict` reads its pictures with and the image-folder data layout reads its images with.
numpy only at import time (Pillow inside the function that needs it)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import ImageError, first_line
from toolkit.fsutil import regular_file

MAX_PIXELS = 40_000_000  # larger images are refused (decompression bombs); a digit photo needs far less
MAX_FILE_BYTES = 100 * 1024 * 1024
# Memory is the bound, not pixels alone: preprocessing holds a few float64 copies of the image, and a
# sliver (1×40,000,000 px, 39 KB as a PNG) took 7.4 GB. A digit is never 64× longer than it is wide.
MAX_ASPECT = 64
# Pillow opens only these (never its EPS plugin, which runs Ghostscript on the file); PGM and .npy
# are read by our own code.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
NPY_MAGIC = b"\x93NUMPY"


def read_pgm(data: bytes, name: str) -> np.ndarray:
    """Binary (P5) or ASCII (P2) PGM as uint8 grayscale."""
    tokens: list = []
    pos = 0
    magic = data[:2]
    if magic not in (b"P5", b"P2"):
        raise ImageError(f"{name}: not a PGM file")
    pos = 2
    while len(tokens) < 3:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if pos < len(data) and data[pos : pos + 1] == b"#":
            while pos < len(data) and data[pos : pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise ImageError(f"{name}: truncated PGM header")
        tokens.append(data[start:pos])
    try:
        width, height, maxval = (int(t) for t in tokens)
    except ValueError:
        raise ImageError(f"{name}: malformed PGM header") from None
    if not (width > 0 and height > 0 and 0 < maxval < 65536):
        raise ImageError(f"{name}: bad PGM dimensions {width}×{height}, maxval {maxval}")
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: {width}×{height} is too large (over {MAX_PIXELS:,} pixels)")
    pos += 1  # the single whitespace after maxval
    count = width * height
    if magic == b"P5":
        dtype = np.uint8 if maxval < 256 else np.dtype(">u2")
        body = data[pos : pos + count * np.dtype(dtype).itemsize]
        if len(body) < count * np.dtype(dtype).itemsize:
            raise ImageError(f"{name}: truncated PGM data")
        pixels = np.frombuffer(body, dtype=dtype).astype(np.float64)
    else:
        values = data[pos:].split()
        if len(values) < count:
            raise ImageError(f"{name}: truncated PGM data")
        try:
            pixels = np.array([int(v) for v in values[:count]], dtype=np.float64)
        except ValueError:
            raise ImageError(f"{name}: PGM pixel that is not an integer") from None
        if pixels.min() < 0 or pixels.max() > maxval:
            raise ImageError(f"{name}: PGM pixel outside 0-{maxval}")
    return np.clip(np.rint(pixels.reshape(height, width) * 255.0 / maxval), 0, 255).astype(np.uint8)


def read_with_pillow(path: Path, colour: bool = False) -> np.ndarray:
    """The image as uint8 grey H×W; `colour`: as RGB H×W×3 where the file holds colour (a grey file
    stays H×W). Transparency is composited on white."""
    try:
        from PIL import Image
    except ImportError:
        raise ImageError(f"{path}: PNG/JPEG need Pillow (pip install pillow); .pgm and .npy work without it") from None
    from toolkit.scoped import pil_max_pixels

    try:
        with warnings.catch_warnings(), pil_max_pixels(MAX_PIXELS):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=PIL_FORMATS) as img:
                check_dimensions(img.width, img.height, str(path))  # before decoding a single pixel
                img.load()
                if img.mode in WIDE_MODES:  # 16-bit, 32-bit integer, float: scaled, never clipped
                    return to_uint8(np.asarray(img), str(path))
                flat: Any = img
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    rgba = img.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    flat = Image.alpha_composite(white, rgba)
                if colour and _is_colour(img):
                    return np.asarray(flat.convert("RGB"), dtype=np.uint8)
                return np.asarray(flat.convert("L"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: image too large (over {MAX_PIXELS:,} pixels; refused as a decompression bomb)") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not a PNG, JPEG, BMP, GIF, TIFF, WebP or PGM image, nor a .npy array") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode ({first_line(exc, 100)})") from None


def _is_colour(img: Any) -> bool:
    """Whether a Pillow image holds colour (its mode, and for a palette one its palette)."""
    if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return True
    if img.mode in ("P", "PA"):
        pal = np.asarray(img.getpalette() or [], dtype=np.int64)
        pal = pal[: len(pal) // 3 * 3].reshape(-1, 3)
        return bool((pal != pal[:, :1]).any())
    return False


# Pillow's single-channel modes wider than 8 bits: its convert("L") clips them at 255 (a 16-bit scan or a
# float image in [0, 1] would read as blank or black), so they are scaled here instead
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """A single-channel image of any integer or float type as uint8, scaled by its type's range: 16-bit
    0-65535 and float 0-1 (or 0-255) onto 0-255; 32-bit integers by the widest of 8/16/32 bits their
    values fit; values outside every nominal range (negative, or floats past 255) by their own min-max."""
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ImageError(f"{name}: not a single-channel image")
    x = a.astype(np.float64)
    if not np.isfinite(x).all():
        raise ImageError(f"{name}: image holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0 and a.dtype.kind == "f" and hi <= 1.0:
        top = 1.0
    elif lo >= 0 and hi <= 255 and (a.dtype.kind == "f" or a.dtype.itemsize >= 4):
        top = 255.0  # 32-bit values (or floats) that stay in 8 bits
    elif lo >= 0 and hi <= 65535 and a.dtype.kind in "ui":
        top = 65535.0
    elif lo >= 0 and a.dtype.kind in "ui" and hi <= 2 ** 32 - 1:
        top = 2.0 ** 32 - 1
    else:  # negative values, or floats beyond 255: their own range
        x, top = x - lo, (hi - lo) or 1.0
    return np.clip(np.rint(x * (255.0 / top)), 0, 255).astype(np.uint8)


def check_dimensions(width: int, height: int, name: str) -> None:
    """ImageError unless a width×height image fits the pixel and shape budget (read from headers)."""
    if width < 1 or height < 1:
        raise ImageError(f"{name}: {width}×{height} holds no pixels")
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: {width}×{height} is too large (over {MAX_PIXELS:,} pixels)")
    if max(width, height) > MAX_ASPECT * min(width, height) and max(width, height) > 28 * MAX_ASPECT:
        raise ImageError(f"{name}: {width}×{height} is a sliver (over {MAX_ASPECT}:1), not an image of a digit; refused")


def _npy_header(path: Path) -> tuple:
    """(shape, dtype) from a .npy header, before any data is read: a 1 KB file declaring
    200000×200000 is refused here, not by running out of memory."""
    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise ImageError(f"{path}: not a .npy array (an .npz archive or another kind of file)")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in reader:
                raise ValueError(f"unsupported .npy version {version}")
            shape, _, dtype = reader[version](f)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
            raise ImageError(f"{path}: not a readable .npy array ({first_line(exc, 100)})") from None
    return shape, dtype


def read_npy(path: Path) -> np.ndarray:
    """A numeric 2-D array: uint8/int 0-255, float 0-1 (or 0-255), or bool (a mask: True is ink, 255)."""
    shape, dtype = _npy_header(path)
    values = int(np.prod(shape, dtype=object)) if shape else 1
    if dtype.hasobject or dtype.kind not in "uifb":
        raise ImageError(f"{path}: array dtype {dtype} is not numeric")
    if values > 4 * MAX_PIXELS or values * dtype.itemsize > 4 * MAX_PIXELS:
        raise ImageError(f"{path}: array of shape {tuple(shape)} is too large ({values:,} values); refused")
    try:
        arr = np.load(path, allow_pickle=False)
        shape, kind = arr.shape, arr.dtype.kind
    except (ValueError, OSError, EOFError) as exc:  # includes object arrays (pickles refused)
        raise ImageError(f"{path}: not a readable .npy array ({first_line(exc, 100)})") from None
    if kind not in "uifb":
        raise ImageError(f"{path}: array dtype {arr.dtype} is not numeric")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and kind in "uif":  # H×W×RGB(A): to grey (ITU-R 601 luma)
        arr = luma(arr)
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{path}: array of shape {shape} is not one 2-D image (H×W, 1×H×W or 1×1×H×W)")
    check_dimensions(arr.shape[1], arr.shape[0], str(path))
    if kind == "b":
        return np.where(arr, 255, 0).astype(np.uint8)
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ImageError(f"{path}: array holds NaN or infinite values")
    if arr.min() < 0 or arr.max() > 255:
        raise ImageError(f"{path}: values outside 0-255 (or 0-1 for floats)")
    if arr.max() <= 1.0 and kind == "f":
        arr = arr * 255.0  # float images in [0, 1], like model input
    return np.rint(arr).astype(np.uint8)


def load_gray(path: str | Path) -> np.ndarray:
    """Any supported file as a uint8 2-D grayscale array."""
    return load_pixels(path, colour=False)


def load_pixels(path: str | Path, colour: bool = True) -> np.ndarray:
    """Any supported file as uint8 grey H×W, or (`colour`, and the file holds colour: a PNG/JPEG/… in an
    RGB or colour-palette mode) RGB H×W×3. PGM and .npy are read as grey."""
    path = regular_file(path, ImageError, "an image", MAX_FILE_BYTES, not_regular="not a file")
    if path.suffix.lower() == ".npy":
        return read_npy(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head in (b"P5", b"P2"):
        img = read_pgm(path.read_bytes(), str(path))
        check_dimensions(img.shape[1], img.shape[0], str(path))
        return img
    return read_with_pillow(path, colour)


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-averaging resize (float in, float out) of an H×W or H×W×C image, numpy only."""
    h, w = img.shape[:2]

    def weights(n_in, n_out):
        edges = np.linspace(0, n_in, n_out + 1)
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            lo, hi = edges[i], edges[i + 1]
            for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
                m[i, j] = min(hi, j + 1) - max(lo, j)
            m[i] /= m[i].sum()
        return m

    if img.ndim == 3:
        return np.einsum("ih,hwc,jw->ijc", weights(h, height), img, weights(w, width))
    return weights(h, height) @ img @ weights(w, width).T


def resize_u8(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """A uint8 image area-resized to height×width (unchanged when it already is)."""
    if img.shape[:2] == (height, width):
        return img
    return np.clip(np.rint(resize(img.astype(np.float64), height, width)), 0, 255).astype(np.uint8)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (as Pillow's "L") of an H×W×3 (or ×4: alpha left out) array, in float64."""
    return np.tensordot(rgb[..., :3].astype(np.float64), [0.299, 0.587, 0.114], axes=([-1], [0]))


def to_spec(img: np.ndarray, channels: int) -> np.ndarray:
    """A grey H×W or RGB H×W×3 image in `channels` (1: grey by ITU-R 601 luma, as Pillow's "L"; 3: RGB,
    grey copied to each channel). Other counts are only read from NumPy or IDX data."""
    if channels == 1:
        if img.ndim == 2:
            return img
        return np.clip(np.rint(luma(img)), 0, 255).astype(np.uint8)
    if channels == 3:
        return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    raise ImageError(f"a model of {channels} channels takes no picture files (grey or RGB only)")
