"""One set of gates (toolkit.gates.evaluate), tested exactly at and one step past every limit, and
tests that catch a gate broken where it is wired in: verify, export's parity, --search, the batch
consistency checks, the hash of the loaded bytes, the reference's test set, publish's folder rollback."""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import LOOSE, LOOSE_ALL, down, run, up

from toolkit.config import ExportConfig, Gates
from toolkit.errors import ExportError, ManifestError
from toolkit.gates import Gate, Measurement, evaluate, judged_precision, latency_ratio
from toolkit.targets import BY_NAME, FORMATS, KNOWN_TARGETS, TARGETS

G = Gates()


def gates_of(m, gates=G):
    return [r.gate for r in evaluate(m, gates)]


def test_fp32_gates_at_and_past_their_limits():
    at = Measurement("fp32", flipped=0, max_abs_logit_diff=G.fp32_max_abs_logit_diff)
    assert gates_of(at) == []
    assert gates_of(Measurement("fp32", flipped=1, max_abs_logit_diff=0.0)) == [Gate.FP32_FLIPS]
    assert gates_of(Measurement("fp32", flipped=0, max_abs_logit_diff=up(G.fp32_max_abs_logit_diff))) == [Gate.FP32_LOGITS]
    assert gates_of(Measurement("fp32", flipped=0, max_abs_logit_diff=float("nan"))) == [Gate.FP32_LOGITS]
    assert gates_of(Measurement("fp32")) == [Gate.FP32_FLIPS, Gate.FP32_LOGITS]  # missing values fail


def test_int8_gates_at_and_past_their_limits():
    at = Measurement("int8", accuracy_drop_points=G.int8_max_drop_points, agreement_pct=G.int8_min_agreement_pct)
    assert gates_of(at) == []
    past_drop = Measurement("int8", accuracy_drop_points=up(G.int8_max_drop_points), agreement_pct=100.0)
    assert gates_of(past_drop) == [Gate.INT8_DROP]
    past_agree = Measurement("int8", accuracy_drop_points=0.0, agreement_pct=down(G.int8_min_agreement_pct))
    assert gates_of(past_agree) == [Gate.INT8_AGREEMENT]
    assert gates_of(Measurement("int8", accuracy_drop_points=float("nan"), agreement_pct=float("nan"))) == [
        Gate.INT8_DROP, Gate.INT8_AGREEMENT]


def test_not_a_digit_agreement_gate_at_and_past_its_limit():
    ok = dict(accuracy_drop_points=0.0, agreement_pct=100.0)
    limit = G.int8_min_ood_agreement_pct
    assert gates_of(Measurement("int8", ood_agreement_pct=limit, **ok)) == []
    assert gates_of(Measurement("int8", ood_agreement_pct=down(limit), **ok)) == [Gate.OOD_AGREEMENT]
    assert gates_of(Measurement("int8", ood_agreement_pct=float("nan"), **ok)) == [Gate.OOD_AGREEMENT]
    assert gates_of(Measurement("int8", ood_agreement_pct=None, **ok)) == []  # an export without a rule
    assert gates_of(Measurement("fp32", flipped=0, max_abs_logit_diff=0.0, ood_agreement_pct=0.0)) == []


