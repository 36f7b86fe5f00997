"""The data layouts besides MNIST's IDX files, read by `toolkit.data.load_mnist` from a folder the user
names: NumPy archives (`train.npz` + `test.npz`) and image folders (`train/<class>/`, `test/<class>/`).
Each is untrusted input: headers and counts decide before any array or image is read, links are
refused, nothing is ever written into the folder. numpy only at import time (Pillow inside)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from toolkit.contract import MAX_SIDE
from toolkit.data import MAX_CLASSES, MAX_DATA_BYTES, MAX_IDX_ITEMS, check_image_dims, label_array, parse_classes
from toolkit.errors import DataError, first_line

NPZ_FILES = ("train.npz", "test.npz")
MAX_NPZ_BYTES = MAX_DATA_BYTES  # an archive's own size (its arrays are bounded by their headers too)
CHANNELS_LAST = "NHWC"
CHANNELS_FIRST = "NCHW"


def _npy_header(zf: zipfile.ZipFile, member: str, where: str) -> tuple[tuple, np.dtype]:
    """A .npy member's shape and dtype from its header alone (nothing else read), and its size checked
    against what that header declares: a member that would inflate past it is refused unread."""
    try:
        info = zf.getinfo(member)
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f, max_header_size=10_000)
            offset = f.tell()
    except KeyError:
        raise DataError(f"{where}: no '{member}' in the archive (expected x.npy and y.npy)") from None
    except (ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{where}: {member} is not a readable .npy array ({first_line(exc, 80)})") from None
    if fortran or dtype.hasobject or len(shape) > 4:
        raise DataError(f"{where}: {member} is {'Fortran-ordered' if fortran else str(dtype)} {list(shape)}; "
                        "expected a plain C-ordered array")
    if shape and shape[0] > MAX_IDX_ITEMS:
        raise DataError(f"{where}: {member} declares {shape[0]:,} items, more than the {MAX_IDX_ITEMS:,} a data set "
                        "may hold")
    if info.file_size != offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise DataError(f"{where}: {member}'s size does not match the shape its header declares {list(shape)}")
    return shape, dtype


def npz_image_dims(shape: tuple, layout: str | None, where: str) -> tuple[tuple[int, ...], bool]:
    """(N×H×W or N×H×W×C dims, whether the array is channels-first) of an `x` array: N×H×W (grey),
    N×C×H×W or N×H×W×C. A 4-D array is channels-last when its last axis is 1-4 long and its second is
    not, channels-first in the opposite case; when both (or neither) could be channels, the archive's
    `layout` member ("NCHW" or "NHWC") decides, and without one it is refused."""
    if len(shape) == 3:
        return tuple(shape), False
    if len(shape) != 4:
        raise DataError(f"{where}: x is {list(shape)}; expected N×H×W, N×C×H×W or N×H×W×C uint8 images")
    last, first = shape[3] <= 4, shape[1] <= 4
    if layout is None and last == first:
        raise DataError(f"{where}: x is {list(shape)}: cannot tell channels-first from channels-last; add a "
                        f"'layout' array to the archive ('{CHANNELS_FIRST}' or '{CHANNELS_LAST}')")
    chw = layout == CHANNELS_FIRST if layout is not None else first
    n, a, b, c = (int(d) for d in shape)
    dims = (n, b, c, a) if chw else (n, a, b, c)
    return (dims[:3] if dims[3] == 1 else dims), chw


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """One split of the NumPy layout: `x` uint8 N×H×W, N×C×H×W or N×H×W×C (npz_image_dims), `y` integer
    labels 0..255, optional `classes` (train.npz: the class names) and `layout`. Every member's header is
    checked before any array is read; pickled objects are never loaded. Returns N×H×W or N×H×W×C."""
    from toolkit.fsutil import regular_file

    regular_file(path, DataError, "a NumPy data archive", MAX_NPZ_BYTES)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a NumPy .npz archive ({first_line(exc, 80)})") from None
    with zf:
        x_shape, x_dtype = _npy_header(zf, "x.npy", str(path))
        y_shape, y_dtype = _npy_header(zf, "y.npy", str(path))
        if x_dtype != np.uint8:
            raise DataError(f"{path}: x is {x_dtype} {list(x_shape)}; expected uint8 images (0-255): scale and "
                            "round other types to uint8 first")
        layout = None
        if "layout.npy" in zf.namelist():
            l_shape, l_dtype = _npy_header(zf, "layout.npy", str(path))
            if l_dtype.kind != "U" or l_shape != () or l_dtype.itemsize > 64:
                raise DataError(f"{path}: layout is {l_dtype} {list(l_shape)}; expected one string, NCHW or NHWC")
            with zf.open("layout.npy") as f:
                layout = str(np.load(f, allow_pickle=False))
            if layout not in (CHANNELS_FIRST, CHANNELS_LAST):
                raise DataError(f"{path}: layout {layout[:10]!r}; expected {CHANNELS_FIRST} or {CHANNELS_LAST}")
        dims, chw = npz_image_dims(x_shape, layout, str(path))
        check_image_dims(dims, f"{path} (x)")
        if y_dtype.kind not in "iu" or y_shape != x_shape[:1]:
            raise DataError(f"{path}: y is {y_dtype} {list(y_shape)}; expected {x_shape[0]:,} integer labels")
        if x_shape[0] == 0:
            raise DataError(f"{path}: holds no images")
        classes = None
        if "classes.npy" in zf.namelist():
            c_shape, c_dtype = _npy_header(zf, "classes.npy", str(path))
            if c_dtype.kind != "U" or len(c_shape) != 1 or not 2 <= c_shape[0] <= MAX_CLASSES:
                raise DataError(f"{path}: classes is {c_dtype} {list(c_shape)}; expected 2 to {MAX_CLASSES} names")
            with zf.open("classes.npy") as f:
                classes = parse_classes("\n".join(str(c) for c in np.load(f, allow_pickle=False)), f"{path} (classes)")
        with zf.open("x.npy") as f:
            x = np.load(f, allow_pickle=False)
        with zf.open("y.npy") as f:
            y = np.load(f, allow_pickle=False)
    if chw:
        x = x.transpose(0, 2, 3, 1)
    x = x.reshape(dims)
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise DataError(f"{path}: labels run from {int(y.min())} to {int(y.max())}; expected 0 to {MAX_CLASSES - 1}")
    return np.ascontiguousarray(x), label_array(y), classes


def load_npz_dir(directory: Path) -> tuple[dict, tuple | None] | None:
    """The four arrays (and the class names train.npz may carry) from `DIR/train.npz` and `DIR/test.npz`;
    None where the folder holds neither."""
    present = [n for n in NPZ_FILES if (directory / n).exists()]
    if not present:
        return None
    if len(present) == 1:
        missing = next(n for n in NPZ_FILES if n not in present)
        raise DataError(f"{directory}: {present[0]} without {missing} (the NumPy layout needs both)")
    tr_x, tr_y, classes = _read_npz(directory / "train.npz")
    te_x, te_y, _ = _read_npz(directory / "test.npz")
    return {"train_images": tr_x, "train_labels": tr_y, "test_images": te_x, "test_labels": te_y}, classes


# ---------------------------------------------------------------- image folders

FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm")


def _class_images(folder: Path, where: str) -> list[Path]:
    """The image files of one class folder, by name; links and sub-folders are refused, other files
    (a README, .DS_Store) are left out."""
    files = []
    for p in sorted(folder.iterdir()):
        if p.is_symlink():
            raise DataError(f"{p}: a link in a data folder; refused (copy the file in)")
        if p.is_dir():
            raise DataError(f"{p}: a folder inside a class folder of {where}; expected image files only")
        if p.suffix.lower() in FOLDER_SUFFIXES:
            files.append(p)
    return files


def parse_size(text: str | None) -> tuple[int, int] | None:
    """--image-size WxH (or one number for a square) as (height, width); None when not given."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        if len(parts) > 2:
            raise ValueError
    except ValueError:
        raise DataError(f"--image-size {text[:20]!r}: expected WIDTHxHEIGHT (e.g. 32x32) or one number") from None
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise DataError(f"--image-size {text[:20]!r}: each side must be 1 to {MAX_SIDE} pixels")
    return h, w


