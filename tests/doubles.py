"""Doubles for the CPU paths this machine may not take: a runtime that behaves as it would on another
CPU, so the policy around it (exact row, default row, gates, fastest, JSON, export's parity) is tested
on every machine, AVX2-only and aarch64 included.

`bf16_cpu(monkeypatch)`: OpenVINO's CPU plugin as on a CPU with AVX-512 BF16 or AMX — its default
precision for an fp32 model is bf16, and a model compiled without asking for f32 reports bf16 and
returns logits rounded to bf16 (as such a CPU's bf16 arithmetic moves them); asked for f32
(`INFERENCE_PRECISION_HINT`), it computes and reports f32 as the real plugin does. Runs in this
process: use it with the `in_process` fixture for verify's rows."""

from __future__ import annotations

import numpy as np


def to_bf16(x) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), kept as float32."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


class _Request:
    """An infer request whose output, after each run, is what bf16 arithmetic leaves of it."""

    def __init__(self, real):
        self._real = real

    def infer(self, *args, **kwargs):
        out = self._real.infer(*args, **kwargs)
        data = self._real.get_output_tensor(0).data
        data[...] = to_bf16(data)
        return out

    def __getattr__(self, name):
        return getattr(self._real, name)


class _Compiled:
    """A compiled model that reports bf16 and runs its requests through bf16 rounding."""

    def __init__(self, real):
        self._real = real

    def get_property(self, name):
        if name == "INFERENCE_PRECISION_HINT":
            import openvino as ov

            return ov.Type.bf16
        return self._real.get_property(name)

    def create_infer_request(self):
        return _Request(self._real.create_infer_request())

    def __getattr__(self, name):
        return getattr(self._real, name)


def bf16_cpu(monkeypatch) -> None:
    """Make OpenVINO behave, in this process, as on a CPU whose default for fp32 models is bf16."""
    from toolkit.runtimes import openvino

    real_compiled = openvino._compiled

    def compiled(core, read, threads, name, settings=None):
        real = real_compiled(core, read, threads, name, settings)
        asked_f32 = (settings or {}).get("INFERENCE_PRECISION_HINT") == "f32"
        return real if asked_f32 else _Compiled(real)

    monkeypatch.setattr(openvino, "default_precision", lambda: "bf16")
    monkeypatch.setattr(openvino, "_compiled", compiled)