def test_each_reason_carries_the_measured_value_and_the_limit_it_missed():
    """The evidence beside a FAIL: what was measured and the limit, per gate (mutation testing found
    these unpinned: a reason could have carried nothing and every pass/fail stayed right)."""
    g = Gates(max_latency_ratio=1.5)
    reasons = {r.gate: r for r in evaluate(Measurement("fp32", flipped=3, max_abs_logit_diff=0.5, latency_ratio=2.0,
                                                       cpu_compute_ops=["Conv"]), g)}
    assert (reasons[Gate.FP32_FLIPS].value, reasons[Gate.FP32_FLIPS].limit) == (3, 0)
    assert (reasons[Gate.FP32_LOGITS].value, reasons[Gate.FP32_LOGITS].limit) == (0.5, g.fp32_max_abs_logit_diff)
    assert (reasons[Gate.LATENCY].value, reasons[Gate.LATENCY].limit) == (2.0, 1.5)
    assert reasons[Gate.CPU_COMPUTE].value == ["Conv"]
    reasons = {r.gate: r for r in evaluate(Measurement("int8", accuracy_drop_points=1.0, agreement_pct=90.0,
                                                       not_delegated=["FULLY_CONNECTED"], clipped_top_pct=5.0,
                                                       ood_agreement_pct=50.0), g)}
    assert (reasons[Gate.INT8_DROP].value, reasons[Gate.INT8_DROP].limit) == (1.0, g.int8_max_drop_points)
    assert (reasons[Gate.INT8_AGREEMENT].value, reasons[Gate.INT8_AGREEMENT].limit) == (90.0, g.int8_min_agreement_pct)
    assert reasons[Gate.NOT_DELEGATED].value == ["FULLY_CONNECTED"]
    assert (reasons[Gate.SATURATION].value, reasons[Gate.SATURATION].limit) == (5.0, g.int8_max_clipped_top_pct)
    assert (reasons[Gate.OOD_AGREEMENT].value, reasons[Gate.OOD_AGREEMENT].limit) == (50.0, g.int8_min_ood_agreement_pct)
    assert "50.00% < 99%" in reasons[Gate.OOD_AGREEMENT].text() and "FULLY_CONNECTED" in reasons[Gate.NOT_DELEGATED].text()


def test_placement_and_consistency_gates():
    ok = dict(accuracy_drop_points=0.0, agreement_pct=100.0)
    assert gates_of(Measurement("int8", int8_kernels=["QLinearConv"], **ok)) == []
    assert gates_of(Measurement("int8", int8_kernels=[], **ok)) == [Gate.NO_INT8_KERNELS]
    assert gates_of(Measurement("int8", int8_kernels=None, **ok)) == []  # not an ONNX Runtime CPU row
    assert gates_of(Measurement("int8", not_delegated=["CONV_2D"], **ok)) == [Gate.NOT_DELEGATED]
    assert gates_of(Measurement("int8", batch_consistent=False, **ok)) == [Gate.BATCH_CONSISTENCY]
    assert gates_of(Measurement("int8", batch_consistent=None, **ok)) == []  # not checked is not a failure
    assert gates_of(Measurement("fp32", flipped=0, max_abs_logit_diff=0.0, cpu_compute_ops=["Conv"])) == [Gate.CPU_COMPUTE]
    assert gates_of(Measurement("fp32", measured=False)) == [Gate.NOT_MEASURED]


def test_latency_gate_at_and_past_its_limit_and_the_ratio_is_row_over_reference():
    gates = Gates(max_latency_ratio=1.5)
    fp = dict(flipped=0, max_abs_logit_diff=0.0)
    assert gates_of(Measurement("fp32", latency_ratio=1.5, **fp), gates) == []
    assert gates_of(Measurement("fp32", latency_ratio=up(1.5), **fp), gates) == [Gate.LATENCY]
    assert gates_of(Measurement("fp32", latency_ratio=None, **fp), gates) == [Gate.LATENCY]
    assert latency_ratio(30.0, 20.0) == 1.5  # slower than the reference: above 1
    assert latency_ratio(30.0, None) is None and latency_ratio(None, 20.0) is None


def test_reasons_are_typed_and_worded_only_when_shown():
    (reason,) = evaluate(Measurement("int8", accuracy_drop_points=0.5, agreement_pct=100.0), G)
    assert reason.gate is Gate.INT8_DROP and reason.value == 0.5 and reason.limit == G.int8_max_drop_points
    assert reason.text() == "accuracy drop 0.50 points > 0.30"