def load_image_folders(directory: Path, size: tuple[int, int] | None = None) -> tuple[dict, tuple] | None:
    """`DIR/train/<class>/*.png` and `DIR/test/<class>/*.png` (PNG, JPEG, BMP, GIF, TIFF, WebP, PGM): class
    names are the training folder names, sorted; every test class must be a training class and no class
    folder empty; each image is checked (size, dimensions) before it is decoded; at most 1,000,000 images
    a split, counted before any is read, and their decoded pixels bounded. The data set is RGB when any
    image holds colour (grey ones copied to three channels), else grey. Every image must have one size,
    unless `size` (height, width) is given: then each is area-resized to it. None where the folder has no
    train/ and test/ folders."""
    train, test = directory / "train", directory / "test"
    if not train.is_dir() and not test.is_dir():
        return None
    for split in (train, test):
        if not split.is_dir() or split.is_symlink():
            raise DataError(f"{split}: missing or a link; the image-folder layout needs train/<class>/ and "
                            "test/<class>/ folders")
    names = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.is_symlink())
    classes = parse_classes("\n".join(names), f"{train} (its class folders)") if len(names) != 1 else None
    if classes is None:
        raise DataError(f"{train}: {len(names)} class folder; expected 2 to {MAX_CLASSES}")
    listed = {}
    for split in (train, test):
        extra = sorted(p.name for p in split.iterdir() if p.is_dir() and p.name not in classes)
        if extra:
            raise DataError(f"{split / extra[0]}: a test class the training folders do not have; a model cannot "
                            "learn a class it never saw")
        files = {c: _class_images(split / c, str(directory)) if (split / c).is_dir() else [] for c in classes}
        empty = [c for c, f in files.items() if not f and split == train]
        if empty:
            raise DataError(f"{train / empty[0]}: an empty class folder (no images); every class needs examples")
        count = sum(len(f) for f in files.values())
        if count > MAX_IDX_ITEMS or count == 0:
            raise DataError(f"{split}: {count:,} images; expected 1 to {MAX_IDX_ITEMS:,}")
        listed[split.name] = files
    read = {name: _read_split(files, size, directory / name) for name, files in listed.items()}
    colour = any(images.ndim == 4 for images, _ in read.values())
    shapes = {name: images.shape[1:3] for name, (images, _) in read.items()}
    if shapes["train"] != shapes["test"]:
        raise DataError(f"{directory}: training images are {_wh(shapes['train'])}, test images "
                        f"{_wh(shapes['test'])}; pass --image-size WxH to resize them all to one size")
    arrays = {}
    for name, (images, labels) in read.items():
        if colour and images.ndim == 3:
            images = np.repeat(images[..., None], 3, axis=3)
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = images, labels
    return arrays, classes


