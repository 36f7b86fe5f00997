"""ONNX: the fp32 model through torch's exporter (one self-contained file, dynamic batch, opset 20)
and, with --quantize, the static int8 model from ONNX Runtime's quantizer (toolkit.exporters.quantize).
Both stamped by toolkit.exporters.artifact_meta (no build paths, layer-named nodes, integrator metadata)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from toolkit.contract import MNIST_INPUT, InputSpec
from toolkit.errors import ExportError
from toolkit.exporters import Artifact, Sources, Written, each_precision
from toolkit.exporters.artifact_meta import finalize_onnx
from toolkit.exporters.torchscript import quiet_warnings

OPSET = 20  # what torch 2.14's exporter writes; ORT >= 1.17 runs it


def export_onnx(src: Sources) -> Written:
    """<arch>_fp32.onnx from the PyTorch model; <arch>_int8.onnx from the staged fp32 one and the
    calibration images; each that `src.precisions` asks for."""
    return each_precision(src, lambda p: export_fp32(src.model, src.stage, src.arch, src.metadata, src.spec)
                          if p == "fp32" else export_int8(src.stage, src.arch, src.calib, src.quant, src.metadata, src.spec))


def export_fp32(model: torch.nn.Module, stage: Path, arch: str, metadata: dict, spec: InputSpec = MNIST_INPUT) -> Artifact:
    import onnx

    path = stage / f"{arch}_fp32.onnx"
    example = torch.rand(2, *spec.chw)
    # The exporter narrates to stdout; results belong there, so swallow it.
    with contextlib.redirect_stdout(io.StringIO()), quiet_warnings():
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, input_names=["image"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET,
            external_data=False,  # one self-contained file: no side .onnx.data for the edge
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    finalize_onnx(proto, {**metadata, "precision": "fp32"}, uint8_input=False, spec=spec)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return Artifact("onnx", "fp32", path.name)


def export_int8(stage: Path, arch: str, calib, quant, metadata: dict, spec: InputSpec = MNIST_INPUT) -> Artifact:
    import onnx

    from toolkit.exporters import quantize

    fp32, path = stage / f"{arch}_fp32.onnx", stage / f"{arch}_int8.onnx"
    quantize.onnx_static_int8(fp32, path, calib, quant)
    model = onnx.load(str(path))
    finalize_onnx(model, {**metadata, "precision": "int8"}, quant.uint8_input, spec=spec)
    onnx.save(model, str(path))
    return Artifact("onnx", "int8", path.name, quantize.onnx_quant_params(path))