def test_one_target_registry_feeds_every_list():
    from toolkit.cli import export, verify
    from toolkit.formats import KIND_OF_FORMAT
    from toolkit.manifest import SUBPATH_FORMATS
    from toolkit.runtimes import RUNTIMES

    assert tuple(t.name for t in TARGETS) == FORMATS and len(KNOWN_TARGETS) == 2 * len(TARGETS)
    assert set(KIND_OF_FORMAT) == set(FORMATS) and SUBPATH_FORMATS == ("triton",)
    expect = next(p for p in verify.params if p.name == "expect")
    assert tuple(expect.type.choices) == KNOWN_TARGETS
    help_text = next(p for p in export.params if p.name == "targets").help
    assert all(t.name in help_text for t in TARGETS)
    for t in TARGETS:  # every target has a runtime that runs it, and an exporter (or is export's own)
        assert any(t.name in spec.formats for spec in RUNTIMES), t.name
        module, function = t.exporter  # its exporter module defines the function the record names
        source = (Path(__file__).resolve().parent.parent / "toolkit" / "exporters" / f"{module}.py").read_text()
        assert f"def {function}(" in source, t.exporter
    with pytest.raises(ExportError, match="unknown target 'foo'"):
        ExportConfig(formats=("foo",))
    assert BY_NAME["tflite"].extra == "tflite"


# ---------------------------------------------------------------- wired in: verify, export


def verify_json(folder, data, *args):
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", "--json", "-", "--rounds", "1", *args)
    return r, {x["id"]: x for x in json.loads(r.stdout)["rows"]} if r.stdout.startswith("{") else {}


def _judged_fp32(r: dict) -> bool:
    """A row the fp32 gates judge: an fp32 file run exact (a default row in bf16 takes the reduced gates)."""
    return r["precision"] == "fp32" and judged_precision(r["precision"], r["arithmetic"], r["ran_precision"]) == "fp32"


@pytest.mark.parametrize("cpu", ["this", "bf16-default"])
def test_verify_gates_hold_exactly_at_the_measured_values_and_fail_one_step_past(supplier, tiny_export, openvino_rows,
                                                                                 cpu, monkeypatch, request):
    if cpu == "bf16-default":  # the same limits on a CPU whose OpenVINO default is bf16 (a double here)
        from doubles import bf16_cpu

        request.getfixturevalue("in_process")
        bf16_cpu(monkeypatch)
    data = tiny_export["data"]
    _, rows = verify_json(supplier, data, *LOOSE_ALL)  # every runtime: the exact limits must hold on each row
    rows = {k: r for k, r in rows.items() if r["status"] != "skipped" and not r["is_reference"]}
    assert cpu == "this" or rows["onnx-fp32@openvino-bf16"]["arithmetic"] == "default"
    fp32 = max(r["max_abs_logit_diff"] for r in rows.values() if _judged_fp32(r))
    reduced = [r for r in rows.values() if not _judged_fp32(r)]  # int8 files, and fp32 files' default rows
    agree = min(r["agreement"] * 100 for r in reduced)
    drop = max(-r["acc_diff"] * 100 for r in reduced)
    ood = min(r["ood"]["agreement_pct"] for r in reduced)
    exact = ["--fp32-atol", repr(fp32), "--int8-min-agreement", repr(agree), "--int8-max-drop", repr(max(drop, 0.0)),
             "--int8-max-clipped", "100", "--int8-min-ood-agreement", repr(ood)]
    r, _ = verify_json(supplier, data, *exact)
    assert r.exit_code == 0, r.stderr
    # one step past each limit fails that gate (and only on the rows it concerns); a limit measured at
    # 100% has no step past it: the option itself refuses one (a usage error, exit 2, nothing run)
    if ood < 100:
        r, got = verify_json(supplier, data, *exact[:-1], repr(up(ood)))
        assert r.exit_code == 1 and any("ood_agreement" in x["failed_gates"] for x in got.values())
        assert not any("ood_agreement" in x["failed_gates"] for x in got.values() if _judged_fp32(x))
    else:
        assert verify_json(supplier, data, *exact[:-1], repr(up(100.0)))[0].exit_code == 2
    # fp32 files on XNNPACK, OpenVINO and ONNX Runtime reorder float sums: never bit-identical to eager here
    assert fp32 > 0
    r, got = verify_json(supplier, data, *exact[2:], "--fp32-atol", repr(down(fp32)))
    assert r.exit_code == 1 and any("fp32_logits" in x["failed_gates"] for x in got.values())
    assert not any("fp32_logits" in x["failed_gates"] for x in got.values() if not _judged_fp32(x))
    if agree < 100:
        r, got = verify_json(supplier, data, *exact[:2], *exact[4:], "--int8-min-agreement", repr(up(agree)))
        assert r.exit_code == 1 and any("int8_agreement" in x["failed_gates"] for x in got.values())
    else:
        assert verify_json(supplier, data, *exact[:2], *exact[4:], "--int8-min-agreement", repr(up(100.0)))[0].exit_code == 2