def _wh(hw) -> str:
    return f"{hw[1]}×{hw[0]}"


def _read_split(files: dict, size: tuple[int, int] | None, where: Path) -> tuple[np.ndarray, np.ndarray]:
    """One split's images (grey N×H×W, or RGB N×H×W×3 when any holds colour) and labels."""
    from toolkit.errors import ImageError
    from toolkit.images import load_pixels, resize_u8, to_spec

    images: list = []
    labels: list = []
    total = 0
    first: tuple | None = None
    for label, paths in enumerate(files.values()):
        for path in paths:
            try:
                img = load_pixels(path, colour=True)
            except ImageError as exc:
                raise DataError(str(exc)) from None
            if img.ndim == 3 and (img == img[..., :1]).all():
                img = img[..., 0]  # an RGB file of grey pixels is grey
            if size is not None:
                img = resize_u8(img, *size)
            elif first is None:
                first = img.shape[:2]
                check_image_dims((1, *img.shape), str(path))
            elif img.shape[:2] != first:
                raise DataError(f"{path}: {_wh(img.shape)} pixels, the images before it {_wh(first)}; pass "
                                f"--image-size WxH to resize them all to one size")
            total += img.size * (3 if img.ndim == 2 else 1)  # counted as RGB: one colour picture makes them all so
            if total > MAX_DATA_BYTES:
                raise DataError(f"{where}: its decoded images pass {MAX_DATA_BYTES // 2**30} GiB; "
                                "refused (a smaller --image-size, or fewer images)")
            images.append(img)
            labels.append(label)
    if any(img.ndim == 3 for img in images):
        stacked = np.stack([to_spec(img, 3) for img in images])
    else:
        stacked = np.stack(images)
    check_image_dims(stacked.shape, str(where))
    return stacked, label_array(labels)
