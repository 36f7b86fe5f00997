"""`mnisttk inspect`: where an ONNX model's time goes, node by node, measured on ONNX Runtime's CPU
provider with its own profiler at verify's batch and thread count (torch-free: numpy + onnxruntime).

For each ONNX artifact of an export (fp32, int8): every kernel ONNX Runtime ran after its graph
optimizations — the model's layers (named conv1, conv2, fc1 … by export) and what the runtime
inserted (layout reorders, (de)quantize nodes) — with its median time per image over repeated
runs, its share of the total, and the provider that ran it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from toolkit.manifest import check_hashes, confined_path, load_manifest
from toolkit.errors import ManifestError
from toolkit.runtime import Model, SessionOptions

WARMUP_RUNS = 5


def profile_model(path: Path, images_u8: np.ndarray, batch: int, threads: int, repeats: int,
                  options: SessionOptions, sha256: str | None = None) -> dict:
    """Per-node median µs per image over `repeats` profiled runs of one batch (after warm-up runs)."""
    model = Model(path, "cpu", replace(options, threads=threads, profile=True), expected_sha256=sha256)
    x = model.prepare(images_u8[:batch])
    n = len(x)
    for _ in range(WARMUP_RUNS + repeats):
        model.run(x)
    events = model.node_events()
    per_node: dict[str, list] = defaultdict(list)
    meta = {}
    for ev in events:
        per_node[ev["node"]].append(ev["us"])
        meta[ev["node"]] = (ev["op"], ev["provider"].replace("ExecutionProvider", ""))
    nodes = []
    for order, (name, times) in enumerate(per_node.items()):
        measured = times[WARMUP_RUNS:] or times  # the warm-up runs are profiled too
        nodes.append({"node": name, "op": meta[name][0], "provider": meta[name][1], "order": order,
                      "us_per_image": float(np.median(measured)) / n})
    total = sum(nd["us_per_image"] for nd in nodes)
    for nd in nodes:
        nd["share"] = nd["us_per_image"] / total if total else 0.0
    nodes.sort(key=lambda nd: -nd["us_per_image"])
    return {"batch": n, "threads": threads, "repeats": repeats, "total_us_per_image": total, "nodes": nodes}


def run_inspect(folder: Path, images_u8: np.ndarray, batch: int = 256, threads: int = 1, repeats: int = 20) -> dict:
    manifest = load_manifest(folder)
    bad = {r["file"]: r["status"] for r in check_hashes(folder, manifest) if r["status"] != "ok"}
    models = {}
    for a in manifest["artifacts"]:
        if a["format"] != "onnx":
            continue
        if a["file"] in bad:
            raise ManifestError(f"{folder / a['file']}: {bad[a['file']]} since export; re-run `mnisttk export`")
        # the session verify uses: int8 without ORT's NCHWc layout (see SessionOptions.nchwc)
        options = SessionOptions(nchwc=a["precision"] != "int8")
        models[a["precision"]] = {"file": a["file"], **profile_model(
            confined_path(folder, a["file"]), images_u8, batch, threads, repeats, options, a["sha256"])}
    if "fp32" in models and "int8" in models:
        ratio = models["int8"]["total_us_per_image"] / models["fp32"]["total_us_per_image"]
    else:
        ratio = None
    return {"schema_version": 1, "folder": str(folder), "models": models, "int8_over_fp32_node_time": ratio}


def format_inspect(result: dict, top: int = 12) -> str:
    lines = []
    for precision, m in result["models"].items():
        lines.append(f"{m['file']} ({precision}): {m['total_us_per_image']:.2f} µs per image in kernels, batch "
                     f"{m['batch']}, {m['threads']} thread(s), median of {m['repeats']} runs")
        lines.append(f"  {'node':<34} {'op':<22} {'provider':<8} {'µs/img':>8} {'share':>6}")
        for nd in m["nodes"][:top]:
            lines.append(f"  {nd['node'][:34]:<34} {nd['op'][:22]:<22} {nd['provider']:<8} {nd['us_per_image']:>8.3f} "
                         f"{nd['share']:>6.1%}")
        if len(m["nodes"]) > top:
            rest = m["nodes"][top:]
            lines.append(f"  … {len(rest)} more nodes, {sum(n['us_per_image'] for n in rest):.3f} µs/img")
        lines.append("")
    if result.get("int8_over_fp32_node_time"):
        lines.append(f"int8 kernel time is {result['int8_over_fp32_node_time']:.2f}× fp32's")
    return "\n".join(lines).rstrip()
