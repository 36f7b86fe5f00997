"""One exporter per deployment target, each writing into the staging folder of `mnisttk export`.
Torch side: they use the PyTorch model, the `onnx` package or a target's own converter. Each takes
the `Sources` of an export and returns what it `Written`; `export` loops over the targets asked for.
TorchScript and ONNX themselves are written by `toolkit.export` (the others derive from them or
from the same PyTorch model and calibration images)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Sources:
    """What an exporter may build from: the staged ONNX models, the fp32 PyTorch model, and the
    calibration images (float, N×1×28×28, the training-split indices of every int8 artifact)."""

    stage: Path
    arch: str
    onnx_files: dict  # precision -> staged .onnx path
    model: object = None  # torch.nn.Module, eval mode
    calib: object = None  # np.ndarray, or None without --quantize


@dataclass
class Written:
    """What an exporter wrote: models (format, precision, path relative to the stage, source onnx
    name or None) and files that support them (configs, batch variants), all hashed into the
    manifest; `extra` adds fields to a model's manifest entry (by relative path)."""

    models: list = field(default_factory=list)
    support: list = field(default_factory=list)  # (relative path, role)
    top_level: list = field(default_factory=list)  # the names it created directly in the stage
    extra: dict = field(default_factory=dict)  # relative path -> manifest fields


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
    """The function that writes target `fmt` from the `Sources` of an export."""
    from toolkit.targets import BY_NAME

    module, function = BY_NAME[fmt].exporter
    return getattr(importlib.import_module(f"toolkit.exporters.{module}"), function)
