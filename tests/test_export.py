import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import LOOSE, run

from toolkit.checkpoint import load_checkpoint, model_from_checkpoint
from toolkit.data import load_mnist
from toolkit.exporters.quantize import QuantConfig, calibration_indices, indices_sha256
from toolkit.fsutil import sha256_file


def test_fp32_onnx_is_one_file_with_symbolic_batch(tiny_export):
    out = tiny_export["out"]
    assert not list(out.glob("*.data"))
    model = onnx.load(str(out / "cnn_fp32.onnx"))
    onnx.checker.check_model(model, full_check=True)
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    assert model.graph.input[0].name == "image" and model.graph.output[0].name == "logits"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["arch"] == "cnn" and meta["checkpoint_sha256"] == sha256_file(out / "cnn.pt")
    assert {"checkpoint_test_accuracy", "mnisttk_version"} <= set(meta)


def test_fp32_parity_at_batch_sizes(tiny_export):
    import onnxruntime as ort

    out = tiny_export["out"]
    model = model_from_checkpoint(load_checkpoint(out / "cnn.pt"))
    sess = ort.InferenceSession(str(out / "cnn_fp32.onnx"), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(out / "cnn_fp32.torchscript.pt"))
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 64, 300):
        x = rng.random((n, 1, 28, 28), dtype=np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
            got_ts = ts(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"image": x})[0]
        assert got.shape == (n, 10)
        assert np.abs(got - ref).max() <= 1e-4 and np.abs(got_ts - ref).max() <= 1e-4


def test_int8_onnx_graph_structure(tiny_export):
    from onnx import numpy_helper

    model = onnx.load(str(tiny_export["out"] / "cnn_int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    int8_inits = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8_inits) >= 2  # conv2 and fc weights (conv1 stays fp32 by default)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8  # /255 folded in
    # the first block is fp32 and fenced: the Q after its max-pool has per-channel parameters
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == pool.output[0])
    assert inits[q.input[1]].shape == (8,) and len(set(inits[q.input[1]].tolist())) == 1


def test_int8_kernels_run_and_first_block_stays_fp32(tiny_export):
    from toolkit.runtimes.ort_session import Model, SessionOptions

    model = Model(tiny_export["out"] / "cnn_int8.onnx", "cpu", SessionOptions(threads=1, profile=True))
    model.logits(np.zeros((4, 28, 28), np.uint8))
    placement = model.node_placement()
    assert "QLinearConv" in placement["int8_kernels"] and "QGemm" in placement["int8_kernels"]
    # The fence held: without it ORT hoists the Q through the max-pool and ReLU and turns conv1
    # back into a (slow) QLinearConv; with it conv1 runs as a float Conv and only conv2 is QLinearConv.
    assert placement["ops"].get("QLinearConv") == 1 and placement["ops"].get("Conv") == 1


def _quantize(tiny_export, out_path, **options):
    """The quantizer alone, on the session's fp32 ONNX (the option under test touches only this step)."""
    from toolkit.data import to_model_input
    from toolkit.exporters.quantize import onnx_static_int8

    data = load_mnist(tiny_export["data"], download=False)
    cfg = QuantConfig(calibration_size=100, **options)
    calib = to_model_input(data.train_images[calibration_indices(len(data.train_images), cfg)])
    onnx_static_int8(tiny_export["out"] / "cnn_fp32.onnx", out_path, calib, cfg)
    return out_path


def test_im2col_is_bit_identical_to_plain_int8(tiny_export, tmp_path):
    import onnxruntime as ort

    outs = {}
    x = np.random.default_rng(0).integers(0, 256, (50, 1, 28, 28), dtype=np.uint8)
    for mode in ("im2col", "int8"):
        path = _quantize(tiny_export, tmp_path / f"{mode}.onnx", first_conv=mode)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs[mode] = sess.run(None, {"image": x})[0]
    np.testing.assert_array_equal(outs["im2col"], outs["int8"])


def test_int8_float_input_and_qoperator(tiny_export, tmp_path):
    path = _quantize(tiny_export, tmp_path / "q.onnx", quant_format="qoperator", uint8_input=False, per_channel=False)
    model = onnx.load(str(path))
    assert any(n.op_type == "QLinearConv" for n in model.graph.node)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_artifacts_load_in_fresh_process_without_toolkit(tiny_export):
    out = tiny_export["out"]
    code = f"""
import sys, numpy as np, torch, onnxruntime as ort
x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
for name in ("cnn_fp32.torchscript.pt", "cnn_int8.torchscript.pt"):
    assert torch.jit.load(r"{out}/" + name)(torch.from_numpy(x)).shape == (3, 10)
assert ort.InferenceSession(r"{out}/cnn_fp32.onnx").run(None, {{"image": x}})[0].shape == (3, 10)
u8 = (x * 255).astype(np.uint8)
assert ort.InferenceSession(r"{out}/cnn_int8.onnx").run(None, {{"image": u8}})[0].shape == (3, 10)
assert not any(m.startswith("toolkit") for m in sys.modules)
print("ok")
"""
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, cwd="/")
    assert r.stdout.strip() == "ok", r.stderr