def test_export_parity_uses_the_same_fp32_gate(tiny_export, tmp_path):
    r = run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", tmp_path / "o", "--data-dir",
            tiny_export["data"], "--targets", "onnx", "--fp32-atol", 0)
    assert r.exit_code == 1 and "differs from PyTorch eager (max |Δlogit|" in r.stderr and "> 0" in r.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_a_batch_size_that_changes_predictions_fails_the_row(exported, tiny_export, monkeypatch, in_process):
    import toolkit.runtimes.ort_session as rt

    real = rt.Model.logits

    def batch_dependent(self, images_u8, batch=1000):
        out = real(self, images_u8, batch)
        if batch == 7:  # one of the consistency batches
            out = out.copy()
            out[0] = out[0][::-1]
        return out

    monkeypatch.setattr(rt.Model, "logits", batch_dependent)
    r, rows = verify_json(exported, tiny_export["data"], *LOOSE)
    assert r.exit_code == 1
    assert all("batch_consistency" in rows[i]["failed_gates"] for i in ("onnx-fp32@ort-cpu", "onnx-int8@ort-cpu"))


def test_the_loaded_bytes_are_the_hashed_bytes(exported, tmp_path):
    from toolkit.runtimes.candidate import read_model_bytes

    path = exported / "cnn_int8.onnx"
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    data, sha256 = read_model_bytes(path, good)
    assert hashlib.sha256(data).hexdigest() == good and sha256 == good
    path.chmod(0o644)
    assert read_model_bytes(path)[1] == good  # hashed even when no hash is expected
    with pytest.raises(ManifestError, match="SHA-256 changed since export"):
        read_model_bytes(path, "0" * 64)


def test_a_reference_made_on_another_test_set_is_refused(exported, tiny_export, tmp_path):
    ref = dict(np.load(exported / "reference.npz"))
    ref["test_sha256"] = np.array("0" * 64)
    np.savez_compressed(exported / "reference.npz", **ref)
    m = json.loads((exported / "manifest.json").read_text())
    m["reference"]["sha256"] = hashlib.sha256((exported / "reference.npz").read_bytes()).hexdigest()
    (exported / "manifest.json").write_text(json.dumps(m))
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch")
    assert r.exit_code == 1 and "not the one the reference was made on" in r.stderr


def test_a_failed_publish_restores_a_replaced_folder_exactly(exported, monkeypatch):
    """The Triton repository is a folder: the old one moved aside, the new one in, and on failure the
    new one removed before the old one comes back (never the new one left inside the old)."""
    import toolkit.publish as pub

    old_repo = exported / "triton" / "m" / "1"
    old_repo.mkdir(parents=True)
    (old_repo / "model.onnx").write_bytes(b"old")
    stage = pub.Stage(exported)
    (stage.new / "triton" / "m" / "1").mkdir(parents=True)
    (stage.new / "triton" / "m" / "1" / "model.onnx").write_bytes(b"new")
    (stage.new / "manifest.json").write_text("{}")
    before = (exported / "manifest.json").read_bytes()
    calls = {"n": 0}
    real = pub._rename

    def fail_on_manifest(src, dst):  # the switch fails once (the disk is full); the rollback's renames work
        calls["n"] += 1
        if str(dst).endswith("manifest.json") and not calls.get("failed"):
            calls["failed"] = True
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(pub, "_rename", fail_on_manifest)
    with pytest.raises(OSError):
        pub.publish(stage, ["triton", "manifest.json"])
    stage.close()
    assert sorted(p.relative_to(exported / "triton").as_posix() for p in (exported / "triton").rglob("*")) == [
        "m", "m/1", "m/1/model.onnx"]
    assert (old_repo / "model.onnx").read_bytes() == b"old"
    assert (exported / "manifest.json").read_bytes() == before


