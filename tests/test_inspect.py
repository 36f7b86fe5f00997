"""`mnisttk inspect`: per-layer error (accumulated and isolated), flips, confusion, Markdown, plot."""

import hashlib
import json

import numpy as np
import onnx
import pytest
from helpers import run
from onnx import numpy_helper


def inspect(exported, data, *extra):
    return run("inspect", "--dir", exported, "--data-dir", data, "--repeats", 2, "--throughput-batch", 16,
               "--json", "-", *extra)


def test_per_layer_error_names_the_layers_and_their_kernels(exported, tiny_export):
    r = inspect(exported, tiny_export["data"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    layers = {layer["layer"]: layer for layer in result["error"]["layers"]}
    assert list(layers) == ["conv1", "conv2", "fc1"]
    assert not layers["conv1"]["quantized"] and "isolated" not in layers["conv1"]  # the fenced fp32 first block
    assert layers["conv1"]["accumulated"]["max_abs_diff"] < 1e-4
    for name, kernel in (("conv2", "QLinearConv"), ("fc1", "QGemm")):
        layer = layers[name]
        assert layer["quantized"] and layer["int8_kernel"] and kernel in layer["int8_ops"]
        assert 10 < layer["accumulated"]["sqnr_db"] < 100 and 10 < layer["isolated"]["sqnr_db"] < 100
        assert 0.99 < layer["accumulated"]["cosine"] <= 1 and layer["weight"]["sqnr_db"] > 20
        assert layer["scales"]["weight"]["per_channel"] == (16 if name == "conv2" else 10)
        assert layer["int8_us_per_image"] > 0 and layer["fp32_us_per_image"] > 0
    # conv1 stays fp32, so conv2 sees the fp32 input: its isolated and accumulated errors are the same
    assert layers["conv2"]["isolated"]["sqnr_db"] == pytest.approx(layers["conv2"]["accumulated"]["sqnr_db"], abs=1e-6)
    assert result["n_test"] == 40 and np.asarray(result["confusion_int8"]).sum() == 40
    assert result["error"]["images"] == 40  # --images defaults to 1,000: capped by the test set
    assert "SQNR acc" in r.stderr and "int8 changed" in r.stderr
    # the kernels' wall time beside the whole runs in verify's unit (one timing vocabulary across the verbs)
    for m in result["models"].values():
        assert m["cpu_us_per_image"] > 0
    text = " ".join(r.stderr.split())
    assert "CPU-µs per image" in text and "images per CPU-second (verify's img/s measure" in text


def test_isolation_finds_the_damaged_layer(exported, tiny_export):
    """conv2's weight scales inflated 1.5×: only conv2 is at fault on its own; fc1 inherits the error."""
    path = exported / "cnn_int8.onnx"
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == "conv2.weight_scale":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(model, str(path))
    manifest = json.loads((exported / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["file"] == "cnn_int8.onnx":
            a["sha256"], a["size_bytes"] = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size
    (exported / "manifest.json").write_text(json.dumps(manifest))
    r = inspect(exported, tiny_export["data"])
    assert r.exit_code == 0, r.output
    layers = {layer["layer"]: layer for layer in json.loads(r.stdout)["error"]["layers"]}
    assert layers["conv2"]["isolated"]["sqnr_db"] < 15 and layers["conv2"]["weight"]["sqnr_db"] < 15
    assert layers["fc1"]["isolated"]["sqnr_db"] > layers["conv2"]["isolated"]["sqnr_db"] + 15
    assert layers["fc1"]["accumulated"]["sqnr_db"] < layers["fc1"]["isolated"]["sqnr_db"] - 10
    assert "most error on its own: conv2" in r.stderr
    # the damaged int8 model's logits are 1.5× the float model's: its not-a-digit decisions move, by image
    nd = json.loads(r.stdout)["not_a_digit"]
    for part, n in (("test", 40), ("non_digits", 400)):
        p = nd[part]
        assert p["images"] == n and p["agreement"] == pytest.approx(1 - p["n_changed"] / n)
        assert len(p["changed"]) == min(p["n_changed"], 20) and all(c["fp32"] != c["int8"] for c in p["changed"])
    assert nd["test"]["n_changed"] + nd["non_digits"]["n_changed"] > 0
    assert "not-a-digit decisions (the export's rule): int8 as fp32 on" in " ".join(r.stderr.split())


def test_markdown_and_plot(exported, tiny_export):
    pytest.importorskip("matplotlib")
    r = inspect(exported, tiny_export["data"], "--markdown", exported / "i.md", "--plot", exported / "i.png",
                "--images", 10)
    assert r.exit_code == 0, r.output
    md = (exported / "i.md").read_text()
    assert "| conv2 | Conv | QLinearConv |" in md and "max\\|Δ\\| acc" in md and "on 10 test images" in md
    assert (exported / "i.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs(exported, tiny_export, tmp_path):
    r = run("inspect", "--dir", exported, "--data-dir", tiny_export["data"], "--images", 0)
    assert r.exit_code == 2 and "--images" in r.output
    fp32_only = tmp_path / "fp32"
    r = run("export", "--checkpoint", exported / "cnn.pt", "--dir", fp32_only, "--data-dir", tiny_export["data"])
    assert r.exit_code == 0, r.output
    r = run("inspect", "--dir", fp32_only, "--data-dir", tiny_export["data"])
    assert r.exit_code == 1 and r.stderr.count("Error:") == 1 and "no int8 ONNX model" in r.stderr, r.output
    r = run("inspect", "--dir", exported, "--data-dir", tiny_export["data"], "--plot", tmp_path / "nope" / "x.png")
    assert r.exit_code == 1 and "Traceback" not in r.output


def test_inspect_times_fp32_and_int8_in_interleaved_rounds_and_marks_noise(onnx_family_export, monkeypatch):
    """The two models' profiled runs alternate round by round (a busy spell slows both); each round's
    int8/fp32 ratio is kept, and a round where other processes kept cores busy marks the timing NOISY."""
    from toolkit import timing
    from toolkit.inspect.profile import profile_models
    from toolkit.runtimes.ort_session import SessionOptions

    folder = onnx_family_export
    manifest = json.loads((folder / "manifest.json").read_text())
    onnx = {a["precision"]: a for a in manifest["artifacts"] if a["format"] == "onnx"}
    specs = {p: (folder / a["file"], SessionOptions(), a["sha256"]) for p, a in onnx.items()}
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    order = []
    real_rotated = timing.rotated
    monkeypatch.setattr(timing, "rotated", lambda items, k: order.append(real_rotated(items, k)) or order[-1])
    quiet = {"busy_cores": 1.0, "steal_pct": 0.0, "other_busy_cores": 0.0}
    monkeypatch.setattr(timing, "load_between", lambda a, b, own_cores: quiet)
    out = profile_models(specs, images, batch=64, threads=1, repeats=6, rounds=3)
    t = out["timing"]
    assert t["rounds"] == 3 and t["runs_per_round"] == 2 and len(t["int8_over_fp32_by_round"]) == 3
    assert order == [["fp32", "int8"], ["int8", "fp32"], ["fp32", "int8"]]  # rotated: neither always first
    assert all("ratio varied" in why for why in t["noisy"])  # a quiet machine: only the ratio's own spread
    assert all(out["models"][p]["nodes"] for p in ("fp32", "int8"))
    busy = {"busy_cores": 2.0, "steal_pct": 0.0, "other_busy_cores": timing.NOISY_OTHER_CORES + 0.01}
    monkeypatch.setattr(timing, "load_between", lambda a, b, own_cores: busy)
    t = profile_models(specs, images, batch=64, threads=1, repeats=3, rounds=3)["timing"]
    assert any("other processes kept" in why for why in t["noisy"])
    at = {"busy_cores": 2.0, "steal_pct": 0.0, "other_busy_cores": timing.NOISY_OTHER_CORES}  # at the limit: quiet
    monkeypatch.setattr(timing, "load_between", lambda a, b, own_cores: at)
    t = profile_models(specs, images, batch=64, threads=1, repeats=3, rounds=3)["timing"]
    assert not any("other processes kept" in why for why in t["noisy"])
