"""`mnisttk env`: what this machine offers mnisttk (as `optimum-cli env`). Torch-free: versions
come from package metadata, the GPU's name from nvidia-smi."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

from toolkit import __version__
from toolkit.errors import ToolkitError


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def library_versions() -> dict:
    """The versions that made an artifact (checkpoint and manifest record them), from package metadata."""
    from toolkit.runtimes.ort_session import onnxruntime_distributions

    names = ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "numpy", "click", "ai-edge-litert",
             "litert-torch", "ai-edge-quantizer", "executorch", "torchao", "openvino", "nncf")
    return {"python": platform.python_version(), **{n: _version(n) for n in names},
            "onnxruntime_distributions": onnxruntime_distributions(), "mnisttk": __version__}


def environment() -> dict:
    from toolkit.machine import cpu_flags
    from toolkit.runtimes.ort_session import available_providers, onnxruntime_distributions

    dists = onnxruntime_distributions()
    return {
        "schema_version": 1,
        "mnisttk": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "onnx": _version("onnx"),
        "onnxruntime": dists,
        "onnxruntime_mixed_install": len(dists) > 1,
        "execution_providers": available_providers(),
        "executorch": _version("executorch"),
        "ai_edge_litert": _version("ai-edge-litert"),  # LiteRT's interpreter: the .tflite rows
        "litert_torch": _version("litert-torch"),  # the .tflite converter (export)
        "ai_edge_quantizer": _version("ai-edge-quantizer"),  # the .tflite int8 quantizer (export)
        "openvino": _version("openvino"),  # OpenVINO's CPU runtime (rows) and converter (IR export)
        "nncf": _version("nncf"),  # the OpenVINO IR's int8 quantizer (export)
        "onnxscript": _version("onnxscript"),  # torch.onnx's exporter
        "numpy": _version("numpy"),
        "cpu": cpu_flags(),
        # each runtime's CPU-dependent choice for an fp32 file on this machine, where it makes one
        "default_precision": _default_precisions(),
        "gpus": _gpus(),
        "executable": sys.executable,
    }


def _default_precisions() -> dict:
    """runtime label -> the precision it computes an fp32 file in on this CPU when nothing is asked, for
    the installed runtimes that choose one (OpenVINO: f32, or bf16 on AVX-512 BF16/AMX CPUs)."""
    from toolkit.runtimes import RUNTIMES, ask_reduced_default, missing

    out = {}
    for spec in RUNTIMES:
        if spec.reduced_default and not missing(spec):
            try:
                out[spec.label] = ask_reduced_default(spec) or "f32"
            except ToolkitError as exc:  # the runtime cannot start here: say so, not crash the report
                out[spec.label] = f"unknown ({str(exc)[:80]})"
    return out


def format_environment(env: dict) -> str:
    cpu = env["cpu"]
    flags = cpu.get("flags") or []
    ort = ", ".join(env["onnxruntime"]) or "not installed"
    if env["onnxruntime_mixed_install"]:
        ort += "  <- MIXED INSTALL: keep one (`make gpu` for the CUDA build)"
    rows = [
        ("mnisttk", env["mnisttk"]),
        ("python", f"{env['python']} ({env['executable']})"),
        ("platform", env["platform"]),
        ("torch", env["torch"] or "not installed (train/export need it: pip install 'mnisttk[train]')"),
        ("onnx", env["onnx"] or "not installed"),
        ("onnxruntime", ort),
        ("execution providers", ", ".join(env["execution_providers"])),
        ("executorch", env["executorch"] or "not installed (.pte export and rows: pip install 'mnisttk[executorch]')"),
        ("ai-edge-litert", env["ai_edge_litert"] or "not installed (.tflite rows, predict: pip install 'mnisttk[litert]')"),
        ("litert-torch", env["litert_torch"] or "not installed (.tflite export: pip install 'mnisttk[tflite]')"),
        ("ai-edge-quantizer", env["ai_edge_quantizer"] or "not installed (.tflite int8: pip install 'mnisttk[tflite]')"),
        ("openvino", env["openvino"] or "not installed (OpenVINO rows: pip install 'mnisttk[openvino]')"),
        ("nncf", env["nncf"] or "not installed (OpenVINO IR int8: pip install 'mnisttk[openvino-ir]')"),
        ("onnxscript", env["onnxscript"] or "not installed (ONNX export: pip install 'mnisttk[train]')"),
        *((f"{label} fp32 default", precision + ("" if precision == "f32" else
                                                 " (verify adds a row for it beside the exact f32 one)"))
          for label, precision in env["default_precision"].items()),
        ("cpu", f"{cpu['model']}, {cpu['cores']} cores; {', '.join(flags) or 'no AVX2'}"),
        ("gpu", ", ".join(env["gpus"]) or "none found (nvidia-smi)"),
    ]
    from toolkit.width import fit

    width = max(len(k) for k, _ in rows)
    return fit("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
