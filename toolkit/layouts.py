"""The data layouts besides MNIST's IDX files, read by `toolkit.data.load_mnist` from a folder the user
names: NumPy archives (`train.npz` + `test.npz`) and image folders (`train/<class>/`, `test/<class>/`).
Each is untrusted input: headers and counts decide before any array or image is read, links are
refused, nothing is ever written into the folder. numpy only at import time (Pillow inside)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from toolkit.data import MAX_CLASSES, MAX_IDX_ITEMS, parse_classes
from toolkit.errors import DataError, first_line

NPZ_FILES = ("train.npz", "test.npz")
MAX_NPZ_BYTES = 2 * 2**30  # a data set of 1,000,000 28×28 images, compressed or not, with its labels


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


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """One split of the NumPy layout: `x` uint8 N×28×28 (or N×1×28×28, N×28×28×1), `y` integer labels
    0..255, optional `classes` (train.npz: the class names). Every member's header is checked before any
    array is read; pickled objects are never loaded."""
    from toolkit.fsutil import regular_file

    regular_file(path, DataError, "a NumPy data archive", MAX_NPZ_BYTES)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a NumPy .npz archive ({first_line(exc, 80)})") from None
    with zf:
        x_shape, x_dtype = _npy_header(zf, "x.npy", str(path))
        y_shape, y_dtype = _npy_header(zf, "y.npy", str(path))
        images = tuple(d for d in x_shape[1:] if d != 1) if len(x_shape) == 4 else x_shape[1:]
        if x_dtype != np.uint8 or len(x_shape) not in (3, 4) or tuple(images) != (28, 28):
            raise DataError(f"{path}: x is {x_dtype} {list(x_shape)}; this version reads uint8 N×28×28 images "
                            "(N×1×28×28 and N×28×28×1 too)")
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
            x = np.load(f, allow_pickle=False).reshape(x_shape[0], 28, 28)
        with zf.open("y.npy") as f:
            y = np.load(f, allow_pickle=False)
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise DataError(f"{path}: labels run from {int(y.min())} to {int(y.max())}; expected 0 to {MAX_CLASSES - 1}")
    return np.ascontiguousarray(x), y.astype(np.uint8), classes


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


def load_image_folders(directory: Path) -> tuple[dict, tuple] | None:
    """`DIR/train/<class>/*.png` and `DIR/test/<class>/*.png` (PNG, JPEG, BMP, GIF, TIFF, WebP, PGM): class
    names are the training folder names, sorted; every test class must be a training class and no class
    folder empty; each image is checked (size, dimensions) before it is decoded, read as 8-bit grey, and
    must be 28×28; at most 1,000,000 images a split, counted before any is read. None where the folder
    has no train/ and test/ folders."""
    from toolkit.errors import ImageError
    from toolkit.images import load_gray

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
    arrays = {}
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
        images: np.ndarray = np.empty((count, 28, 28), np.uint8)
        labels: np.ndarray = np.empty(count, np.uint8)
        k = 0
        for label, c in enumerate(classes):
            for path in files[c]:
                try:
                    img = load_gray(path)
                except ImageError as exc:
                    raise DataError(str(exc)) from None
                if img.shape != (28, 28):
                    raise DataError(f"{path}: {img.shape[1]}×{img.shape[0]} pixels; this version reads 28×28 "
                                    "images (resize them first)")
                images[k], labels[k] = img, label
                k += 1
        arrays[f"{split.name}_images"], arrays[f"{split.name}_labels"] = images, labels
    return arrays, classes
