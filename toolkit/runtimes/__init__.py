"""The runtimes verify runs artifacts on: one module each behind `toolkit.runtimes.candidate.Candidate`, and
this registry that verify iterates. Adding a runtime is adding a module and a line here. Modules are
imported only when one of their rows runs (the PyTorch one needs torch)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from toolkit.runtimes.candidate import Arithmetic
from toolkit.targets import row_label


@dataclass(frozen=True)
class RuntimeSpec:
    label: str  # the report's runtime column
    id: str  # the row id's runtime part (onnx-int8@ort-cpu)
    formats: tuple  # artifact formats it runs
    module: str  # toolkit.runtimes.<module>.candidate(folder, artifact, threads, provider, name) builds a row
    device: str | None = None  # ONNX Runtime provider ("cpu", "cuda"), chosen with --device; None: PyTorch
    needs_torch: bool = False
    requires: tuple = ()  # modules it imports (an optional extra): without them its rows are skipped
    extra: str | None = None  # the pip extra that installs them
    color: str = "tab:gray"  # the report plot's colour for its rows (red is kept for failed rows)
    # its module has `reduced_default()`: the precision it computes an fp32 file in on this CPU when
    # nothing is asked, where that is not fp32 (verify adds a row for it beside the exact one)
    reduced_default: bool = False
    # modules its rows import that cost seconds each time (ExecuTorch's runtime with torch, ~2.5 s): imported once in the
    # bounded children's forkserver when a run has such rows, so each child starts with them
    preload: tuple = ()
    # its int8 kernel family (toolkit.int8cpu): whether u8×s8 products pair in a saturating int16 on
    # AVX2, and whether an ISA cap (oneDNN's ONEDNN_MAX_CPU_ISA) reaches them
    int8_kernels: str = "mlas"

    @property
    def gpu(self) -> bool:
        """A GPU runtime: its rows run only where its device is, without the CPU rows' memory bound."""
        return self.device not in (None, "cpu")


RUNTIMES = (
    RuntimeSpec("TorchScript", "torchscript", ("torchscript",), "pytorch", needs_torch=True, color="tab:blue",
                int8_kernels="fbgemm"),
    RuntimeSpec("ORT CPU", "ort-cpu", ("onnx", "ort", "triton"), "onnxruntime", device="cpu", color="tab:green"),
    # The .ort format is for mobile/minimal CPU builds; Triton's model.onnx is the .onnx itself.
    RuntimeSpec("ORT CUDA", "ort-cuda", ("onnx",), "onnxruntime", device="cuda", color="tab:purple",
                int8_kernels="cuda"),
    # The same .onnx files on OpenVINO's CPU plugin, as Intel users deploy them (see runtimes/openvino.py)
    RuntimeSpec("OpenVINO CPU", "openvino", ("onnx", "openvino"), "openvino", requires=("openvino",), extra="openvino",
                color="tab:cyan", reduced_default=True, preload=("toolkit.runtimes.openvino_preload",),
                int8_kernels="onednn"),
    RuntimeSpec("LiteRT XNNPACK", "litert", ("tflite",), "litert", requires=("ai_edge_litert",), extra="litert",
                color="tab:orange", int8_kernels="xnnpack"),
    # ExecuTorch's Python runtime imports torch (see runtimes/executorch.py)
    RuntimeSpec("ExecuTorch XNNPACK", "executorch", ("executorch",), "executorch", needs_torch=True, requires=("executorch",),
                extra="executorch", color="tab:brown",
                preload=("torch", "toolkit.runtimes.executorch_preload"), int8_kernels="xnnpack"),
)


def runtime_for(fmt: str, device: str) -> RuntimeSpec | None:
    """The runtime that runs a format's files on `device` ("cpu" or a GPU runtime's device, "cuda"):
    what predict loads a model with. None where no runtime here runs that format there."""
    if device == "cpu":
        return cpu_runtime(fmt)
    return next((s for s in RUNTIMES if fmt in s.formats and s.device == device), None)


def cpu_runtime(fmt: str) -> RuntimeSpec | None:
    """The runtime that runs a format's files on the CPU by default (export's check of each file, the
    benchmark's pairs): the first CPU runtime listed for it, None where only a GPU runtime runs it."""
    return next((s for s in RUNTIMES if fmt in s.formats and not s.gpu), None)


def absent_modules(names) -> list[str]:
    """The modules among `names` that are not installed here (nothing is imported)."""
    import importlib.util

    return [m for m in names if importlib.util.find_spec(m) is None]


def missing(spec: RuntimeSpec) -> str | None:
    """Why this runtime cannot run here (a module of its extra is absent), or None."""
    absent = absent_modules(spec.requires)
    return f"{', '.join(absent)} not installed (pip install 'mnisttk[{spec.extra}]')" if absent else None


def build(spec: RuntimeSpec, folder, artifact: dict, threads: int, *, arithmetic: Arithmetic = Arithmetic.EXACT):
    """A row's candidate. `arithmetic`: EXACT (the file's own precision, asked for explicitly: what
    every check of exactness uses) or DEFAULT (what the runtime does on this CPU when nothing is asked)."""
    module = importlib.import_module(f"toolkit.runtimes.{spec.module}")
    name = row_label(artifact["format"], artifact["precision"])
    from toolkit.runtimes.candidate import artifact_classes, check_input

    cand = module.candidate(folder, artifact, threads, spec.device, name, arithmetic=Arithmetic(arithmetic))
    cand.num_classes = artifact_classes(artifact)
    check_input(cand, artifact)
    return cand


def device_missing(spec: RuntimeSpec) -> str | None:
    """Why a GPU runtime's device cannot run here (its module's `device_missing(device)`), or None (a CPU
    runtime, or the device is there). Imports the runtime's module: onnxruntime for ORT CUDA."""
    if not spec.gpu:
        return None
    return importlib.import_module(f"toolkit.runtimes.{spec.module}").device_missing(spec.device)


def reduced_default(spec: RuntimeSpec) -> str | None:
    """The precision `spec` computes an fp32 file in on this CPU when nothing is asked, where that is not
    fp32 (e.g. "bf16"); None where it is fp32 or the runtime has no such choice. Imports the runtime:
    call it in a bounded child (toolkit.isolate) where the parent should stay light."""
    if not spec.reduced_default:
        return None
    return importlib.import_module(f"toolkit.runtimes.{spec.module}").reduced_default()


def reduced_default_at(spec_index: int) -> str | None:
    """reduced_default of RUNTIMES[spec_index] (a module-level function a child process can run)."""
    return reduced_default(RUNTIMES[spec_index])


def ask_reduced_default(spec: RuntimeSpec) -> str | None:
    """reduced_default, asked in a bounded child (importing a runtime must not hang or crash the verb
    that asks); ToolkitError (toolkit.isolate's) where the runtime cannot start."""
    from toolkit import isolate

    if not spec.reduced_default:
        return None
    return isolate.call(reduced_default_at, RUNTIMES.index(spec), timeout_s=60, memory_mb=None,
                        what=f"{spec.label}'s default precision")
