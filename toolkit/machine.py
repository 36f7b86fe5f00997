"""What machine this is: the CPU's model and the instruction sets that decide int8 speed, and the
platform. Standard library only (the edge side and the manifest both record it)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_flags() -> dict:
    flags = set()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags, "amx_int8": "amx_int8" in flags}


def machine_info(gpu_name: str | None = None) -> dict:
    return {"cpu": cpu_flags(), "gpu": gpu_name, "platform": platform.platform()}
