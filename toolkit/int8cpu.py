"""Which CPUs an int8 file computes exactly on, and which int8 arithmetic a runtime takes on this one.

The same int8 file computes differently on CPUs with and without dot-product instructions. The u8×s8
kernels of ONNX Runtime (MLAS), oneDNN (OpenVINO's CPU plugin) and fbgemm (TorchScript's x86 engine)
on an x86 CPU with AVX2 but no VNNI multiply with `vpmaddubsw`, which adds two u8×s8 products into a
*saturating* int16: a pair of full-range weights (±127) on raw pixels (255) reaches 64,770 and is cut
to 32,767. With VNNI (`vpdpbusd`) or AMX the products are summed in int32, and aarch64's kernels
(`sdot`/`udot`, or widening multiplies) do not saturate either. XNNPACK (LiteRT, ExecuTorch) widens
to 16 bits before multiplying (`vpmaddwd`) on AVX2: exact everywhere.

So an int8 file is exact on a CPU kind when its u8×s8 layers cannot saturate there: 7-bit weights
(|w| ≤ 64: two products ≤ 32,640), or a runtime that never pairs u8×s8 in int16. `pair_sum_bound`
computes the worst pair from an ONNX file's own constants: the proof needs no particular machine.
numpy only (the edge side reads this)."""

from __future__ import annotations

from enum import Enum

INT16_MAX = 32767


class CpuKind(str, Enum):
    """The CPU kinds whose int8 arithmetic differs (what a manifest's `int8_exact_on` lists)."""

    X86_AVX2 = "x86-avx2"  # AVX2 without VNNI: u8×s8 pairs summed in a saturating int16
    X86_VNNI = "x86-vnni"  # AVX-512 VNNI or AVX-VNNI: int32 dot products
    X86_AMX = "x86-amx"  # AMX-INT8 tiles (oneDNN, MLAS on Sapphire Rapids and later)
    AARCH64 = "aarch64"  # NEON dot product (sdot/udot) or widening multiplies
    OTHER = "other"  # a CPU none of the above describes (x86 without AVX2, another architecture)


ALL_KINDS = (CpuKind.X86_AVX2, CpuKind.X86_VNNI, CpuKind.X86_AMX, CpuKind.AARCH64)
DOT_PRODUCT_KINDS = (CpuKind.X86_VNNI, CpuKind.X86_AMX, CpuKind.AARCH64)

# The runtimes' int8 kernel families (toolkit.runtimes.RuntimeSpec.int8_kernels): whether they pair
# u8×s8 products in int16 on AVX2.
SATURATING_ON_AVX2 = {"mlas": True, "onednn": True, "fbgemm": True, "xnnpack": False, "cuda": False}


def cpu_kind(flags: dict, machine: str) -> CpuKind:
    """This CPU's kind, from toolkit.machine.cpu_flags and platform.machine()."""
    if machine in ("aarch64", "arm64"):
        return CpuKind.AARCH64
    if machine not in ("x86_64", "AMD64", "i686", "x86"):
        return CpuKind.OTHER
    if flags.get("amx_int8") or flags.get("amx_tile"):
        return CpuKind.X86_AMX
    if flags.get("avx512_vnni") or flags.get("avx_vnni"):
        return CpuKind.X86_VNNI
    return CpuKind.X86_AVX2 if flags.get("avx2") else CpuKind.OTHER


def capped(kind: CpuKind, isa_cap: str | None, kernels: str) -> CpuKind:
    """The kind a runtime's int8 kernels behave as under an ISA cap it honours (oneDNN's
    ONEDNN_MAX_CPU_ISA=AVX2 on a VNNI or AMX machine takes the AVX2 path)."""
    if isa_cap == "avx2" and kernels == "onednn" and kind in (CpuKind.X86_VNNI, CpuKind.X86_AMX):
        return CpuKind.X86_AVX2
    return kind


def arithmetic(kind: CpuKind, kernels: str) -> str:
    """In words: the int8 arithmetic a runtime's kernels take on this CPU kind."""
    if kernels == "cuda":
        return "CUDA int8 (int32 sums)"
    if kind == CpuKind.AARCH64:
        return "NEON dot product or widening multiply (int32 sums)"
    if kind == CpuKind.OTHER:
        return "the runtime's generic int8 kernels"
    if kernels == "xnnpack":
        return {CpuKind.X86_AMX: "AVX-512 VNNI (int32 sums)", CpuKind.X86_VNNI: "AVX-512 VNNI (int32 sums)"}.get(
            kind, "AVX2, widened to int16 before multiplying (no pair saturation)")
    if kind == CpuKind.X86_AMX and kernels in ("onednn", "mlas"):
        return "AMX-INT8 tiles (int32 sums)"
    if kind in (CpuKind.X86_AMX, CpuKind.X86_VNNI):
        return "VNNI vpdpbusd (int32 sums)"
    return "AVX2 u8×s8 pair sums in int16 (vpmaddubsw: saturates past 32,767)"


def exact_on(kernels: str, bounded: bool) -> list[str]:
    """The CPU kinds on which an int8 file run by `kernels` computes what its arithmetic says: all of
    them where the kernels never pair u8×s8 in int16 or the file's pairs fit (`bounded`), else only
    the kinds with dot-product instructions."""
    kinds = ALL_KINDS if bounded or not SATURATING_ON_AVX2.get(kernels, True) else DOT_PRODUCT_KINDS
    return [k.value for k in kinds]


def pair_sum_bound(weights: list, activation_max: int = 255) -> int:
    """The largest sum of two u8×s8 products any output of these int8 weight tensors can form: the two
    largest |w| of each output channel (a conservative bound whatever order a kernel pairs them in)
    times the activation's largest value. `weights`: numpy int8 arrays, output channels first."""
    import numpy as np

    worst = 0
    for w in weights:
        a = np.abs(np.asarray(w, dtype=np.int32)).reshape(len(w), -1) if np.ndim(w) > 1 else \
            np.abs(np.asarray(w, dtype=np.int32)).reshape(1, -1)
        if a.shape[1] == 0:
            continue
        top = np.sort(a, axis=1)[:, -2:].sum(axis=1) if a.shape[1] > 1 else a[:, 0]
        worst = max(worst, int(top.max()) * activation_max)
    return worst
