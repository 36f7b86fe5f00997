"""End to end on the real MNIST: a short training, export --quantize, verify."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from toolkit.cli import main

pytestmark = pytest.mark.e2e


def test_int8_within_gate_for_both_formats(real_export):
    manifest = json.loads((real_export / "manifest.json").read_text())
    ref = manifest["reference"]["pytorch_fp32_test_accuracy"]
    for a in manifest["artifacts"]:
        assert ref - a["test_accuracy"] <= 0.003, a["file"]


def test_verify_report_matches_independent_onnxruntime(real_export, real_mnist, openvino_rows):
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
    # the same files on OpenVINO, over the whole test set: the fp32 one predicts as the reference does
    rows = {r["id"]: r for r in report["rows"]}
    assert rows["onnx-fp32@openvino"]["status"] == rows["onnx-int8@openvino"]["status"] == "ok"
    assert rows["onnx-fp32@openvino"]["flipped"] == 0 and rows["onnx-int8@openvino"]["placement"]["int8_kernels"]


def test_frame_filling_digits_are_normalised_and_mnist_passes_unchanged(real_export, real_mnist):
    """Real digits that fill their 28×28 frame (no margin, not centred by mass) go through MNIST's
    crop/scale/centre; MNIST's own images are already MNIST-like and are used exactly as they are."""
    from toolkit.predict import is_mnist_like, resize, to_mnist
    from toolkit.runtimes.ort_session import Model

    assert all(is_mnist_like(im.astype(np.float64)) for im in real_mnist.test_images)
    images, labels = real_mnist.test_images[:500], real_mnist.test_labels[:500]
    assert np.array_equal(np.stack([to_mnist(im) for im in images]), images)

    def fill(im):
        rows, cols = np.flatnonzero(im.any(1)), np.flatnonzero(im.any(0))
        crop = im[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float64)
        return np.clip(np.rint(resize(crop, 28, 28)), 0, 255).astype(np.uint8)

    filled = [fill(im) for im in images]
    model = Model(real_export / "cnn_int8.onnx")
    acc = {as_is: float((model.logits(np.stack([to_mnist(f, as_is=as_is) for f in filled])).argmax(1) == labels).mean())
           for as_is in (True, False)}
    assert acc[False] >= 0.85 and acc[False] > acc[True] + 0.2, acc


@pytest.mark.e2e
def test_search_keeps_a_damaged_layer_in_fp32(real_export, tmp_path):
    """An outlier channel (conv1's channel 0 ×300, conv2's matching input weights ÷300: the same
    function in fp32) crushes conv2's input quantizer: the default int8 model fails verify's gates,
    inspect blames conv2 on its own, export's fallback (by default) and --search keep conv2 in fp32
    and pass."""
    import torch

    ckpt = torch.load(real_export / "cnn.pt", weights_only=True)
    sd = ckpt["state_dict"]
    sd["conv1.weight"][0] *= 300
    sd["conv1.bias"][0] *= 300
    sd["conv2.weight"][:, 0] /= 300
    out = tmp_path / "damaged"
    out.mkdir()
    torch.save(ckpt, out / "cnn.pt")
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(out / "cnn.pt"), "--dir", str(out), "--quantize",
                                  "--targets", "onnx", "--no-int8-fallback", "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["verify", "--dir", str(out), "--no-torch", "--skip-runtime", "openvino"])
    assert r.exit_code == 1 and "FAIL: ONNX int8 on ORT CPU" in r.stdout
    r = CliRunner().invoke(main, ["inspect", "--dir", str(out), "--repeats", "2", "--json", "-"])
    layers = {x["layer"]: x for x in json.loads(r.stdout)["error"]["layers"]}
    assert layers["conv2"]["isolated"]["sqnr_db"] + 15 < layers["fc1"]["isolated"]["sqnr_db"]
    # by default export goes on by itself: conv2, the layer whose int8 costs the most, is kept in fp32
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(out / "cnn.pt"), "--dir", str(out), "--quantize",
                                  "--targets", "onnx", "-q"])
    assert r.exit_code == 0, r.output
    fallback = json.loads((out / "manifest.json").read_text())["int8_fallback"]
    assert not fallback["default"]["passed"] and fallback["kept_fp32"] == ["conv2"]
    assert fallback["ranking"][0]["layer"] == "conv2" and fallback["ranking"][0]["passed"]
    r = CliRunner().invoke(main, ["verify", "--dir", str(out), "--no-torch", "--skip-runtime", "openvino"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(out / "cnn.pt"), "--dir", str(out), "--quantize",
                                  "--targets", "onnx", "--search", "-q"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    table = manifest["search"]["table"]
    chosen = [row for row in table if row.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["precision"]["conv2"] == "fp32" and chosen[0]["passed"]
    default = next(row for row in table if row["precision"] == {"first conv": "fp32", "conv2": "int8", "fc1": "int8"})
    assert not default["passed"]
    assert manifest["calibration"]["keep_fp32"] == ["conv2"] or "conv2" in manifest["calibration"]["keep_fp32"]
    r = CliRunner().invoke(main, ["verify", "--dir", str(out), "--no-torch", "--skip-runtime", "openvino"])
    assert r.exit_code == 0, r.output
