import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import BLOCK_TORCH, LOOSE, run, third_party_check
from onnx import numpy_helper

from toolkit.fsutil import sha256_file
from toolkit.verify import Gates, Row, judge


def verify(exported, data, *extra):
    return run("verify", "--dir", exported, "--data-dir", data, "--json", exported / "r.json", *LOOSE, *extra)


def test_verify_passes_and_reports_every_row(exported, tiny_export):
    r = verify(exported, tiny_export["data"], "--markdown", exported / "r.md")
    assert r.exit_code == 0, r.output
    report = json.loads((exported / "r.json").read_text())
    rows = {(x["name"], x["runtime"]): x for x in report["rows"]}
    assert set(rows) >= {("PyTorch fp32", "PyTorch eager"), ("TorchScript fp32", "TorchScript"),
                         ("TorchScript int8", "TorchScript"), ("ONNX fp32", "ORT CPU"), ("ONNX int8", "ORT CPU"),
                         ("ONNX fp32", "ORT CUDA"), ("ONNX int8", "ORT CUDA")}
    cpu8 = rows[("ONNX int8", "ORT CPU")]
    assert cpu8["placement"]["providers"] == {"CPU": sum(cpu8["placement"]["providers"].values())}
    assert cpu8["placement"]["int8_kernels"]  # QLinearConv / QGemm really ran
    assert cpu8["batch_consistent"] is True and cpu8["latency_us"]["p50"] > 0 and cpu8["throughput"] > 0
    assert rows[("ONNX fp32", "ORT CPU")]["max_abs_logit_diff"] <= 1e-4
    import onnxruntime as ort

    cuda_row = rows[("ONNX fp32", "ORT CUDA")]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert cuda_row["status"] == "skipped" and "CUDAExecutionProvider" in cuda_row["reasons"][0]
    else:  # a CUDA machine: the row ran on the GPU, judged like any other
        assert cuda_row["status"] in ("ok", "FAIL") and cuda_row["accuracy"] is not None
    assert "| ONNX int8 | ORT CPU |" in (exported / "r.md").read_text()
    assert "PASS" in r.stdout


def test_every_row_ran_the_file_it_names(exported, tiny_export):
    """On 40 synthetic images fp32 and int8 can look alike; the bytes each runtime loaded cannot.
    (Catches e.g. a TorchScript int8 row that silently loads the fp32 file.)"""
    assert verify(exported, tiny_export["data"]).exit_code == 0
    report = json.loads((exported / "r.json").read_text())
    manifest = json.loads((exported / "manifest.json").read_text())
    sha = {a["file"]: a["sha256"] for a in manifest["artifacts"]}
    measured = [r for r in report["rows"] if r["status"] == "ok" and not r["is_reference"]]
    assert {r["id"] for r in measured} == {"torchscript-fp32@torchscript", "torchscript-int8@torchscript",
                                           "onnx-fp32@ort-cpu", "onnx-int8@ort-cpu"}
    for r in measured:
        assert r["loaded_sha256"] == sha[r["file"]], r["id"]
        assert (r["precision"] == "int8") == ("int8" in r["file"])
    int8 = next(r for r in measured if r["id"] == "onnx-int8@ort-cpu")
    assert int8["placement"]["int8_kernels"]  # and its kernels were int8 ones
    assert not {"ReorderInput", "ReorderOutput"} & set(int8["placement"]["ops"])  # no NCHWc reorders around conv1


def test_accuracies_match_independent_onnxruntime(exported, tiny_export):
    import onnxruntime as ort

    from toolkit.data import load_mnist

    assert verify(exported, tiny_export["data"]).exit_code == 0
    report = json.loads((exported / "r.json").read_text())
    data = load_mnist(tiny_export["data"], download=False)
    for name, x in (("cnn_fp32.onnx", data.test_images[:, None].astype(np.float32) / 255),
                    ("cnn_int8.onnx", data.test_images[:, None])):
        sess = ort.InferenceSession(str(exported / name), providers=["CPUExecutionProvider"])
        acc = float((sess.run(None, {"image": x})[0].argmax(1) == data.test_labels).mean())
        row = next(r for r in report["rows"] if r["file"] == name and r["runtime"] == "ORT CPU")
        assert row["accuracy"] == acc


