"""OpenVINO as a verified runtime: the .onnx files' rows on OpenVINO's CPU plugin (mnisttk[openvino],
installed by `make test`), the precision it chose judged by the right gates, its int8 layers gated like
ONNX Runtime's kernels, and an ONNX file that points outside its folder refused before OpenVINO reads it."""

import json
import shutil

import numpy as np
import pytest
from helpers import LOOSE_ALL, rehash, run, up

from toolkit.config import Gates
from toolkit.gates import Gate, Measurement, evaluate
from toolkit.onnx_proto import external_tensors
from toolkit.verify import Row, measurement

G = Gates()


@pytest.fixture(autouse=True)
def _with_openvino_rows(openvino_rows):
    """Every test here is about OpenVINO's rows."""


def verify_rows(folder, data, *args):
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", "--json", "-", *LOOSE_ALL, *args)
    assert r.stdout.startswith("{"), r.output
    return r, {x["id"]: x for x in json.loads(r.stdout)["rows"]}


def test_the_onnx_files_are_verified_on_openvino(supplier, tiny_export):
    r, rows = verify_rows(supplier, tiny_export["data"])
    assert r.exit_code == 0, r.output
    fp32, int8 = rows["onnx-fp32@openvino"], rows["onnx-int8@openvino"]
    assert fp32["status"] == int8["status"] == "ok" and fp32["runtime"] == "OpenVINO CPU"
    assert fp32["ran_precision"] == "f32" and fp32["arithmetic"] == "exact" and fp32["flipped"] == 0
    assert fp32["loaded_sha256"] == next(a["sha256"] for a in json.loads((supplier / "manifest.json").read_text())[
        "artifacts"] if a["file"] == "cnn_fp32.onnx")
    assert int8["placement"]["int8_kernels"], "OpenVINO ran the QDQ model's layers in int8"
    assert fp32["placement"]["int8_kernels"] == []
    assert int8["saturation"] is not None  # the QDQ file's output range, read from its bytes
    assert fp32["consistency_batches"] == [1, 2, 7, 64, 1000] and int8["batch_consistent"] is True
    assert len(int8["latency_rounds_us"]) == 1 and int8["throughput"] > 0
    text = run("verify", "--dir", supplier, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE_ALL)
    assert "ONNX int8 on OpenVINO CPU: computed in" in text.stdout and "int8 layers: " in text.stdout


def test_a_precision_openvino_chose_is_judged_by_the_reduced_precision_gates():
    """An fp32 file OpenVINO ran in bf16 (AMX, AVX-512 BF16 CPUs): not held to fp32's identical logits,
    but to int8's accuracy drop and agreement, at and one step past their limits; the int8-only gates
    (kernels, delegation, saturation) are not asked of it."""
    at = dict(accuracy_drop_points=G.int8_max_drop_points, agreement_pct=G.int8_min_agreement_pct)
    bf16 = Measurement("bf16", flipped=7, max_abs_logit_diff=0.3, int8_kernels=[], clipped_top_pct=100.0, **at)
    assert evaluate(bf16, G) == []
    past = Measurement("bf16", flipped=7, max_abs_logit_diff=0.3,
                       accuracy_drop_points=up(G.int8_max_drop_points), agreement_pct=100.0)
    assert [r.gate for r in evaluate(past, G)] == [Gate.INT8_DROP]
    # the row -> measurement mapping: a default row in bf16 is reduced, f32 (or no choice) keeps the fp32 gates
    row = Row("ONNX fp32", "OpenVINO CPU bf16", "fp32", "cnn_fp32.onnx", accuracy=0.9, flipped=7, max_abs_logit_diff=0.3,
              acc_diff=0.0, agreement=0.999, placement={"backend": "OpenVINO CPU", "int8_kernels": []},
              ran_precision="bf16", arithmetic="default")
    assert measurement(row).precision == "bf16" and evaluate(measurement(row), G) == []
    row.ran_precision = "f32"
    assert [r.gate for r in evaluate(measurement(row), G)] == [Gate.FP32_FLIPS, Gate.FP32_LOGITS]


def test_an_int8_file_openvino_ran_in_float_fails_its_row(supplier, tiny_export, monkeypatch, in_process):
    from toolkit.runtimes import openvino

    monkeypatch.setattr(openvino, "int8_layers", lambda compiled: [])
    r, rows = verify_rows(supplier, tiny_export["data"])
    assert r.exit_code == 1
    assert rows["onnx-int8@openvino"]["failed_gates"] == ["no_int8_kernels"]
    assert rows["onnx-int8@ort-cpu"]["status"] == "ok" and rows["onnx-fp32@openvino"]["status"] == "ok"


