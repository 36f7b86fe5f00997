"""End to end on the real MNIST: a short training, export --quantize, verify."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from toolkit.cli import main

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def real_export(real_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "exported"
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--epochs", "1", "--device", "cpu", "--out", str(out / "cnn.pt"), "--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["export", "--checkpoint", str(out / "cnn.pt"), "--out", str(out), "--quantize"])
    assert r.exit_code == 0, r.output
    return out


def test_int8_within_gate_for_both_formats(real_export):
    manifest = json.loads((real_export / "manifest.json").read_text())
    ref = manifest["reference"]["pytorch_fp32_test_accuracy"]
    for a in manifest["artifacts"]:
        assert ref - a["test_accuracy"] <= 0.003, a["file"]


def test_verify_report_matches_independent_onnxruntime(real_export, real_mnist):
    r = CliRunner().invoke(main, ["verify", "--dir", str(real_export), "--json", str(real_export / "r.json")])
    assert r.exit_code == 0, r.output
    report = json.loads((real_export / "r.json").read_text())
    assert report["passed"] and report["n_test"] == 10000
    images, labels = real_mnist.test_images, real_mnist.test_labels
    inputs = {"cnn_fp32.onnx": images[:, None].astype(np.float32) / 255, "cnn_int8.onnx": images[:, None]}
    for name, x in inputs.items():
        sess = ort.InferenceSession(str(real_export / name), providers=["CPUExecutionProvider"])
        preds = sess.run(None, {"image": x})[0].argmax(1)
        row = next(r for r in report["rows"] if r["file"] == name and r["runtime"] == "ORT CPU")
        assert row["accuracy"] == float((preds == labels).mean())
        ref = np.load(real_export / "reference.npz")["logits"].argmax(1)
        assert row["flipped"] == int((preds != ref).sum())