def test_a_litert_batch_file_that_predicts_otherwise_fails_the_row(all_targets, tiny_export, monkeypatch, in_process):
    pytest.importorskip("ai_edge_litert")
    import toolkit.runtimes.litert as lr

    real = lr.Program.run

    def bulk_differs(self, xq):
        out = real(self, xq)
        return out[:, ::-1].copy() if self.batch > 1 else out  # the batch-256 file disagrees with batch 1

    monkeypatch.setattr(lr.Program, "run", bulk_differs)
    r, rows = verify_json(all_targets, tiny_export["data"], *LOOSE)
    assert r.exit_code == 1
    assert "batch_consistency" in rows["tflite-int8@litert"]["failed_gates"]


# ---------------------------------------------------------------- saturation (clipped int8 scores)


def test_saturation_gate_at_and_past_its_limit():
    ok = dict(accuracy_drop_points=0.0, agreement_pct=100.0)
    assert gates_of(Measurement("int8", clipped_top_pct=G.int8_max_clipped_top_pct, **ok)) == []
    assert gates_of(Measurement("int8", clipped_top_pct=up(G.int8_max_clipped_top_pct), **ok)) == [Gate.SATURATION]
    assert gates_of(Measurement("int8", clipped_top_pct=None, **ok)) == []  # a float output: nothing to clip


def test_a_value_exactly_half_a_step_from_a_limit_is_at_it():
    from toolkit.gates import saturation

    # limits ±2, step 0.5: at the upper limit from 1.75 on, at the lower one up to -1.75
    at = saturation(np.array([[1.75, 0.0, -1.75]]), (-2.0, 2.0, 0.5))
    assert at["clipped_top_images"] == 1 and at["values_at_limits_pct"] == pytest.approx(200 / 3)
    past = saturation(np.array([[1.7499, 0.0, -1.7499]]), (-2.0, 2.0, 0.5))
    assert past["clipped_top_images"] == 0 and past["values_at_limits_pct"] == 0.0
    two = saturation(np.array([[0.0, 1.9], [1.9, 0.0]]), (-2.0, 2.0, 0.5))  # the top of each image, by row
    assert two["clipped_top_images"] == 2


def test_saturation_and_score_fidelity_measures():
    from toolkit.gates import saturation, score_fidelity

    logits = np.array([[1.9, 0.0, -1.8], [0.5, 1.0, -2.0], [1.7, 0.0, 0.0]])
    s = saturation(logits, (-2.0, 2.0, 0.5))  # a value within half a step (0.25) of a limit is at it
    assert s["clipped_top_images"] == 1 and s["clipped_top_pct"] == pytest.approx(100 / 3)
    assert s["values_at_limits_pct"] == pytest.approx(100 * 3 / 9) and s["output_range"] == [-2.0, 2.0]
    assert saturation(logits, None) is None
    f = score_fidelity(logits, logits)
    assert f["top_prob_abs_diff_max"] == 0.0
    shifted = logits.copy()
    shifted[0, 0] = 0.0  # image 0's top class loses its lead
    assert score_fidelity(shifted, logits)["top_prob_abs_diff_max"] > 0.2


