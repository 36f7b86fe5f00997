"""The runtimes verify runs artifacts on: one module each behind `toolkit.candidate.Candidate`, and
this registry that verify iterates. Adding a runtime is adding a module and a line here. Modules are
imported only when one of their rows runs (the PyTorch one needs torch)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

ROW_NAMES = {"torchscript": "TorchScript", "onnx": "ONNX", "ort": "ORT format", "tflite": "LiteRT",
             "executorch": "ExecuTorch", "triton": "Triton"}


@dataclass(frozen=True)
class RuntimeSpec:
    label: str  # the report's runtime column
    formats: tuple  # artifact formats it runs
    module: str  # toolkit.runtimes.<module>.candidate(folder, artifact, threads, provider, name) builds a row
    device: str | None = None  # ONNX Runtime provider ("cpu", "cuda"), chosen with --device; None: PyTorch
    needs_torch: bool = False
    requires: tuple = ()  # modules it imports (an optional extra): without them its rows are skipped
    extra: str | None = None  # the pip extra that installs them


RUNTIMES = (
    RuntimeSpec("TorchScript", ("torchscript",), "pytorch", needs_torch=True),
    RuntimeSpec("ORT CPU", ("onnx", "ort", "triton"), "onnxruntime", device="cpu"),
    # The .ort format is for mobile/minimal CPU builds; Triton's model.onnx is the .onnx itself.
    RuntimeSpec("ORT CUDA", ("onnx",), "onnxruntime", device="cuda"),
    RuntimeSpec("LiteRT XNNPACK", ("tflite",), "litert", requires=("ai_edge_litert",), extra="litert"),
    # ExecuTorch's Python runtime imports torch (see runtimes/executorch.py)
    RuntimeSpec("ExecuTorch XNNPACK", ("executorch",), "executorch", needs_torch=True, requires=("executorch",),
                extra="executorch"),
)


def absent_modules(names) -> list[str]:
    """The modules among `names` that are not installed here (nothing is imported)."""
    import importlib.util

    return [m for m in names if importlib.util.find_spec(m) is None]


def missing(spec: RuntimeSpec) -> str | None:
    """Why this runtime cannot run here (a module of its extra is absent), or None."""
    absent = absent_modules(spec.requires)
    return f"{', '.join(absent)} not installed (pip install 'mnisttk[{spec.extra}]')" if absent else None


def build(spec: RuntimeSpec, folder, artifact: dict, threads: int):
    module = importlib.import_module(f"toolkit.runtimes.{spec.module}")
    name = f"{ROW_NAMES[artifact['format']]} {artifact['precision']}"
    return module.candidate(folder, artifact, threads, spec.device, name)