def _external_model(where: str):
    """A one-Add ONNX model whose constant is kept in an external file, the tensor placed `where`."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones(1, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../outside.bin")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    if where == "initializer":
        return helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w]))
    const = helper.make_node("Constant", [], ["c"], value=w)
    if where == "attribute":
        return helper.make_model(helper.make_graph([const, helper.make_node("Add", ["x", "c"], ["y"])], "g", [x], [y]))
    if where == "subgraph":  # the constant two graphs deep: If → then-branch → If → else-branch
        inner = helper.make_graph([const], "inner", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
        plain = helper.make_graph([helper.make_node("Identity", ["x"], ["c"])], "plain", [],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
        mid = helper.make_graph([helper.make_node("If", ["cond"], ["c"], then_branch=plain, else_branch=inner)], "mid",
                                [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
        cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
        return helper.make_model(helper.make_graph(
            [helper.make_node("If", ["cond"], ["y"], then_branch=mid, else_branch=plain)], "g", [cond, x], [y]))
    if where == "sparse":
        idx = numpy_helper.from_array(np.zeros(1, np.int64), "i")
        sparse = helper.make_sparse_tensor(w, idx, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
        graph.sparse_initializer.append(sparse)
        return helper.make_model(graph)
    if where == "function":
        f = helper.make_function("local", "f", ["a"], ["b"], [const, helper.make_node("Add", ["a", "c"], ["b"])],
                                 [helper.make_opsetid("", 17)])
        return helper.make_model(helper.make_graph([helper.make_node("f", ["x"], ["y"], domain="local")], "g", [x], [y]),
                                 functions=[f], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    raise ValueError(where)


@pytest.mark.parametrize("where", ["initializer", "attribute", "subgraph", "sparse", "function"])
def test_a_tensor_kept_outside_the_file_is_found_wherever_it_is(where):
    assert external_tensors(_external_model(where).SerializeToString()) == ["w"]


def test_a_model_with_everything_inside_and_a_corrupt_one():
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones(1, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", 1, [1])], [helper.make_tensor_value_info("y", 1, [1])], [w])
    assert external_tensors(helper.make_model(graph).SerializeToString()) == []
    with pytest.raises(ValueError, match="not a parsable ONNX model"):
        external_tensors(b"\x08\x07\x3a\xff\xff\xff\xff\x0f")


def test_an_onnx_file_pointing_outside_its_folder_is_refused_before_openvino_reads_it(supplier, tiny_export, tmp_path):
    """OpenVINO, given a model's bytes, reads an external-data file from its working directory and
    follows ../ and absolute paths. A supplier's .onnx naming ../outside.bin fails its OpenVINO row
    with that reason, and the file outside is never opened (a FIFO there would block the read)."""
    import os

    model = _external_model("initializer")
    (supplier / "cnn_fp32.onnx").write_bytes(model.SerializeToString())
    rehash(supplier, "cnn_fp32.onnx")
    os.mkfifo(supplier.parent / "outside.bin")  # opening it for reading would hang the row until its timeout
    r, rows = verify_rows(supplier, tiny_export["data"], "--row-timeout", "60")
    assert r.exit_code == 1
    row = rows["onnx-fp32@openvino"]
    assert row["status"] == "fail" and "external-data file (w)" in row["reasons"][0], row["reasons"]
    assert rows["onnx-int8@openvino"]["status"] == "ok"
    shutil.rmtree(supplier)


def test_skip_runtime_leaves_that_runtimes_rows_out_and_says_so(supplier, tiny_export, monkeypatch):
    r, rows = verify_rows(supplier, tiny_export["data"], "--skip-runtime", "openvino")
    assert r.exit_code == 0
    for rid in ("onnx-fp32@openvino", "onnx-int8@openvino"):
        assert rows[rid]["status"] == "skipped" and rows[rid]["reasons"] == ["not asked for (--skip-runtime)"]
    monkeypatch.setenv("MNISTTK_SKIP_RUNTIME", "openvino litert")  # the same from the environment
    _, rows = verify_rows(supplier, tiny_export["data"])
    assert rows["onnx-int8@openvino"]["status"] == "skipped" and rows["onnx-int8@ort-cpu"]["status"] == "ok"
    assert rows["onnx-int8@ort-cpu"]["status"] == "ok"  # the same file is still checked on ONNX Runtime
    bad = run("verify", "--dir", supplier, "--skip-runtime", "no-such-runtime")
    assert bad.exit_code == 2 and "no-such-runtime" in bad.output


def test_the_openvino_ir_target_is_written_and_verified(all_targets, tiny_export):
    """fp32: the ONNX model converted (fp32 weights); int8: NNCF's own quantization of it, every layer in
    int8 on OpenVINO; the .bin a hashed support file named by its artifact."""
    manifest = json.loads((all_targets / "manifest.json").read_text())
    ir = {a["precision"]: a for a in manifest["artifacts"] if a["format"] == "openvino"}
    support = {f["file"]: f for f in manifest["support_files"]}
    for p in ("fp32", "int8"):
        assert ir[p]["file"] == f"cnn_{p}.xml" and support[ir[p]["weights"]["file"]]["sha256"] == ir[p]["weights"]["sha256"]
        assert ir[p]["inputs"][0]["dtype"] == "float32"
    assert "NNCF" in ir["int8"]["calibration_method"] and "MINMAX" in ir["int8"]["calibration_method"]
    assert ir["int8"]["int8_layers"] and support["cnn_int8.bin"]["size_bytes"] < support["cnn_fp32.bin"]["size_bytes"] / 2
    r, rows = verify_rows(all_targets, tiny_export["data"])
    assert r.exit_code == 0, r.output
    fp32, int8 = rows["openvino-fp32@openvino"], rows["openvino-int8@openvino"]
    assert fp32["status"] == int8["status"] == "ok" and fp32["flipped"] == 0
    assert int8["placement"]["int8_kernels"] and int8["batch_consistent"] is True
    assert fp32["size_bytes"] == ir["fp32"]["size_bytes"] + support["cnn_fp32.bin"]["size_bytes"]  # .xml + .bin


def test_a_changed_ir_weights_file_or_a_weights_entry_out_of_step_is_caught(all_targets, tiny_export, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(all_targets, out)
    weights = out / "cnn_int8.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    r, rows = verify_rows(out, tiny_export["data"])
    assert r.exit_code == 1
    assert "support file cnn_int8.bin" in rows["openvino-int8@openvino"]["reasons"][0]
    assert rows["openvino-fp32@openvino"]["status"] == "ok"
    # the support list re-hashed to the new bytes, the artifact's own weights entry not: refused whole
    manifest = json.loads((out / "manifest.json").read_text())
    next(f for f in manifest["support_files"] if f["file"] == "cnn_int8.bin")["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = run("verify", "--dir", out, "--data-dir", tiny_export["data"], "--no-torch")
    assert r.exit_code == 1 and "weights is not a listed support file with that SHA-256" in r.output
    # an IR entry without weights, and a weights entry on another format
    for edit in (lambda m: next(a for a in m["artifacts"] if a["file"] == "cnn_fp32.xml").pop("weights"),
                 lambda m: next(a for a in m["artifacts"] if a["file"] == "cnn_fp32.onnx").update(
                     weights={"file": "cnn_fp32.bin", "sha256": "0" * 64})):
        shutil.copy(all_targets / "manifest.json", out / "manifest.json")
        manifest = json.loads((out / "manifest.json").read_text())
        edit(manifest)
        (out / "manifest.json").write_text(json.dumps(manifest))
        r = run("verify", "--dir", out, "--data-dir", tiny_export["data"], "--no-torch")
        assert r.exit_code == 1 and "weights" in r.output and "Traceback" not in r.output, r.output


def test_an_ir_whose_xml_is_something_else_is_refused_by_its_bytes(all_targets, tiny_export, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(all_targets, out)
    shutil.copy(out / "cnn_fp32.onnx", out / "cnn_fp32.xml")
    rehash(out, "cnn_fp32.xml")
    r, rows = verify_rows(out, tiny_export["data"])
    assert r.exit_code == 1
    assert "listed as openvino, but its bytes are an ONNX model" in rows["openvino-fp32@openvino"]["reasons"][0]


def test_an_int8_ir_openvino_would_run_in_float_fails_the_export(tiny_export, tmp_path, monkeypatch):
    from toolkit.runtimes import openvino

    out = tmp_path / "out"
    args = ["export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", out, "--quantize", "--calibration-size",
            100, "--data-dir", tiny_export["data"], "--targets", "onnx,openvino"]
    monkeypatch.setattr(openvino, "int8_layers", lambda compiled: [])
    r = run(*args)
    assert r.exit_code == 1 and "cnn_int8.xml: OpenVINO's CPU plugin runs none of its layers in int8" in r.output
    assert not out.exists() or not any(out.iterdir())  # nothing published
    monkeypatch.undo()
    assert run(*args).exit_code == 0 and (out / "cnn_int8.bin").is_file()


def test_no_runtime_telemetry_writes_in_home(tiny_export, tmp_path):
    """Imported plainly, openvino writes ~/intel/openvino_ga_cid and ~/intel/stats and sends a usage
    event (NNCF and OpenVINO's converter too), and onnxruntime keeps a device id and an event cache in
    ~/.cache/Microsoft/DeveloperTools. mnisttk leaves OpenVINO's telemetry out and opts out of ONNX
    Runtime's: an export to ONNX and the IR and a verify of them leave a fresh HOME empty."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("CI", None)  # OpenVINO's own opt-out for CI jobs must not be what keeps it quiet here
    env.pop("ORT_DISABLE_TELEMETRY", None)  # set in this process by importing toolkit: the child must set it
    out = tmp_path / "out"
    for args in (["export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", out, "--quantize",
                  "--calibration-size", "100", "--targets", "onnx,openvino"],
                 ["verify", "--dir", out, "--no-torch", *LOOSE_ALL]):
        r = subprocess.run([sys.executable, "-m", "toolkit", *map(str, args), "--data-dir", str(tiny_export["data"])],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    assert not (home / "intel").exists() and list(home.iterdir()) == []