def test_score_fidelity_is_the_reference_top_class_probability_moved_exactly():
    """|Δp| of the reference's top class, per image: softmax along each image's classes, computed in float64
    whatever the input's dtype and safe at large logits; its max and 99th percentile over the images."""
    from toolkit.gates import saturation, score_fidelity

    n = 200  # images
    ref = np.zeros((n, 3))
    ref[:, 0] = np.log(3.0)  # p(top) = 3 / (3 + 1 + 1) = 0.6 for every image
    moved = ref.copy()
    moved[:, 0] = np.log(np.linspace(1.0, 8.0, n))  # p = a / (a + 2): from 1/3 to 0.8
    d = np.abs(np.linspace(1.0, 8.0, n) / (np.linspace(1.0, 8.0, n) + 2) - 0.6)
    # each image's own shift (up to +1990) changes nothing: no overflow, no image scaled by another's; float16 in,
    # float64 arithmetic
    f = score_fidelity(moved.astype(np.float16), ref + 10.0 * np.arange(n)[:, None])
    want_max, want_p99 = d.max(), np.percentile(d, 99)
    p16 = np.exp(moved.astype(np.float16).astype(np.float64))
    d16 = np.abs(p16[:, 0] / p16.sum(1) - 0.6)
    assert f == {"top_prob_abs_diff_max": pytest.approx(d16.max(), rel=1e-12),
                 "top_prob_abs_diff_p99": pytest.approx(np.percentile(d16, 99), rel=1e-12)}
    assert f["top_prob_abs_diff_max"] == pytest.approx(want_max, abs=1e-3) and want_p99 < want_max
    s = saturation(np.array([[1.9, 0.0]], dtype=np.float16), (-2, 2, 0.5))
    assert s == {"output_range": [-2.0, 2.0], "step": 0.5, "values_at_limits_pct": 50.0, "clipped_top_pct": 100.0,
                 "clipped_top_images": 1}