def test_manifest_hashes_and_calibration(tiny_export):
    out = tiny_export["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    files = {a["file"] for a in manifest["artifacts"]}
    assert files == {"cnn_fp32.onnx", "cnn_int8.onnx", "cnn_fp32.torchscript.pt", "cnn_int8.torchscript.pt"}
    for a in manifest["artifacts"]:
        assert a["sha256"] == sha256_file(out / a["file"])
        assert a["size_bytes"] == (out / a["file"]).stat().st_size
        if a["precision"] == "int8":
            assert a["quant_params"] and all(p["scale"] for p in a["quant_params"].values())
    assert manifest["reference"]["sha256"] == sha256_file(out / "reference.npz")
    assert manifest["checkpoint"]["sha256"] == sha256_file(out / "cnn.pt")
    cal = manifest["calibration"]
    assert cal["split"] == "train" and cal["calibration_size"] == 100
    # the recorded hash is of indices into the 120-image TRAINING split
    idx = calibration_indices(120, QuantConfig(calibration_size=100, seed=cal["seed"]))
    assert indices_sha256(idx) == cal["calibration_indices_sha256"]
    assert idx.max() < 120 and len(np.unique(idx)) == 100
    assert set(manifest["machine"]["cpu"]) >= {"avx2", "avx512f", "avx512_vnni"}
    ref = np.load(out / "reference.npz")
    assert ref["logits"].shape == (40, 10) and len(ref["labels"]) == 40


def test_calibration_never_uses_test_images(tiny_export, monkeypatch):
    """Whatever the seed, the calibration images are rows of the training split."""
    import toolkit.export as export_mod
    import toolkit.exporters.quantize as quantize_mod

    seen = {}
    real = quantize_mod.onnx_static_int8

    def spy(fp32, out, calib, config):
        seen["calib"] = calib
        return real(fp32, out, calib, config)

    monkeypatch.setattr(quantize_mod, "onnx_static_int8", spy)
    data = load_mnist(tiny_export["data"], download=False)
    cfg = export_mod.ExportConfig(checkpoint=tiny_export["out"] / "cnn.pt", out=tiny_export["root"] / "spy", quantize=True,
                                  quant=QuantConfig(calibration_size=120))
    export_mod.run_export(cfg, data)
    train_rows = {r.tobytes() for r in (data.train_images.astype(np.float32) / 255)}
    test_rows = {r.tobytes() for r in (data.test_images.astype(np.float32) / 255)}
    calib_rows = {r[0].tobytes() for r in seen["calib"]}
    assert calib_rows <= train_rows and not calib_rows & test_rows


def test_failed_export_keeps_previous_artifacts(tiny_export, tmp_path, monkeypatch):
    import shutil

    import toolkit.exporters.quantize as quantize_mod

    out = tmp_path / "exp"
    shutil.copytree(tiny_export["out"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("simulated crash during quantization")

    monkeypatch.setattr(quantize_mod, "torch_static_int8", boom)
    r = run("export", "--checkpoint", out / "cnn.pt", "--out", out, "--quantize", "--calibration-size", 50,
            "--data-dir", tiny_export["data"])
    assert r.exit_code == 1 and "simulated crash during quantization" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("content,message", [
    (b"not a checkpoint", "not an mnisttk checkpoint"),
    (None, "no such checkpoint"),
])
def test_bad_checkpoint(tmp_path, content, message, tiny_export):
    ckpt = tmp_path / "bad.pt"
    if content is not None:
        ckpt.write_bytes(content)
    r = run("export", "--checkpoint", ckpt, "--out", tmp_path / "o", "--data-dir", tiny_export["data"])
    assert r.exit_code == 1 and message in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_truncated_and_foreign_arch_checkpoint(tiny_export, tmp_path):
    good = (tiny_export["out"] / "cnn.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(good[: len(good) // 2])
    r = run("export", "--checkpoint", tmp_path / "t.pt", "--out", tmp_path / "o")
    assert r.exit_code == 1 and "truncated" in r.stderr
    ckpt = torch.load(tiny_export["out"] / "cnn.pt", weights_only=True)
    ckpt["arch"] = "resnet"
    torch.save(ckpt, tmp_path / "a.pt")
    r = run("export", "--checkpoint", tmp_path / "a.pt", "--out", tmp_path / "o")
    assert r.exit_code == 1 and "arch 'resnet' does not match its reference 'cnn'" in r.stderr
    del ckpt["arch_ref"]  # a checkpoint with neither a built-in name nor a reference
    torch.save(ckpt, tmp_path / "a.pt")
    r = run("export", "--checkpoint", tmp_path / "a.pt", "--out", tmp_path / "o")
    assert r.exit_code == 1 and "unknown arch 'resnet'" in r.stderr


def test_calibration_size_too_large(tiny_export, tmp_path):
    r = run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--out", tmp_path / "o", "--quantize",
            "--calibration-size", 121, "--data-dir", tiny_export["data"])
    assert r.exit_code == 1 and "larger than the training set (120 images)" in r.stderr
    assert not (tmp_path / "o").exists()


def test_unwritable_out(tiny_export, tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    r = run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--out", blocker / "sub", "--data-dir", tiny_export["data"])
    assert r.exit_code == 1 and "cannot write to" in r.stderr


def test_export_json_and_reduce_range_recorded(tiny_export, tmp_path):
    r = run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--out", tmp_path / "o", "--quantize",
            "--reduce-range", "--calibration-size", 50, "--data-dir", tiny_export["data"], "--json")
    assert r.exit_code == 0, r.output
    manifest = json.loads(r.stdout)
    assert manifest["calibration"]["reduce_range"] is True
    assert manifest == json.loads((tmp_path / "o" / "manifest.json").read_text())


def test_mlp_exports_quantizes_and_verifies(tiny_export, tmp_path):
    data = tiny_export["data"]
    out = tmp_path / "mlp"
    r = run("train", "--arch", "mlp", "--epochs", 1, "--batch-size", 20, "--data-dir", data, "--out", out / "mlp.pt",
            "--quiet", "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = run("export", "--checkpoint", out / "mlp.pt", "--out", out, "--quantize", "--calibration-size", 50,
            "--data-dir", data)
    assert r.exit_code == 0, r.output
    assert (out / "mlp_int8.onnx").is_file()
    r = run("verify", "--dir", out, "--data-dir", data, *LOOSE)
    assert r.exit_code == 0, r.output
    # inspect on a graph whose ReLUs ONNX Runtime's quantizer folded into the output quantizers: the
    # isolation must keep them (as Relu), so a layer alone is never worse than the whole int8 graph
    r = run("inspect", "--dir", out, "--data-dir", data, "--repeats", 2, "--json", "-")
    assert r.exit_code == 0, r.output
    layers = json.loads(r.stdout)["error"]["layers"]
    assert [x["layer"] for x in layers] == ["fc1", "fc2", "fc3"] and all(x["quantized"] for x in layers)
    for x in layers:
        assert x["isolated"]["sqnr_db"] > x["accumulated"]["sqnr_db"] - 3, x
        assert x["fp32_us_per_image"] > 0 and x["int8_us_per_image"] > 0, x  # "fused fc1" is fc1's time
    r = run("export", "--checkpoint", out / "mlp.pt", "--out", out, "--quantize", "--first-conv", "im2col",
            "--calibration-size", 50, "--data-dir", data)
    assert r.exit_code == 1 and "needs a model with a convolution" in r.stderr


def test_same_checkpoint_same_bytes_anywhere_and_no_build_paths(tiny_export, tmp_path):
    """Two exports of one checkpoint, each a fresh `mnisttk export` process (as users run it) in another
    working directory and folder: identical model bytes, and no artifact holds a path, a stack
    trace, or unused opset domains. (Within one process TorchScript mangles a class traced twice.)"""
    from pathlib import Path

    outs = []
    for where in ("a", "some/other/place"):
        cwd = tmp_path / where
        cwd.mkdir(parents=True)
        r = subprocess.run([sys.executable, "-m", "toolkit", "export", "--checkpoint", str(tiny_export["out"] / "cnn.pt"),
                            "--out", "out", "--quantize", "--calibration-size", "100", "--data-dir", str(tiny_export["data"])],
                           cwd=cwd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append(cwd / "out")
    repo = str(Path(__file__).resolve().parent.parent).encode()
    for name in ("cnn_fp32.onnx", "cnn_int8.onnx", "cnn_fp32.torchscript.pt", "cnn_int8.torchscript.pt", "reference.npz"):
        first, second = ((o / name).read_bytes() for o in outs)
        assert first == second, name
        for needle in (repo, str(tmp_path).encode(), str(tiny_export["root"]).encode(), b"stack_trace", b".debug_pkl"):
            assert needle not in first, (name, needle)
    for name in ("cnn_fp32.onnx", "cnn_int8.onnx"):
        model = onnx.load(str(outs[0] / name))
        assert model.producer_name == "mnisttk" and {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["class_labels"] == "0,1,2,3,4,5,6,7,8,9" and "softmax not applied" in meta["output"]
        assert ("uint8" in meta["input"]) == (name == "cnn_int8.onnx") and "softmax not applied" in model.doc_string
        names = {n.name for n in model.graph.node}
        assert {"conv2", "fc1"} <= names and not any(n.metadata_props for n in model.graph.node)


ALL_FORMATS = ("torchscript", "onnx", "ort", "tflite", "executorch", "triton", "openvino")


def test_all_targets_are_written_listed_and_verified(all_targets, tiny_export):
    manifest = json.loads((all_targets / "manifest.json").read_text())
    assert sorted(manifest["targets"]) == sorted(f"{f}-{p}" for f in ALL_FORMATS for p in ("fp32", "int8"))
    files = {a["file"] for a in manifest["artifacts"]}
    assert {"cnn_fp32.ort", "cnn_int8.ort", "triton/cnn_int8/1/model.onnx", "triton/cnn_fp32/1/model.onnx",
            "cnn_fp32.tflite", "cnn_int8.tflite", "cnn_fp32.pte", "cnn_int8.pte", "cnn_fp32.xml", "cnn_int8.xml"} <= files
    assert {f["file"] for f in manifest["support_files"]} == {
        "required_operators.config", "triton/cnn_fp32/config.pbtxt", "triton/cnn_int8/config.pbtxt",
        "cnn_fp32.b256.tflite", "cnn_int8.b256.tflite", "cnn_fp32.bin", "cnn_int8.bin"}
    config = (all_targets / "required_operators.config").read_text()
    assert "QLinearConv" in config and ".export-" not in config and str(all_targets) not in config  # no paths
    r = run("verify", "--dir", all_targets, "--data-dir", tiny_export["data"], "--json", "-", "--no-torch", *LOOSE)
    assert r.exit_code == 0, r.output
    rows = {x["id"]: x for x in json.loads(r.stdout)["rows"]}
    for rid in ("ort-fp32@ort-cpu", "ort-int8@ort-cpu", "triton-fp32@ort-cpu", "triton-int8@ort-cpu",
                "tflite-fp32@litert", "tflite-int8@litert"):
        assert rows[rid]["status"] == "ok", rid
    # the int8 .ort keeps int8 kernels and the fenced fp32 first block (a float conv)
    ops = rows["ort-int8@ort-cpu"]["placement"]["ops"]
    assert {"QLinearConv", "QGemm"} <= set(ops) and ({"Conv", "FusedConv"} & set(ops))
    # LiteRT: every compute op inside the XNNPACK delegate; a batch-1 and a batch-256 file that agree
    for p in ("fp32", "int8"):
        row = rows[f"tflite-{p}@litert"]
        assert row["placement"]["not_delegated"] == [] and "CONV_2D" in row["placement"]["delegated"], row
        assert row["consistency_batches"] == [1, 256] and row["batch_consistent"] is True
    # ExecuTorch needs torch: skipped under --no-torch, with the reason
    assert rows["executorch-int8@executorch"]["status"] == "skipped"
    assert "--no-torch" in rows["executorch-int8@executorch"]["reasons"][0]


def test_executorch_and_litert_artifacts(all_targets, tiny_export):
    """Dynamic-batch .pte programs fully delegated to XNNPACK; int8 .tflite with int8 I/O."""
    manifest = json.loads((all_targets / "manifest.json").read_text())
    art = {a["file"]: a for a in manifest["artifacts"]}
    for p in ("fp32", "int8"):
        pte = art[f"cnn_{p}.pte"]
        assert pte["delegation"]["delegates"] and pte["delegation"]["not_delegated"] == [] and pte["max_batch"] == 1000
        lite = art[f"cnn_{p}.tflite"]
        assert lite["static_batch"] == 1 and [v["batch"] for v in lite["batch_files"]] == [256]
    assert art["cnn_int8.tflite"]["inputs"][0]["dtype"] == "int8"
    assert art["cnn_int8.tflite"]["size_bytes"] < art["cnn_fp32.tflite"]["size_bytes"] / 2
    parity = {c["artifact"]: c for c in manifest["fp32_parity"]}
    assert parity["cnn_fp32.pte"]["flipped"] == 0 and parity["cnn_fp32.tflite"]["max_abs_logit_diff"] < 1e-4
    r = run("verify", "--dir", all_targets, "--data-dir", tiny_export["data"], "--json", "-", *LOOSE)
    assert r.exit_code == 0, r.output
    rows = {x["id"]: x for x in json.loads(r.stdout)["rows"]}
    for p in ("fp32", "int8"):
        row = rows[f"executorch-{p}@executorch"]
        assert row["status"] == "ok" and row["batch_consistent"] and row["consistency_batches"] == [1, 2, 7, 64, 1000]
        assert row["placement"]["delegates"] == ["XnnpackBackend"] * len(row["placement"]["delegates"])
    assert rows["executorch-fp32@executorch"]["max_abs_logit_diff"] < 1e-4


def test_litert_rows_run_without_torch(all_targets, tiny_export):
    """The LiteRT interpreter is edge side: numpy and ai_edge_litert, never torch; ExecuTorch rows skip."""
    import subprocess
    import sys
    import textwrap

    from helpers import BLOCK_TORCH

    code = BLOCK_TORCH + textwrap.dedent(f"""
        import importlib.util, json
        importlib.util.find_spec = (lambda orig: lambda name, *a: None if name.split(".")[0] == "torch"
                                    else orig(name, *a))(importlib.util.find_spec)
        from click.testing import CliRunner
        from toolkit.cli import main
        r = CliRunner().invoke(main, ["verify", "--dir", r"{all_targets}", "--data-dir", r"{tiny_export['data']}",
                                      "--json", "-", *{LOOSE!r}])
        assert r.exit_code == 0, r.output
        rows = {{x["id"]: x for x in json.loads(r.stdout)["rows"]}}
        assert rows["tflite-int8@litert"]["status"] == "ok", rows["tflite-int8@litert"]
        assert rows["executorch-int8@executorch"]["status"] == "skipped"
        assert "torch not installed" in rows["executorch-int8@executorch"]["reasons"][0]
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("EDGE OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "EDGE OK" in r.stdout, r.stdout + r.stderr


def test_triton_configs_parse_as_triton_model_configs_and_match_the_onnx(all_targets):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    for precision, dtype in (("fp32", "TYPE_FP32"), ("int8", "TYPE_UINT8")):
        folder = all_targets / "triton" / f"cnn_{precision}"
        cfg = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        model = onnx.load(str(folder / "1" / "model.onnx"))
        assert (folder / "1" / "model.onnx").read_bytes() == (all_targets / f"cnn_{precision}.onnx").read_bytes()
        assert cfg.name == f"cnn_{precision}" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 256
        assert [i.name for i in cfg.input] == [i.name for i in model.graph.input] == ["image"]
        assert model_config_pb2.DataType.Name(cfg.input[0].data_type) == dtype and list(cfg.input[0].dims) == [1, 28, 28]
        assert [o.name for o in cfg.output] == ["logits"] and list(cfg.output[0].dims) == [10]
        assert cfg.HasField("dynamic_batching")
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_CPU"


def test_bad_targets_and_tampered_ort(all_targets, tiny_export, tmp_path):
    import shutil

    for bad in ("", "tflite,nope", "onnx,nope"):
        r = run("export", "--dir", tmp_path, "--targets", bad)
        assert r.exit_code == 2 and "choose from torchscript, onnx, ort, tflite, executorch, triton, openvino or all" in r.output, r.output
    out = tmp_path / "copy"
    shutil.copytree(all_targets, out)
    for name, row in (("cnn_int8.ort", "ORT format int8 on ORT CPU"), ("cnn_int8.tflite", "LiteRT int8 on LiteRT XNNPACK"),
                      ("cnn_int8.b256.tflite", "LiteRT int8 on LiteRT XNNPACK"),
                      ("cnn_fp32.pte", "ExecuTorch fp32 on ExecuTorch XNNPACK")):
        path = out / name
        original = path.read_bytes()
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        torch_rows = [] if name.endswith(".pte") else ["--no-torch"]  # only the .pte row needs torch
        r = run("verify", "--dir", out, "--data-dir", tiny_export["data"], *LOOSE, *torch_rows)
        assert r.exit_code == 1 and f"FAIL: {row}" in r.stdout and name in r.stdout, (name, r.output)
        path.write_bytes(original)
    # a narrower export removes what it no longer lists (ORT files, the Triton repository)
    r = run("export", "--checkpoint", out / "cnn.pt", "--dir", out, "--calibration-size", 100, "--data-dir",
            tiny_export["data"])
    assert r.exit_code == 0, r.output
    assert not (out / "triton").exists() and not (out / "cnn_fp32.ort").exists() and not (out / "cnn_int8.onnx").exists()
    assert run("verify", "--dir", out, "--data-dir", tiny_export["data"], "--no-torch").exit_code == 0


def test_truncated_pte_and_tflite_fail_in_one_line(all_targets, tiny_export, tmp_path):
    """A truncated program whose manifest hash was updated to match: the row fails, one line."""
    import hashlib
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(all_targets, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("cnn_int8.pte", "cnn_int8.tflite"):
        data = (out / name).read_bytes()[:3000]
        (out / name).write_bytes(data)
        entry = next(a for a in manifest["artifacts"] if a["file"] == name)
        entry["sha256"], entry["size_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = run("verify", "--dir", out, "--data-dir", tiny_export["data"], "--json", "-", *LOOSE)
    assert r.exit_code == 1 and "Traceback" not in r.output
    rows = {x["id"]: x for x in json.loads(r.stdout)["rows"]}
    assert "cnn_int8.pte: not a" in rows["executorch-int8@executorch"]["reasons"][0]
    assert "cnn_int8.tflite: not a loadable LiteRT model" in rows["tflite-int8@litert"]["reasons"][0]
    assert all("\n" not in reason for x in rows.values() for reason in x["reasons"])
    # a batch file that is not a listed support file with that hash is not a valid manifest
    next(a for a in manifest["artifacts"] if a["file"] == "cnn_fp32.tflite")["batch_files"][0]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = run("verify", "--dir", out, "--data-dir", tiny_export["data"])
    assert r.exit_code == 1 and "batch_files[0] is not a listed support file" in r.stderr, r.output


def test_target_without_its_extra_is_one_line_and_touches_nothing(all_targets, tiny_export, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(all_targets, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code = f"""
import sys
import textwrap
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("executorch", "litert_torch"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
import importlib.util
importlib.util.find_spec = (lambda orig: lambda name, *a: None if name.split(".")[0] in ("executorch", "litert_torch")
                            else orig(name, *a))(importlib.util.find_spec)
from toolkit.cli import main
sys.argv = ["mnisttk", "export", "--checkpoint", r"{out / 'cnn.pt'}", "--dir", r"{out}", "--quantize",
            "--targets", sys.argv[1], "--calibration-size", "100", "--data-dir", r"{tiny_export['data']}"]
main()
"""
    for target, extra in (("executorch", "executorch"), ("onnx,tflite", "tflite")):
        r = subprocess.run([sys.executable, "-c", code, target], capture_output=True, text=True)
        errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
        assert r.returncode == 1 and len(errors) == 1 and f"pip install 'mnisttk[{extra}]'" in errors[0], r.stderr
        assert "Traceback" not in r.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_predict_with_a_tflite_model_agrees_with_onnx(all_targets, tiny_export, tmp_path):
    from toolkit.data import load_idx_dir

    images = load_idx_dir(tiny_export["data"])["test_images"][:6]
    files = []
    for i, img in enumerate(images):
        np.save(tmp_path / f"d{i}.npy", img)
        files.append(tmp_path / f"d{i}.npy")
    digits = {}
    for model in ("cnn_fp32.onnx", "cnn_fp32.tflite"):
        r = run("predict", "--model", all_targets / model, "--as-is", "--accept-all", "--json", "-", *files)
        assert r.exit_code == 0, r.output
        digits[model] = [x["digit"] for x in json.loads(r.stdout)["results"]]
    assert digits["cnn_fp32.onnx"] == digits["cnn_fp32.tflite"]
    r = run("predict", "--model", all_targets / "cnn_fp32.b256.tflite", "--accept-all", *files)
    assert r.exit_code == 1 and "a batch-256 LiteRT model where a batch-1 one was expected" in r.stderr, r.output


def test_keep_fp32_and_search_arguments(tiny_export, tmp_path):
    import shutil

    out = tmp_path / "e"
    out.mkdir()
    shutil.copy(tiny_export["out"] / "cnn.pt", out / "cnn.pt")
    common = ["--checkpoint", out / "cnn.pt", "--dir", out, "--calibration-size", 100, "--data-dir", tiny_export["data"]]
    r = run("export", *common, "--search")
    assert r.exit_code == 1 and "--search" in r.stderr and "--quantize" in r.stderr, r.output
    r = run("export", *common, "--quantize", "--keep-fp32", "conv9")
    assert r.exit_code == 1 and "'conv9' is not a later layer" in r.stderr and "conv2" in r.stderr, r.output
    assert not (out / "manifest.json").exists()
    r = run("export", *common, "--quantize", "--keep-fp32", "fc1")
    assert r.exit_code == 0, r.output
    ops = {n.name: n.op_type for n in onnx.load(str(out / "cnn_int8.onnx")).graph.node}
    assert ops["fc1"] == "Gemm" and "fc1.weight_DequantizeLinear" not in ops  # fc1 stays float
    assert "conv2.weight_DequantizeLinear" in ops  # conv2 still int8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["keep_fp32"] == ["fc1"] and manifest["search"] is None


def test_inspect_compares_the_executorch_programs_too(all_targets, tiny_export):
    r = run("inspect", "--dir", all_targets, "--data-dir", tiny_export["data"], "--repeats", 2, "--json", "-")
    assert r.exit_code == 0, r.output
    et = json.loads(r.stdout)["executorch"]
    assert et["files"] == {"fp32": "cnn_fp32.pte", "int8": "cnn_int8.pte"} and et["images"] == 40
    assert et["logits"]["sqnr_db"] > 10 and 0.5 < et["agreement"] <= 1
    assert "ExecuTorch cnn_int8.pte vs cnn_fp32.pte" in r.stderr


def test_executorch_rows_start_without_its_compiler(all_targets):
    """A row's child imports ExecuTorch's runtime and program reader, not its exporter (torch._dynamo, inductor:
    most of 10 s a child); the real `executorch.exir` is still what a later import in that process gets."""
    pte = all_targets / "cnn_int8.pte"
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from toolkit.runtimes.executorch import ExecuTorchCandidate, import_runtime
        import_runtime()
        heavy = sorted(m for m in ("torch._dynamo", "torch._inductor", "executorch.exir") if m in sys.modules)
        assert not heavy, heavy
        cand = ExecuTorchCandidate(__import__("pathlib").Path(r"{pte}"), "int8", 1, None, "ExecuTorch int8", "cnn_int8.pte")
        assert cand.logits(np.zeros((3, 28, 28), np.uint8)).shape == (3, 10)
        import executorch.exir
        assert hasattr(executorch.exir, "to_edge"), "the bare package was left in place"
        print("LIGHT OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "LIGHT OK" in r.stdout, r.stdout + r.stderr[-2000:]


def test_every_file_an_export_writes_is_described_and_has_one_mode(all_targets):
    """exported/README.md described every output but the OpenVINO IR files, and the int8 .tflite files
    were written 0755 where everything else was 0644."""
    import stat

    readme = (Path(__file__).resolve().parent.parent / "exported" / "README.md").read_text()
    modes = {}
    for p in sorted(all_targets.iterdir()):
        name = p.name
        described = (f"`{name}`" in readme or (p.is_dir() and f"`{name}/`" in readme)
                     or (name.endswith(".b256.tflite") and "`*.b256.tflite`" in readme))
        assert described, f"{name} is not described in exported/README.md"
        if p.is_file() and name != "cnn.pt":  # the fixture's own copy of the checkpoint
            modes[name] = stat.S_IMODE(p.stat().st_mode)
    assert len(set(modes.values())) == 1 and not next(iter(modes.values())) & 0o111, modes


def test_the_artifact_table_keeps_its_columns_past_28_character_names():
    from toolkit.commands.export import format_export

    long = "depthwise_separable_residual_net_int8.onnx"
    manifest = {"artifacts": [{"file": f, "format": "onnx", "precision": p, "size_bytes": 10, "test_accuracy": 0.9}
                              for f, p in (("cnn_fp32.onnx", "fp32"), (long, "int8"))],
                "reference": {"pytorch_fp32_test_accuracy": 0.9}, "fp32_parity": [], "support_files": []}
    lines = format_export(manifest, Path("out")).splitlines()[:3]
    col = lines[0].index("format")
    assert col > len(long) and all(line[col:col + 5] == "onnx " for line in lines[1:]), lines
    assert len({len(line) for line in lines}) == 1
