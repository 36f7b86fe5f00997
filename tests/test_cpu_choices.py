"""Correct on every CPU: a runtime's CPU-dependent choice is asked for, recorded, and judged the same way
whichever machine runs the test. The paths this machine's CPU cannot take (OpenVINO's bf16 default on an
AVX2-only CPU; ARM's features on x86) run through doubles that behave like them (tests/doubles.py)."""

import json

import numpy as np
import pytest
from doubles import bf16_cpu, to_bf16
from helpers import LOOSE_ALL, run

from toolkit.config import Gates
from toolkit.gates import Gate, evaluate, judged_precision
from toolkit.runtimes.candidate import Placement
from toolkit.verify import Row, measurement

G = Gates()


def verify_json(folder, data, *args):
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", "--json", "-", *LOOSE_ALL, *args)
    assert r.stdout.startswith("{"), r.output
    doc = json.loads(r.stdout)
    return r, doc, {x["id"]: x for x in doc["rows"]}


def test_the_double_rounds_to_bf16():
    x = np.array([1.0, 3.14159, -2.71828, 1e-3], np.float32)
    y = to_bf16(x)
    assert y[0] == 1.0 and y[1] == np.float32(3.140625) and y[2] == np.float32(-2.71875)
    assert np.all(np.abs(y - x) <= np.abs(x) * 2 ** -8)  # bf16 keeps 8 significant bits


def test_export_checks_parity_at_exact_fp32_where_the_default_is_bf16(tiny_export, tmp_path, monkeypatch):
    """On a bf16-default CPU, export's parity asks OpenVINO for f32 and passes; the manifest says what
    was asked for and what ran. Were parity run at the default, the bf16 logits would fail it."""
    bf16_cpu(monkeypatch)
    out = tmp_path / "out"
    r = run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", out, "--quantize", "--calibration-size",
            100, "--data-dir", tiny_export["data"], "--targets", "onnx,openvino")
    assert r.exit_code == 0, r.output
    parity = {c["artifact"]: c for c in json.loads((out / "manifest.json").read_text())["fp32_parity"]}
    ir = parity["cnn_fp32.xml"]
    assert ir["arithmetic"] == "exact" and ir["ran_precision"] == "f32" and ir["runtime"] == "OpenVINO CPU"
    assert ir["precision_settings"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert ir["flipped"] == 0 and ir["max_abs_logit_diff"] <= G.fp32_max_abs_logit_diff
    assert parity["cnn_fp32.onnx"]["arithmetic"] == "exact" and parity["cnn_fp32.onnx"]["runtime"] == "ORT CPU"


def test_a_runtime_that_ignores_the_request_for_f32_is_never_called_exact(tiny_export, tmp_path, monkeypatch):
    """If OpenVINO computed in bf16 although f32 was asked for (here: the request lost), export refuses
    to call its parity checked, in one line, and writes nothing."""
    from toolkit.runtimes import openvino

    bf16_cpu(monkeypatch)
    monkeypatch.setattr(openvino, "EXACT_SETTINGS", {})
    out = tmp_path / "out"
    r = run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", out, "--quantize", "--calibration-size",
            100, "--data-dir", tiny_export["data"], "--targets", "onnx,openvino")
    assert r.exit_code == 1
    assert "cnn_fp32.xml: asked OpenVINO for exact f32 arithmetic, but it computes in bf16" in r.output, r.output
    assert not (out / "manifest.json").exists()