def _narrow_output(path, factor):
    """The int8 ONNX model with its output quantizer's range `factor` as wide (a narrow calibration)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    out = model.graph.output[0].name
    dq = next(n for n in model.graph.node if out in n.output)
    assert dq.op_type == "DequantizeLinear"
    for init in model.graph.initializer:
        if init.name == dq.input[1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(model, str(path))


def test_a_narrow_output_calibration_fails_the_saturation_gate(supplier, tiny_export):
    path = supplier / "cnn_int8.onnx"
    _, rows = verify_json(supplier, tiny_export["data"], *LOOSE[:4], *LOOSE[6:])
    wide = rows["onnx-int8@ort-cpu"]["saturation"]
    _narrow_output(path, 0.25)
    m = json.loads((supplier / "manifest.json").read_text())
    for a in m["artifacts"]:
        if a["file"] == "cnn_int8.onnx":
            a["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            a["size_bytes"] = path.stat().st_size
    (supplier / "manifest.json").write_text(json.dumps(m))
    r, rows = verify_json(supplier, tiny_export["data"], *LOOSE[:4], *LOOSE[6:])  # every gate but saturation loose
    row = rows["onnx-int8@ort-cpu"]
    assert r.exit_code == 1 and row["failed_gates"] == ["saturation"], row
    assert row["saturation"]["clipped_top_pct"] > wide["clipped_top_pct"]
    assert row["saturation"]["output_range"][1] == pytest.approx(wide["output_range"][1] * 0.25, rel=1e-5)
    assert row["score_fidelity"]["top_prob_abs_diff_max"] > 0


def test_every_target_refuses_a_calibration_method_it_cannot_honour():
    from toolkit.config import QuantConfig

    ExportConfig(quantize=True, formats=("onnx", "ort", "triton"), quant=QuantConfig(method="entropy"))
    for fmt in ("torchscript", "tflite", "executorch"):
        with pytest.raises(ExportError, match=f"{fmt} int8 calibrate by min/max"):
            ExportConfig(quantize=True, formats=(fmt,), quant=QuantConfig(method="percentile"))
    ExportConfig(quantize=True, formats=FORMATS, quant=QuantConfig(method="minmax"))


def test_inspect_shows_each_layers_range_coverage_and_flags_a_clipping_one(supplier, tiny_export):
    def layers():
        r = run("inspect", "--dir", supplier, "--data-dir", tiny_export["data"], "--repeats", 1, "--json", "-")
        assert r.exit_code == 0, r.output
        return {x["layer"]: x for x in json.loads(r.stdout)["error"]["layers"]}, r.stderr

    before, _ = layers()
    assert before["fc1"]["range"]["calibrated"][1] > 0 and not before["conv2"]["range"]["clipping"]
    _narrow_output(supplier / "cnn_int8.onnx", 0.25)
    m = json.loads((supplier / "manifest.json").read_text())
    for a in m["artifacts"]:
        if a["file"] == "cnn_int8.onnx":
            a["sha256"] = hashlib.sha256((supplier / "cnn_int8.onnx").read_bytes()).hexdigest()
    (supplier / "manifest.json").write_text(json.dumps(m))
    after, text = layers()
    assert after["fc1"]["range"]["clipping"] and after["fc1"]["range"]["clipped_pct"] > before["fc1"]["range"]["clipped_pct"]
    assert "fc1 output: calibrated" in text and "CLIPPING" in text


def test_torchscript_int8_weights_follow_the_reduce_range_decision():
    """CPUs without VNNI saturate fbgemm's U8S8 sums (vpmaddubsw): 7-bit weights (|w| ≤ 64, as the ONNX
    model's) keep every pair of products within int16, with full-range activations (torch's 7-bit
    activations cost more agreement: docs/performance.md)."""
    import torch

    from toolkit.config import QuantConfig
    from toolkit.exporters.quantize import torch_static_int8
    from toolkit.model import build_model

    torch.manual_seed(0)
    model = build_model("cnn").eval()
    calib = np.random.default_rng(0).random((20, 1, 28, 28), dtype=np.float32)
    quantized = {rr: torch_static_int8(model, calib, QuantConfig(reduce_range=rr))[1] for rr in (True, False)}
    weight = {rr: q.conv2.weight().int_repr() for rr, q in quantized.items()}
    assert int(weight[True].abs().max()) == 64 and int(weight[False].abs().max()) == 127
    scale = {rr: float(q.state_dict()["conv1_input_scale_0"]) for rr, q in quantized.items()}
    assert scale[True] == pytest.approx(scale[False])  # the activations keep their 8 bits


def test_search_never_ships_a_candidate_without_int8_kernels(tiny_export, monkeypatch):
    """--search judges each candidate with verify's gates: one whose session ran no int8 kernel fails
    (here: every candidate but the default reports none), so the kernel-less ones can never win."""
    from toolkit.data import load_mnist, to_model_input
    from toolkit.runtimes.onnxruntime import OnnxCandidate
    from toolkit.search import run_search

    mnist = load_mnist(tiny_export["data"], log=lambda s: None)
    base = ExportConfig(quantize=True).quant
    real = OnnxCandidate.placement
    calls = []

    def placement(self):
        calls.append(self.path.name)
        p = real(self)
        return p if len(calls) == 1 else dataclasses.replace(p, int8_kernels=())  # candidate 0 (the default) keeps its kernels

    monkeypatch.setattr(OnnxCandidate, "placement", placement)
    fp32 = tiny_export["out"] / "cnn_fp32.onnx"
    from toolkit.runtimes.ort_session import Model

    ref = Model(fp32).logits(mnist.test_images)
    calib = to_model_input(mnist.train_images[:50])
    loose = Gates(int8_max_drop_points=100, int8_min_agreement_pct=0, int8_max_clipped_top_pct=100)  # all but kernels
    out = run_search(fp32, calib, base, mnist.test_images, mnist.test_labels, ref, gates=loose)
    rows = out["table"][1:]
    assert rows[0]["passed"] and rows[0]["chosen"] and out["chosen"] == base
    assert all(not r["passed"] and any("int8 kernel" in why for why in r["reasons"]) for r in rows[1:])
    calls.clear()
    monkeypatch.setattr(OnnxCandidate, "placement", lambda self: dataclasses.replace(real(self), int8_kernels=()))
    with pytest.raises(ExportError, match="none of the .* candidates passes"):
        run_search(fp32, calib, base, mnist.test_images, mnist.test_labels, ref, gates=loose)
