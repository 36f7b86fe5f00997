"""One exporter per deployment target, each writing into the staging folder of `mnisttk export`.
Torch side: they use the PyTorch model, the `onnx` package or a target's own converter. Every one has
the same protocol: `export_<target>(src: Sources) -> Written`, a list of `Artifact`s; `export` loops
over the targets asked for, in the registry's order (toolkit.targets)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.contract import MNIST_INPUT, InputSpec


@dataclass
class Sources:
    """What an exporter may build from: the fp32 PyTorch model, the staged ONNX models, the calibration
    images (float, N×C×H×W, training-split indices) and recipe of every int8 artifact, and the
    metadata stamped into ONNX files. `precisions`: which of fp32/int8 this call writes (export writes
    TorchScript and ONNX fp32 first, checks them, then int8; the other targets both at once)."""

    stage: Path
    arch: str
    precisions: tuple = ("fp32",)
    model: Any = None  # torch.nn.Module, eval mode
    onnx_files: dict = field(default_factory=dict)  # precision -> staged .onnx path
    calib: Any = None  # np.ndarray, or None without --quantize
    quant: Any = None  # toolkit.config.QuantConfig of the int8 artifacts
    metadata: dict = field(default_factory=dict)  # stamped into ONNX files (toolkit.exporters.artifact_meta)
    spec: InputSpec = MNIST_INPUT  # what the model takes (toolkit.contract): every converter's example input

    def example(self, batch: int = 2, rand: bool = False) -> Any:
        """A float batch of the model's input, for tracing and converting (zeros, or torch.rand)."""
        import torch

        return (torch.rand if rand else torch.zeros)(batch, *self.spec.chw)


@dataclass(frozen=True)
class Artifact:
    """One model an exporter wrote: its target format, precision, file (relative to the stage), the
    quantization parameters it records (int8), the staged ONNX file it was made from (its bytes, for a
    Triton model.onnx; None when made from the PyTorch model), and its own manifest fields (I/O,
    delegation, batch files, calibration method)."""

    fmt: str
    precision: str
    file: str
    quant_params: dict | None = None
    source: str | None = None
    fields: dict = field(default_factory=dict)
    copy: bool = False  # its bytes are exactly `source`'s (a Triton model.onnx): the same logits


@dataclass
class Written:
    """What one exporter wrote: its `Artifact`s, files that support them (configs, batch variants; all
    hashed into the manifest) and the names it created directly in the stage."""

    artifacts: list = field(default_factory=list)
    support: list = field(default_factory=list)  # (relative path, role)
    top_level: list = field(default_factory=list)


def each_precision(src: Sources, make) -> Written:
    """What `make(precision)` (an `Artifact`, one top-level file) writes for each precision `src` asks for."""
    written = Written()
    for precision in src.precisions:
        art = make(precision)
        written.artifacts.append(art)
        written.top_level.append(art.file)
    return written


def missing_dependency(fmt: str) -> str | None:
    """The one-line reason target `fmt` cannot be written here, or None."""
    from toolkit.runtimes import absent_modules
    from toolkit.targets import BY_NAME

    target = BY_NAME[fmt]
    extra = target.extra
    absent = absent_modules(target.needs)
    if absent:
        return (f"target {fmt} needs {', '.join(absent)}, which is not installed: "
                f"pip install 'mnisttk[{extra}]' (or leave {fmt} out of --targets)")
    return None


def exporter(fmt: str):
    """The function that writes target `fmt`: `(Sources) -> Written`."""
    from toolkit.targets import BY_NAME

    module, function = BY_NAME[fmt].exporter
    return getattr(importlib.import_module(f"toolkit.exporters.{module}"), function)
