"""The edge runtime: ONNX Runtime sessions and batched inference, onnxruntime and numpy only.

Never import torch here (a test proves it): an edge device has onnxruntime and numpy
and nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from toolkit.errors import RuntimeUnavailable, ToolkitError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def select_provider(name: str) -> str:
    """The one place an execution provider is chosen; checks it is really there."""
    if name not in PROVIDERS:
        raise ToolkitError(f"unknown execution provider {name!r}; choose one of {', '.join(PROVIDERS)}")
    provider = PROVIDERS[name]
    if provider not in available_providers():
        hint = " (pip install 'mnisttk[gpu]' for onnxruntime-gpu, and a CUDA GPU)" if name == "cuda" else ""
        raise RuntimeUnavailable(f"ONNX Runtime has no {provider} here{hint}")
    return provider


@dataclass(frozen=True)
class SessionOptions:
    threads: int = 0  # intra-op threads; 0 lets ONNX Runtime use all cores
    optimization: str = "all"  # basic | extended | all: graph optimizations applied at load
    profile: bool = False  # record which provider ran each node

    def to_ort(self) -> ort.SessionOptions:
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = levels[self.optimization]
        so.log_severity_level = 3  # errors only: keep ORT's warnings off the user's terminal
        if self.threads == 1:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.profile:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="mnisttk-prof-"), "ort")
        return so


class Model:
    """An ONNX model in an inference session on one execution provider."""

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", options: SessionOptions = SessionOptions()):
        self.path = Path(path)
        ep = select_provider(provider)
        if not self.path.is_file():
            raise ToolkitError(f"{self.path}: no such model file")
        # fp32 on CUDA must stay fp32: TF32 convolutions would move logits by ~1e-3.
        attempts = [[("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"],
                    ["CUDAExecutionProvider", "CPUExecutionProvider"]] if provider == "cuda" else [[ep]]
        for providers in attempts:
            try:
                self.session = ort.InferenceSession(str(self.path), sess_options=options.to_ort(), providers=providers)
                break
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph/etc.
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                error = ToolkitError(f"{self.path}: ONNX Runtime cannot load it ({first[:160]})")
        else:
            raise error
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_type = inp.type  # 'tensor(float)' or 'tensor(uint8)'
        self.output_name = self.session.get_outputs()[0].name
        self.providers_used = self.session.get_providers()

    @property
    def takes_uint8(self) -> bool:
        return self.input_type == "tensor(uint8)"

    def prepare(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 N×28×28 -> this model's input (uint8 N×1×28×28, or float32 in [0, 1])."""
        x = images_u8[:, None, :, :]
        if self.takes_uint8:
            return np.ascontiguousarray(x, dtype=np.uint8)
        return x.astype(np.float32) / np.float32(255.0)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def logits(self, images_u8: np.ndarray, batch: int = 1000) -> np.ndarray:
        """Logits for uint8 images, `batch` at a time."""
        x = self.prepare(images_u8)
        return np.concatenate([self.run(x[i : i + batch]) for i in range(0, len(x), batch)])

    def node_placement(self) -> dict:
        """Which provider ran how many nodes, read from ORT's profile (session must be profiling)."""
        prof = self.session.end_profiling()
        if not prof:
            return {}
        try:
            events = json.loads(Path(prof).read_text())
        finally:
            Path(prof).unlink(missing_ok=True)
            Path(prof).parent.rmdir()  # the per-session folder made in SessionOptions.to_ort
        nodes: dict[str, tuple[str, str]] = {}
        for ev in events:
            args = ev.get("args", {})
            if ev.get("cat") == "Node" and "provider" in args and ev.get("name", "").endswith("_kernel_time"):
                nodes[ev["name"][: -len("_kernel_time")]] = (args["provider"], args.get("op_name", ""))
        by_provider = Counter(p.replace("ExecutionProvider", "") for p, _ in nodes.values())
        ops = Counter(op for _, op in nodes.values())
        int8_ops = sorted(op for op in ops if op.startswith("QLinear") or op in {"ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeLinear"} or op.startswith("NhwcQLinear"))
        return {"providers": dict(by_provider), "ops": dict(ops), "int8_kernels": int8_ops}


def latency_us(model: Model, x1: np.ndarray, warmup: int = 50, iters: int = 500) -> dict:
    """Batch-1 latency percentiles in µs after warm-up."""
    for _ in range(warmup):
        model.run(x1)
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter_ns()
        model.run(x1)
        times[i] = time.perf_counter_ns() - t0
    p50, p95, p99 = np.percentile(times / 1e3, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def throughput(model: Model, x: np.ndarray, repeats: int = 5) -> float:
    """Images per second on batch `x`: the median of `repeats` timed runs after one warm-up."""
    model.run(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.run(x)
        times.append(time.perf_counter() - t0)
    return float(len(x) / np.median(times))