def test_tampered_artifact_fails(exported, tiny_export):
    path = exported / "cnn_fp32.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    r = verify(exported, tiny_export["data"])
    assert r.exit_code == 1
    assert "SHA-256 changed since export" in r.stdout and "FAIL: ONNX fp32 on ORT CPU" in r.stdout


def test_doctored_int8_model_fails_gates(exported, tiny_export):
    """A valid int8 model with wrong weights, manifest hash updated: only the gates can catch it."""
    path = exported / "cnn_int8.onnx"
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4:
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(-w, init.name))
    onnx.save(model, str(path))
    manifest = json.loads((exported / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["file"] == "cnn_int8.onnx":
            a["sha256"] = sha256_file(path)
    (exported / "manifest.json").write_text(json.dumps(manifest))
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"])
    assert r.exit_code == 1
    verdict = r.stdout.strip().splitlines()[-1]
    assert verdict.startswith("FAIL:") and "ONNX int8 on ORT CPU" in verdict


def test_doctored_manifest_fails(exported, tiny_export):
    manifest = json.loads((exported / "manifest.json").read_text())
    manifest["artifacts"][0]["sha256"] = "0" * 64
    (exported / "manifest.json").write_text(json.dumps(manifest))
    r = verify(exported, tiny_export["data"])
    assert r.exit_code == 1 and "SHA-256 changed since export" in r.stdout


def test_missing_manifest_and_usage_errors(tmp_path, tiny_export):
    r = run("verify", "--dir", tmp_path, "--data-dir", tiny_export["data"])
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and "no manifest" in r.stderr
    r = run("verify", "--dir", tmp_path / "missing", "--data-dir", tiny_export["data"])  # the folder, not a manifest
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: {tmp_path / 'missing'}: no such folder"), r.stderr
    assert run("verify", "--threads", "-1").exit_code == 2
    assert run("verify", "--runtime", "tpu").exit_code == 2


def test_require_cuda_without_gpu(exported, tiny_export):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    r = verify(exported, tiny_export["data"], "--require-cuda")
    # said before the run (no rows measured), in one line
    assert r.exit_code == 1 and r.stdout == "" and "no CUDAExecutionProvider" in r.stderr and "nothing was run" in r.stderr
    assert "verifying" not in r.stderr


def test_latency_ratio_gate(exported, tiny_export):
    r = verify(exported, tiny_export["data"], "--max-latency-ratio", "0.0001")
    assert r.exit_code == 1 and "latency ratio" in r.stdout


def test_gate_logic():
    g = Gates()
    fp32 = Row("ONNX fp32", "ORT CPU", "fp32", "f", accuracy=0.9, flipped=0, max_abs_logit_diff=2e-4)
    judge(fp32, g)
    assert fp32.status == "FAIL" and "max |Δlogit|" in fp32.reasons[0]
    ok8 = Row("ONNX int8", "ORT CPU", "int8", "f", accuracy=0.9, acc_diff=-0.0029, agreement=0.996)
    judge(ok8, g)
    assert ok8.status == "ok"
    bad8 = Row("ONNX int8", "ORT CPU", "int8", "f", accuracy=0.9, acc_diff=-0.0031, agreement=0.994,
               batch_consistent=False)
    judge(bad8, g)
    assert bad8.status == "FAIL" and len(bad8.reasons) == 3


NAN = float("nan")


@pytest.mark.parametrize("field,value,precision", [
    ("max_abs_logit_diff", NAN, "fp32"), ("flipped", None, "fp32"), ("acc_diff", NAN, "int8"),
    ("agreement", NAN, "int8"), ("acc_diff", None, "int8"), ("latency_ratio", NAN, "int8"),
    ("latency_ratio", None, "fp32"), ("accuracy", None, "fp32")])
def test_every_gate_fails_on_nan_or_missing(field, value, precision):
    """`nan > limit` is False: a gate written that way passes NaN. Ours fail it."""
    good = dict(accuracy=0.99, flipped=0, max_abs_logit_diff=0.0, acc_diff=0.0, agreement=1.0, latency_ratio=1.0)
    row = Row("x", "ORT CPU", precision, "f", **{**good, field: value})
    judge(row, Gates(max_latency_ratio=2.0))
    assert row.status == "FAIL", (field, value)
    clean = Row("x", "ORT CPU", precision, "f", **good)
    judge(clean, Gates(max_latency_ratio=2.0))
    assert clean.status == "ok"


def test_int8_row_without_int8_kernels_and_cuda_row_on_cpu_fail():
    good = dict(accuracy=0.99, flipped=0, max_abs_logit_diff=0.0, acc_diff=0.0, agreement=1.0)
    from toolkit.runtimes.candidate import Placement

    outside = Row("LiteRT int8", "LiteRT XNNPACK", "int8", "f",
                  placement=Placement("XNNPACK", "", not_delegated=("CONV_2D",)).to_json(), **good)
    judge(outside, Gates())
    assert outside.failed_gates == ["not_delegated"] and "CONV_2D" in outside.reasons[0]
    no_kernels = Row("ONNX int8", "ORT CPU", "int8", "f", placement=Placement("ORT CPU", "", int8_kernels=()).to_json(),
                     device="cpu", **good)
    judge(no_kernels, Gates())
    assert no_kernels.status == "FAIL" and "no int8 kernel" in no_kernels.reasons[0]
    on_cpu = Row("ONNX fp32", "ORT CUDA", "fp32", "f", placement=Placement("ORT CUDA", "", cpu_compute_ops=("Conv",)).to_json(),
                 device="cuda", **good)
    judge(on_cpu, Gates())
    assert on_cpu.status == "FAIL" and "compute nodes ran on the CPU: Conv" in on_cpu.reasons[0]


def test_runtime_and_verify_never_import_torch(exported, tiny_export):
    # allowed: click, numpy, onnxruntime and protobuf ("google": onnxruntime's own dependency, which
    # inspect uses to read and edit ONNX graphs without the onnx package)
    code = BLOCK_TORCH + textwrap.dedent(f"""
        import importlib.util
        importlib.util.find_spec = (lambda orig: lambda name, *a: None if name.split(".")[0] == "torch"
                                    else orig(name, *a))(importlib.util.find_spec)
        import toolkit.runtimes.ort_session
        from click.testing import CliRunner
        from toolkit.cli import main
        r = CliRunner().invoke(main, ["verify", "--dir", r"{exported}", "--data-dir", r"{tiny_export['data']}",
                                      "--int8-min-agreement", "0", "--int8-max-drop", "100", "--int8-max-clipped", "100",
                                      "--int8-min-ood-agreement", "0"])
        print(r.output)
        assert r.exit_code == 0, r.output
        assert "torch not installed" in r.output and "reference.npz" in r.output
        for verb in (["inspect", "--repeats", "2"], ["env"]):
            r = CliRunner().invoke(main, [*verb, *(["--dir", r"{exported}", "--data-dir", r"{tiny_export['data']}"]
                                                   if verb[0] == "inspect" else [])])
            assert r.exit_code == 0, r.output
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    """) + third_party_check({"click", "numpy", "onnxruntime", "google"}) + textwrap.dedent("""
        print("TORCH-FREE OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "TORCH-FREE OK" in r.stdout, r.stdout + r.stderr


def test_plot_and_markdown_outputs(exported, tiny_export):
    pytest.importorskip("matplotlib")
    r = verify(exported, tiny_export["data"], "--plot", exported / "p.png", "--markdown", exported / "m.md")
    assert r.exit_code == 0, r.output
    assert (exported / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (exported / "m.md").read_text()
    assert md.startswith("| row |") and "**PASS (all 4 artifacts checked)**" in md


def test_no_torch_flag_uses_reference_npz(exported, tiny_export):
    assert verify(exported, tiny_export["data"], "--no-torch").exit_code == 0
    report = json.loads((exported / "r.json").read_text())
    ref = report["rows"][0]
    assert ref["is_reference"] and ref["runtime"] == "reference.npz" and ref["latency_us"] is None
    assert all(r["status"] == "skipped" for r in report["rows"] if r["runtime"] == "TorchScript")


def test_cuda_row_that_falls_back_to_cpu_is_not_reported_as_cuda(exported, tiny_export, monkeypatch, in_process):
    """onnxruntime-gpu on a machine without a GPU silently runs on the CPU: that is no CUDA row."""
    import toolkit.runtimes.ort_session as rt
    import toolkit.verify as vf

    monkeypatch.setattr(vf, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(rt, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = rt.ort.InferenceSession
    monkeypatch.setattr(rt.ort, "InferenceSession",
                        lambda path, sess_options=None, providers=None, **kw: real(path, sess_options=sess_options,
                                                                                  providers=["CPUExecutionProvider"]))
    r = verify(exported, tiny_export["data"])
    assert r.exit_code == 0, r.output
    rows = json.loads((exported / "r.json").read_text())["rows"]
    cuda = [x for x in rows if x["runtime"] == "ORT CUDA"]
    assert cuda and all(x["status"] == "skipped" and "fell back to the CPU" in x["reasons"][0] for x in cuda)
    assert verify(exported, tiny_export["data"], "--require-cuda").exit_code == 1


def test_one_json_convention_and_a_report_that_fits(exported, tiny_export, tmp_path):
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--json", *LOOSE)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # bare --json: JSON alone on stdout, the table on stderr
    assert report["schema_version"] == 1 and "PASS" in r.stderr
    ids = [x["id"] for x in report["rows"]]
    assert len(set(ids)) == len(ids) and "onnx-int8@ort-cpu" in ids
    assert {x["status"] for x in report["rows"]} <= {"ok", "fail", "skipped"}
    assert all(isinstance(x["flipped_indices"], list) and len(x["flipped_indices"]) == x["flipped"]
               for x in report["rows"] if x["flipped"] is not None)
    assert json.loads(run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--json", "-", *LOOSE).stdout)
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], *LOOSE)
    assert max(len(line) for line in r.stdout.splitlines()) <= 120, r.stdout
    md = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--markdown", "-", *LOOSE)
    assert md.stdout.startswith("| row |") and "PASS" in md.stderr and not Path("-").exists()
    wide = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--wide", *LOOSE)
    assert "p99 µs" in wide.stdout and "p99 µs" not in r.stdout
    for verb in (["data", "--data-dir", tiny_export["data"]], ["env"],
                 ["predict", tiny_export["data"] / "none.npy", "--model", exported / "cnn_int8.onnx"]):
        out = run(*verb, "--json", tmp_path / "o.json")
        assert json.loads((tmp_path / "o.json").read_text())["schema_version"] == 1, verb
        assert not out.stdout.lstrip().startswith("{")


def test_doctored_run_without_int8_kernels_fails(exported, tiny_export, monkeypatch, in_process):
    """ORT at optimization level 'basic' runs the QDQ model in float: the int8 row must fail."""
    import toolkit.runtimes.onnxruntime as ortrows
    from toolkit.runtimes.ort_session import SessionOptions

    monkeypatch.setattr(ortrows, "SessionOptions", lambda **kw: SessionOptions(**{**kw, "optimization": "basic"}))
    r = verify(exported, tiny_export["data"], "--no-torch")
    assert r.exit_code == 1 and "FAIL: ONNX int8 on ORT CPU" in r.stdout
    assert "no int8 kernel ran" in r.stdout


def test_inspect_profiles_every_onnx_model_node_by_node(exported, tiny_export):
    r = run("inspect", "--dir", exported, "--data-dir", tiny_export["data"], "--repeats", 3, "--json", "-",
            "--throughput-batch", 32)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["schema_version"] == 2 and set(result["models"]) == {"fp32", "int8"}
    for _precision, m in result["models"].items():
        assert m["batch"] == 32 and m["nodes"] and all(n["us_per_image"] >= 0 for n in m["nodes"])
        assert abs(sum(n["share"] for n in m["nodes"]) - 1) < 1e-6
        assert abs(sum(n["us_per_image"] for n in m["nodes"]) - m["total_us_per_image"]) < 1e-9
    int8_ops = {n["op"] for n in result["models"]["int8"]["nodes"]}
    assert "QLinearConv" in int8_ops and not {"ReorderInput", "ReorderOutput"} & int8_ops
    assert "µs/img" in r.stderr  # the table, on stderr when JSON takes stdout
    (exported / "cnn_int8.onnx").write_bytes(b"tampered")
    r = run("inspect", "--dir", exported, "--data-dir", tiny_export["data"])
    assert r.exit_code == 1 and "changed since export" in r.stderr