def test_verify_shows_the_exact_and_the_default_row_on_a_bf16_cpu(supplier, tiny_export, monkeypatch, in_process,
                                                                  openvino_rows):
    bf16_cpu(monkeypatch)
    r, doc, rows = verify_json(supplier, tiny_export["data"])
    assert r.exit_code == 0, r.output
    exact, default = rows["onnx-fp32@openvino"], rows["onnx-fp32@openvino-bf16"]
    assert exact["arithmetic"] == "exact" and exact["ran_precision"] == "f32" and exact["status"] == "ok"
    assert exact["precision_settings"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert exact["max_abs_logit_diff"] <= G.fp32_max_abs_logit_diff
    assert default["arithmetic"] == "default" and default["ran_precision"] == "bf16" and default["status"] == "ok"
    assert default["runtime"] == "OpenVINO CPU bf16" and default["precision_settings"] == {}
    assert default["max_abs_logit_diff"] > G.fp32_max_abs_logit_diff  # bf16 moved the logits: not fp32-exact
    # an int8 file has one row, at OpenVINO's default; the default row is timed and can be the fastest
    assert "onnx-int8@openvino-bf16" not in rows and rows["onnx-int8@openvino"]["arithmetic"] == "default"
    assert default["latency_us"] and default["throughput"]
    assert doc["fastest"]["batch1"] in rows
    # with the fp32 gate at 0, the exact row fails it; the default row is judged by the reduced gates only
    r, _, rows = verify_json(supplier, tiny_export["data"], "--fp32-atol", "0")
    assert "fp32_logits" in rows["onnx-fp32@ort-cpu"]["failed_gates"]
    assert not {"fp32_logits", "fp32_flips"} & set(rows["onnx-fp32@openvino-bf16"]["failed_gates"])
    # the JSON and the text report name both rows
    text = run("verify", "--dir", supplier, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE_ALL).stdout
    assert "OpenVINO CPU bf16" in text and "computed in bf16 (OpenVINO's default for this CPU)" in text
    assert "computed in f32 (exact f32 asked for)" in text


def test_on_a_cpu_whose_default_is_f32_there_is_one_row(supplier, tiny_export, monkeypatch, in_process, openvino_rows):
    from toolkit.runtimes import openvino

    monkeypatch.setattr(openvino, "default_precision", lambda: "f32")
    r, _, rows = verify_json(supplier, tiny_export["data"])
    assert r.exit_code == 0, r.output
    assert not [rid for rid in rows if "@openvino-" in rid]
    assert rows["onnx-fp32@openvino"]["ran_precision"] == "f32" and rows["onnx-fp32@openvino"]["flipped"] == 0


def test_the_real_openvino_on_this_cpu_gives_the_exact_row_and_says_its_default(supplier, tiny_export, openvino_rows):
    """No double: whatever this CPU is, the exact row is f32 and passes fp32's gates, and a default row
    exists exactly when OpenVINO's default here is not f32."""
    from toolkit.runtimes.openvino import reduced_default

    r, _, rows = verify_json(supplier, tiny_export["data"])
    assert r.exit_code == 0, r.output
    exact = rows["onnx-fp32@openvino"]
    assert exact["ran_precision"] == "f32" and exact["flipped"] == 0
    assert exact["max_abs_logit_diff"] <= G.fp32_max_abs_logit_diff
    reduced = reduced_default()
    assert [rid for rid in rows if "@openvino-" in rid] == ([f"onnx-fp32@openvino-{reduced}"] if reduced else [])


def test_a_row_is_judged_at_reduced_precision_only_where_it_asked_for_the_default():
    kw = dict(accuracy=0.9, flipped=3, max_abs_logit_diff=0.05, acc_diff=0.0, agreement=0.999,
              placement=Placement("OpenVINO CPU", "", int8_kernels=()).to_json())
    default = Row("ONNX fp32", "OpenVINO CPU bf16", "fp32", "cnn_fp32.onnx", ran_precision="bf16",
                  arithmetic="default", **kw)
    assert measurement(default).precision == "bf16" and evaluate(measurement(default), G) == []
    exact = Row("ONNX fp32", "OpenVINO CPU", "fp32", "cnn_fp32.onnx", ran_precision="bf16", arithmetic="exact", **kw)
    assert [r.gate for r in evaluate(measurement(exact), G)] == [Gate.FP32_FLIPS, Gate.FP32_LOGITS]
    # each condition on its own: an fp32 file, a default row, a reduced precision that ran
    cases = {("fp32", "default", "bf16"): "bf16", ("fp32", "default", "f16"): "f16",
             ("int8", "default", "bf16"): "int8", ("int8", "exact", "bf16"): "int8",
             ("fp32", "exact", "bf16"): "fp32", ("fp32", "exact", "f32"): "fp32",
             ("fp32", "default", "f32"): "fp32", ("fp32", "default", "fp32"): "fp32", ("fp32", "default", None): "fp32"}
    for args, judged in cases.items():
        assert judged_precision(*args) == judged, args


def test_compare_loosens_to_bf16_only_for_a_default_row_on_both_sides():
    from toolkit.compare import _judged_precision

    bf16 = {"precision": "fp32", "arithmetic": "default", "ran_precision": "bf16"}
    exact = {"precision": "fp32", "arithmetic": "exact", "ran_precision": "f32"}
    assert _judged_precision("onnx-fp32@openvino-bf16", bf16, bf16) == "bf16"
    assert _judged_precision("onnx-fp32@openvino-bf16", bf16, exact) == "fp32"
    # an outputs file that calls an exact row's id "default bf16" does not loosen its gates
    assert _judged_precision("onnx-fp32@openvino", bf16, bf16) == "fp32"


X86_BF16 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16\n"
ARM = ("processor\t: 0\nBogoMIPS\t: 243.75\n"
       "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp sve i8mm bf16 sve2\n")


@pytest.mark.parametrize("text, has, lacks", [
    (X86_BF16, {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}, {"amx_tile", "avx512_fp16", "sve"}),
    (ARM, {"asimddp", "i8mm", "bf16", "sve", "sve2"}, {"avx2", "sme", "avx512_bf16"}),
])
def test_the_machine_record_names_every_flag_that_changes_a_runtimes_choice(tmp_path, text, has, lacks):
    from toolkit.machine import CPU_FLAGS, cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text(text)
    cpu = cpu_flags(info)
    assert {f for f in CPU_FLAGS if cpu[f]} == has and not any(cpu[f] for f in lacks)
    assert cpu["flags"] == [f for f in CPU_FLAGS if f in has]


def test_env_names_every_runtime_and_converter_and_this_cpus_flags():
    from toolkit.machine import cpu_flags

    r = run("env", "--json")
    assert r.exit_code == 0, r.output
    env = json.loads(r.stdout)
    for key in ("openvino", "nncf", "executorch", "ai_edge_litert", "litert_torch", "ai_edge_quantizer", "onnxscript"):
        assert env[key], key  # make test installs every extra
    assert env["cpu"]["flags"] == cpu_flags()["flags"] and "avx512_bf16" in env["cpu"]
    assert env["default_precision"]["OpenVINO CPU"] in ("f32", "bf16", "f16")
    text = run("env").stdout
    assert "openvino" in text and "OpenVINO CPU fp32 default" in text


def test_every_manifest_input_entry_is_what_the_written_file_takes(all_targets):
    """Each artifact of every target loaded back on its runtime: its declared input dtype is the
    manifest's (an int8 .pte takes float32; an int8 .onnx under the default --uint8-input, uint8)."""
    from toolkit.runtimes import RUNTIMES, build

    manifest = json.loads((all_targets / "manifest.json").read_text())
    seen = {}
    for a in manifest["artifacts"]:
        spec = next(s for s in RUNTIMES if a["format"] in s.formats and s.device in (None, "cpu"))
        cand = build(spec, all_targets, a, 1)
        seen[a["file"]] = cand.input_dtype()
        assert a["inputs"][0]["dtype"] == seen[a["file"]], a["file"]
    assert seen["cnn_int8.pte"] == "float32" and seen["cnn_int8.onnx"] == "uint8"
    assert seen["cnn_int8.tflite"] in ("int8", "float32") and seen["cnn_fp32.xml"] == "float32"


def test_export_refuses_a_manifest_input_entry_the_file_does_not_take():
    from toolkit.errors import ExportError
    from toolkit.export import _check_io

    _check_io({"file": "m.pte", "inputs": [{"dtype": "float32"}]}, "float32", 10)
    with pytest.raises(ExportError, match="m.pte: the manifest would say it takes uint8, but its runtime reads an "
                                          "input of float32"):
        _check_io({"file": "m.pte", "inputs": [{"dtype": "uint8"}]}, "float32", 10)
    # the output's width is the model's class count: a converter's constant [1, 10] on a 3-class model is refused
    io = {"file": "m.tflite", "inputs": [{"dtype": "float32"}], "outputs": [{"shape": [1, 10]}]}
    with pytest.raises(ExportError, match="m.tflite: its output is 10 wide, the model has 3 classes"):
        _check_io(io, "float32", 3)
    _check_io(dict(io, outputs=[{"shape": [1, 3]}]), "float32", 3)
    _check_io(dict(io, outputs=[{"shape": ["batch", 3]}]), "float32", 3)
