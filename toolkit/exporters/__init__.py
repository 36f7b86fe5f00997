"""Exporters that derive a deployment target from the staged ONNX models (torch-side: they use the
`onnx` package or ONNX Runtime's converter). Each takes the staging folder and the staged ONNX
files, writes its files there, and returns what it wrote; `export` loops over the targets asked for.
TorchScript and ONNX themselves are written by `toolkit.export` (they need the PyTorch model)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Written:
    """What an exporter wrote: models (format, precision, path relative to the stage) and files
    that support them (configs), all hashed into the manifest."""

    models: list = field(default_factory=list)  # (format, precision, relative path, source onnx name)
    support: list = field(default_factory=list)  # (relative path, role)
    top_level: list = field(default_factory=list)  # the names it created directly in the stage


def exporter(fmt: str):
    """The function that writes format `fmt` from staged ONNX models."""
    if fmt == "ort":
        from toolkit.exporters.ort import export_ort

        return export_ort
    if fmt == "triton":
        from toolkit.exporters.triton import export_triton

        return export_triton
    raise KeyError(fmt)

