"""exported/manifest.json: what each artifact is, its hash and size, how it was made.
Standard library only: verify reads it on the edge."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from toolkit.errors import ManifestError
from toolkit.fsutil import atomic_write_bytes, sha256_file

MANIFEST_NAME = "manifest.json"
REFERENCE_NAME = "reference.npz"


def io_spec(fmt: str, precision: str, uint8_input: bool) -> dict:
    dtype = "uint8" if uint8_input else "float32"
    value = "raw pixels 0-255" if uint8_input else "pixel/255 in [0, 1]"
    name = "image" if fmt == "onnx" else "input"
    return {"inputs": [{"name": name, "dtype": dtype, "shape": ["batch", 1, 28, 28], "values": value}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]}


def artifact_entry(path: Path, fmt: str, precision: str, quant_params: dict | None, opset: int | None,
                   test_accuracy: float, uint8_input: bool = False) -> dict:
    entry = {
        "file": path.name,
        "format": fmt,
        "precision": precision,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        **io_spec(fmt, precision, uint8_input),
        "opset": opset,
        "test_accuracy": test_accuracy,
    }
    if quant_params is not None:
        entry["quant_params"] = quant_params
    return entry


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


def write_manifest(path: Path, manifest: dict) -> None:
    atomic_write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())


def load_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (run `mnisttk export --quantize` first)")
    try:
        manifest = json.loads(path.read_text())
        manifest["artifacts"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: not a readable mnisttk manifest ({exc})") from None
    return manifest


def check_hashes(folder: Path, manifest: dict) -> list[dict]:
    """One record per listed file (artifacts and the reference): ok, missing or changed."""
    entries = [*manifest["artifacts"], {"file": manifest["reference"]["file"], "sha256": manifest["reference"]["sha256"]}]
    results = []
    for entry in entries:
        path = Path(folder) / entry["file"]
        if not path.is_file():
            results.append({"file": entry["file"], "status": "missing"})
        elif sha256_file(path) != entry["sha256"]:
            results.append({"file": entry["file"], "status": "changed"})
        else:
            results.append({"file": entry["file"], "status": "ok"})
    return results
