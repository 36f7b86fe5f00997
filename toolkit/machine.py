"""What machine this is: the CPU's model and the instruction sets that decide int8 speed, and the
platform. Standard library only (the edge side and the manifest both record it)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The CPU features that change what a runtime chooses to run: int8 kernel families (VNNI, AMX-INT8,
# dot-product and i8mm on ARM) and reduced float modes (OpenVINO's bf16 default on AVX-512 BF16 and AMX,
# f16 on AVX-512 FP16 / AMX-FP16, ARM's bf16 fast-math and SVE/SME kernels). Each is recorded with
# every figure, so a result can be told apart from one made on another CPU.
X86_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",
             "amx_int8", "amx_bf16", "amx_fp16")
ARM_FLAGS = ("asimddp", "i8mm", "bf16", "sve", "sve2", "sme")
CPU_FLAGS = X86_FLAGS + ARM_FLAGS


def cpu_flags(cpuinfo: Path | None = None) -> dict:
    """The CPU's model, cores, and whether it has each of CPU_FLAGS (x86's `flags` line, ARM's
    `Features` line of /proc/cpuinfo), with `flags`: those it has, in CPU_FLAGS's order. MNISTTK_CPUINFO
    names another cpuinfo file: the double a test gives a process (a Ray node) to look like another CPU."""
    if cpuinfo is None:
        cpuinfo = Path(os.environ.get("MNISTTK_CPUINFO") or "/proc/cpuinfo")
    flags: set = set()
    model = platform.processor() or platform.machine()
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features") and not flags:  # every core lists the same
                flags = set(value.split())
            elif key == "model name" and value.strip():
                model = value.strip()
    except OSError:
        pass
    have = {name: name in flags for name in CPU_FLAGS}
    return {"model": model, "cores": os.cpu_count(), **have, "flags": [n for n in CPU_FLAGS if have[n]]}


def machine_info(gpu_name: str | None = None) -> dict:
    return {"cpu": cpu_flags(), "gpu": gpu_name, "platform": platform.platform()}
