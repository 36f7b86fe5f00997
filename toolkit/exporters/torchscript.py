"""TorchScript (PyTorch's legacy format): the traced fp32 model and, with --quantize, the FX-graph
int8 model (torch.ao.quantization, x86 back end). Torch-side."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

from toolkit.exporters import Artifact, Sources, Written, each_precision
from toolkit.exporters.artifact_meta import strip_torchscript


@contextlib.contextmanager
def quiet_warnings():
    """torch.jit and torch.ao.quantization are deprecated in torch 2.14 and say so on every
    call; the user can do nothing about it, so it stays off their terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def save_torchscript(module, path: Path) -> None:
    """Serialized in memory, written from Python: a full disk is an OSError, not a C++ abort."""
    buf = io.BytesIO()
    with quiet_warnings():
        torch.jit.save(module, buf)
    path.write_bytes(strip_torchscript(buf.getvalue()))  # no build paths; same bytes every export


def load(path: Path):
    with quiet_warnings():
        return torch.jit.load(str(path))


def export_torchscript(src: Sources) -> Written:
    """Each precision `src.precisions` asks for: fp32 traced (so it needs no toolkit code to load), int8
    through torch.ao's FX quantization on the calibration images."""
    return each_precision(src, lambda p: export_fp32(src.model, src.stage, src.arch, src.example()) if p == "fp32"
                          else export_int8(src.model, src.stage, src.arch, src.calib, src.quant))


def export_fp32(model: torch.nn.Module, stage: Path, arch: str, example: torch.Tensor) -> Artifact:
    path = stage / f"{arch}_fp32.torchscript.pt"
    with torch.no_grad(), quiet_warnings():
        traced = torch.jit.trace(model, example)
    save_torchscript(traced, path)
    return Artifact("torchscript", "fp32", path.name)


def export_int8(model: torch.nn.Module, stage: Path, arch: str, calib, quant) -> Artifact:
    from toolkit.exporters.quantize import torch_quant_params, torch_static_int8

    traced_q, quantized = torch_static_int8(model, calib, quant)
    path = stage / f"{arch}_int8.torchscript.pt"
    save_torchscript(traced_q, path)
    return Artifact("torchscript", "int8", path.name, torch_quant_params(quantized))
