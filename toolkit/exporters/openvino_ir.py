"""OpenVINO IR (`.xml` + `.bin`): what Intel users deploy. The fp32 IR is the staged fp32 ONNX model
through OpenVINO's converter (weights kept in fp32: `compress_to_fp16=False`, so it is the same model);
the int8 IR is NNCF's post-training quantization of that fp32 IR — OpenVINO's own int8 path, not a
conversion of ONNX Runtime's QDQ model — calibrated on the same training images as every other int8
artifact, each activation's range its min and max over all of them (NNCF's MINMAX estimator, so no
score is clipped), symmetric (NNCF's performance preset), for the CPU.

An int8 IR whose convolutions and linear layer OpenVINO's CPU plugin would not run in int8 is a failed
export. The `.bin` is a support file, hashed in the manifest and named by its artifact (`weights`)."""

from __future__ import annotations

import logging
from pathlib import Path

from toolkit.errors import ExportError
from toolkit.exporters import Artifact, Sources, Written
from toolkit.fsutil import sha256_file
from toolkit.quietfd import native_output_captured
from toolkit.scoped import logging_disabled

CALIB_BATCH = 100
CALIBRATION = ("minmax: NNCF's post-training quantization of the fp32 IR (MINMAX range estimator: each "
               "activation's min and max over all the calibration images; performance preset, CPU; full bias "
               "correction; overflow fix {overflow_fix})")


def float_input(spec) -> list:
    """The IR's input entry: float pixel/255, N×C×H×W."""
    return [{"name": "image", "dtype": "float32", "shape": ["batch", *spec.chw], "values": "pixel/255 in [0, 1]"}]


def overflow_fix(int8_isa: str) -> str:
    """NNCF's overflow fix for the CPUs the file must be exact on. `enable`: every layer's weights
    narrowed so that two u8×s8 products fit int16 (oneDNN's AVX2 int8 kernel sums pairs there and
    saturates past 32,767: measured, an MLP's first MatMul on raw pixels reached 64,515 with NNCF's
    default `first_layer_only`, which narrows only a first *convolution*); `first_layer_only`
    (NNCF's default) for files meant for VNNI/AMX CPUs only."""
    return "enable" if int8_isa == "portable" else "first_layer_only"


def quantize_nncf(model, calib, int8_isa: str = "portable"):
    """NNCF's static int8 of an fp32 OpenVINO model, calibrated on `calib` (float N×C×H×W). Full bias
    correction, not NNCF's default fast one: on a residual BatchNorm model the fast one left 13 flips
    where the full one left none (measured by the exact simulation of the IR)."""
    from toolkit.runtimes.openvino import telemetry_left_out

    with telemetry_left_out():  # NNCF's telemetry: a stub, as OpenVINO's
        import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    nncf.set_log_level(logging.ERROR)
    batches = [calib[i:i + CALIB_BATCH] for i in range(0, len(calib), CALIB_BATCH)]
    return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                         preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
                         fast_bias_correction=False,
                         advanced_parameters=AdvancedQuantizationParameters(
                             overflow_fix=OverflowFix(overflow_fix(int8_isa)),
                             activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX))


# what lies between a weight constant and the layer that multiplies with it (dequantization, layout)
_WEIGHT_PATH_OPS = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze"}


def _feeds(op, depth: int = 6) -> set:
    """The types of the first non-dequantization ops `op`'s output reaches."""
    found: set = set()
    for output in op.outputs():
        for target in output.get_target_inputs():
            node = target.get_node()
            kind = node.get_type_name()
            found |= _feeds(node, depth - 1) if kind in _WEIGHT_PATH_OPS and depth else {kind}
    return found


def ir_int8_weights(xml: Path) -> list:
    """The int8 weight constants of an IR that a u8×s8 kernel pairs (toolkit.int8cpu), each flattened to
    one row: a conservative input to pair_sum_bound (the two largest |w| of the whole tensor). Depthwise
    (GroupConvolution) weights are left out: oneDNN's depthwise int8 kernels widen to 32 bits before
    multiplying, so they never pair in int16, and NNCF's overflow fix leaves them full-range."""
    import numpy as np

    from toolkit.runtimes.openvino import openvino_module

    ov = openvino_module()
    model = ov.Core().read_model(str(xml))
    out = []
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8:
            if "GroupConvolution" in _feeds(op):
                continue
            out.append(np.asarray(op.get_data()).reshape(1, -1))
    return out


def export_openvino(src: Sources) -> Written:
    from toolkit.runtimes.openvino import compile_ir, int8_layers, openvino_module

    ov = openvino_module()
    written = Written()
    onnx_fp32 = src.onnx_files["fp32"]
    try:
        with native_output_captured(), logging_disabled(logging.WARNING):  # NNCF's progress bars, torch's notes
            fp32 = ov.convert_model(str(onnx_fp32))
            isa = getattr(src.quant, "int8_isa", "portable")
            models = {p: fp32 if p == "fp32" else quantize_nncf(fp32, src.calib, isa) for p in src.precisions}
            for precision, model in models.items():
                ov.save_model(model, str(src.stage / f"{src.arch}_{precision}.xml"), compress_to_fp16=False)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - OpenVINO's converter and NNCF raise their own types: one line
        from toolkit.runtimes.openvino import reason

        raise ExportError(f"OpenVINO IR: conversion or NNCF quantization failed ({reason(exc, 200)})") from None
    for precision in models:
        xml, weights = f"{src.arch}_{precision}.xml", f"{src.arch}_{precision}.bin"
        fields = {"weights": {"file": weights, "sha256": sha256_file(src.stage / weights)}, "inputs": float_input(src.spec)}
        if precision == "int8":
            compiled = compile_ir((src.stage / xml).read_bytes(), (src.stage / weights).read_bytes(), 1, xml)
            layers = int8_layers(compiled)
            if not layers:
                raise ExportError(f"{xml}: OpenVINO's CPU plugin runs none of its layers in int8; export failed")
            fields.update(int8_layers=layers, calibration_method=CALIBRATION.format(overflow_fix=overflow_fix(isa)))
        written.artifacts.append(Artifact("openvino", precision, xml, fields=fields))
        written.support.append((weights, "OpenVINO IR weights"))
        written.top_level += [xml, weights]
    return written
