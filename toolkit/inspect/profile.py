"""`mnisttk inspect`: why an int8 model is what it is — per layer, its error and its time — measured
on ONNX Runtime's CPU provider (torch-free: numpy + onnxruntime).

- **Time**: for each ONNX artifact (fp32, int8), every kernel ONNX Runtime ran after its graph
  optimizations — the model's layers (named conv1, conv2, fc1 … by export) and what the runtime
  inserted (layout reorders, (de)quantize nodes) — with its median time per image over repeated
  profiled runs at verify's batch and thread count, its share, and the provider that ran it.
- **Error** (`toolkit.inspect.layer_error`): per layer of the int8 model, SQNR, cosine and max |Δ| of its
  output against the fp32 model's, accumulated and isolated; weight SQNR; scales; whether an int8
  kernel ran for it.
- **Flips**: the test images whose top-1 the int8 model changed, and its confusion matrix.
- **Not a digit**: with the export's rule (toolkit.ood), how often the int8 model's accept/reject
  decisions are the fp32 model's, on the test set and the synthetic non-digits, and which images changed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from toolkit.contract import softmax
from toolkit.errors import ManifestError, ToolkitError, first_line
from toolkit.manifest import check_hashes, classes_of, confined_path, load_manifest, ood_rule
from toolkit.runtimes.ort_session import Model, SessionOptions, is_int8_kernel

WARMUP_RUNS = 5
ROUNDS = 3  # the models' profiled runs, interleaved: fp32 and int8 alternate, round by round


def profile_models(specs: dict, images_u8: np.ndarray, batch: int, threads: int, repeats: int,
                   rounds: int = ROUNDS) -> dict:
    """Per-node median µs per image of each model (`specs`: precision -> (path, SessionOptions, sha256))
    over `repeats` profiled runs of one batch, after warm-up runs. The runs are spread over `rounds`
    rounds, the models in turn (rotated each round), so that a busy spell slows both: each round's
    int8/fp32 time ratio, the machine's load in it, and why the timing is NOISY where it is."""
    from time import perf_counter, process_time

    from toolkit.timing import NOISY_SPREAD, cpu_snapshot, load_between, noise, rotated

    models = {p: Model(path, "cpu", replace(options, threads=threads, profile=True), expected_sha256=sha, fmt="onnx")
              for p, (path, options, sha) in specs.items()}
    inputs = {p: m.prepare(images_u8[:batch]) for p, m in models.items()}
    for p, m in models.items():
        for _ in range(WARMUP_RUNS):
            m.run(inputs[p])
    per_round = max(1, -(-repeats // rounds))
    walls: dict[str, list] = {p: [] for p in models}
    cpus: dict[str, list] = {p: [] for p in models}  # CPU-µs per image: verify's measure, which holds under load
    loads = []
    for r in range(rounds):
        before = cpu_snapshot()
        for p in rotated(list(models), r):
            times = []
            c0 = process_time()
            for _ in range(per_round):
                t0 = perf_counter()
                models[p].run(inputs[p])
                times.append(perf_counter() - t0)
            walls[p].append(float(np.median(times)) * 1e6 / len(inputs[p]))
            cpus[p].append((process_time() - c0) * 1e6 / (per_round * len(inputs[p])))
        loads.append(load_between(before, cpu_snapshot(), own_cores=threads))
    out = {p: _node_summary(m, len(inputs[p]), threads, per_round * rounds) for p, m in models.items()}
    for p in out:  # the whole runs in verify's unit beside the kernels' wall time
        out[p]["cpu_us_per_image"] = float(np.median(cpus[p]))
    timing: dict = {"rounds": rounds, "runs_per_round": per_round, "machine_load": loads,
                    "us_per_image_by_round": walls, "cpu_us_per_image_by_round": cpus}
    if "fp32" in walls and "int8" in walls:
        ratios = [i / f for i, f in zip(walls["int8"], walls["fp32"], strict=True)]
        timing["int8_over_fp32_by_round"] = [round(x, 4) for x in ratios]
        why = noise(loads, [])
        if max(ratios) / min(ratios) > NOISY_SPREAD:
            why.append(f"the int8/fp32 time ratio varied {max(ratios) / min(ratios):.2f}× over the rounds")
        timing["noisy"] = why
    return {"models": out, "timing": timing}


def _node_summary(model: Model, n: int, threads: int, repeats: int) -> dict:
    """The profile's per-node median µs per image (the warm-up runs left out)."""
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


def profile_model(path: Path, images_u8: np.ndarray, batch: int, threads: int, repeats: int,
                  options: SessionOptions, sha256: str | None = None) -> dict:
    """One model's per-node median µs per image (profile_models, alone)."""
    return profile_models({"model": (path, options, sha256)}, images_u8, batch, threads, repeats)["models"]["model"]


_SUFFIX = re.compile(r"(_nchwc|_token_\d+)+$")


def node_layer(node: str, layers: list) -> str | None:
    """The model layer (conv1, conv2, fc1 …) an ONNX Runtime node belongs to, by its name: the layer's
    own, its output's, or a name of its block ("conv1_maxpool"); None where the name does not say
    (layout reorders, (de)quantize nodes, pools ORT renamed)."""
    base = _SUFFIX.sub("", node.removeprefix("fused "))
    for layer in layers:
        if base in (layer["layer"], layer["tensor"]) or base.startswith(layer["layer"] + "_"):
            return layer["layer"]
    return None


def _layer_time(layer: dict, model: dict) -> tuple[float, list]:
    """µs per image of the kernels that ran this layer (by name: the layer's, or its output's, as
    ONNX Runtime names fused nodes), and their ops."""
    names = {layer["layer"], layer["tensor"]}
    # ORT renames what it fuses: "relu_1_nchwc", "conv2_token_1", "fused fc1"
    hits = [nd for nd in model["nodes"] if _SUFFIX.sub("", nd["node"].removeprefix("fused ")) in names]
    return sum(nd["us_per_image"] for nd in hits), sorted({nd["op"] for nd in hits})


def run_inspect(folder: Path, images_u8: np.ndarray, labels: np.ndarray | None = None, batch: int = 256,
                threads: int = 1, repeats: int = 20, n_images: int = 1000) -> dict:
    from toolkit.inspect.layer_error import layer_errors
    from toolkit.runtimes.candidate import read_model_bytes

    manifest = load_manifest(folder)
    bad = {r["file"]: r["status"] for r in check_hashes(folder, manifest) if r["status"] != "ok"}
    onnx = {a["precision"]: a for a in manifest["artifacts"] if a["format"] == "onnx"}
    if "int8" not in onnx:
        raise ManifestError(f"{folder / 'manifest.json'}: no int8 ONNX model to inspect (run `mnisttk export --quantize`)")
    specs, data = {}, {}
    for precision, a in onnx.items():
        if a["file"] in bad:
            raise ManifestError(f"{folder / a['file']}: {bad[a['file']]} since export; re-run `mnisttk export`")
        path = confined_path(folder, a["file"])
        data[precision] = read_model_bytes(path, a["sha256"], "onnx")[0]
        # the session verify uses: int8 without ORT's NCHWc layout (see SessionOptions.nchwc)
        specs[precision] = (path, SessionOptions(nchwc=precision != "int8"), a["sha256"])
    profiled = profile_models(specs, images_u8, batch, threads, repeats)
    models = {p: {"file": onnx[p]["file"], **m} for p, m in profiled["models"].items()}
    ratio = models["int8"]["total_us_per_image"] / models["fp32"]["total_us_per_image"]
    # per-layer error on the first n_images test images, each model fed its own input type
    sample = images_u8[:n_images]
    fp32_model = Model(confined_path(folder, onnx["fp32"]["file"]), "cpu", expected_sha256=onnx["fp32"]["sha256"],
                       fmt="onnx")
    int8_model = Model(confined_path(folder, onnx["int8"]["file"]), "cpu", expected_sha256=onnx["int8"]["sha256"],
                       fmt="onnx")
    try:
        errors = layer_errors(data["fp32"], data["int8"], fp32_model.prepare(sample), int8_model.prepare(sample),
                              threads)
    except ToolkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - models that are not an fp32/int8 pair of ours (swapped, foreign graphs)
        raise ManifestError(f"{folder}: cannot compare {onnx['fp32']['file']} and {onnx['int8']['file']} layer "
                            f"by layer ({type(exc).__name__}: {first_line(exc, 120)}); are they an fp32/int8 "
                            "pair from one export?") from None
    for layer in errors["layers"]:
        layer["fp32_us_per_image"], layer["fp32_ops"] = _layer_time(layer, models["fp32"])
        layer["int8_us_per_image"], layer["int8_ops"] = _layer_time(layer, models["int8"])
        layer["int8_kernel"] = any(is_int8_kernel(op) for op in layer["int8_ops"])
    for model in models.values():
        for nd in model["nodes"]:
            nd["layer"] = node_layer(nd["node"], errors["layers"])
    # flips and confusion on the whole test set, the deployed sessions as verify runs them
    fp32_logits, int8_logits = fp32_model.logits(images_u8), int8_model.logits(images_u8)
    fp32_pred, int8_pred = fp32_logits.argmax(1), int8_logits.argmax(1)
    flips = np.flatnonzero(fp32_pred != int8_pred)
    probs = softmax(int8_logits[flips].astype(np.float64))
    fp32_probs = softmax(fp32_logits[flips].astype(np.float64))
    flip_rows = [{"index": int(i), "label": None if labels is None else int(labels[i]), "fp32": int(fp32_pred[i]),
                  "int8": int(int8_pred[i]), "fp32_p": float(fp32_probs[k, fp32_pred[i]]),
                  "int8_p": float(probs[k, int8_pred[i]])} for k, i in enumerate(flips)]
    confusion = None
    if labels is not None:
        c_n = int(int8_logits.shape[1])
        counts = np.zeros((c_n, c_n), np.int64)
        np.add.at(counts, (labels.astype(np.int64), int8_pred), 1)
        confusion = counts.tolist()
    return {"schema_version": 2, "folder": str(folder), "models": models, "int8_over_fp32_node_time": ratio,
            "timing": profiled["timing"],
            "error": errors, "flips": flip_rows, "n_test": int(len(images_u8)), "confusion_int8": confusion,
            "executorch": _executorch_error(folder, manifest, bad, sample, threads),
            "classes": list(classes_of(manifest)),
            "not_a_digit": _ood_decisions(folder, manifest, images_u8, fp32_logits, int8_logits, fp32_model, int8_model)}


MAX_CHANGED = 20  # decisions listed by image; the counts cover them all


def _ood_decisions(folder: Path, manifest: dict, images_u8, fp32_logits, int8_logits, fp32_model, int8_model):
    """int8 against fp32 under the export's not-a-digit rule, or None when the export has none."""
    from toolkit import ood

    rule = ood_rule(manifest, folder)
    if rule is None:
        return None
    non_digits = ood.non_digit_images(tuple(np.shape(images_u8)[1:]))
    out = {}
    for name, images, z32, z8 in (("test", images_u8, fp32_logits, int8_logits),
                                  ("non_digits", non_digits, fp32_model.logits(non_digits), int8_model.logits(non_digits))):
        features = ood.rule_features(rule, images)
        a32 = ood.decide(rule, images, z32, features=features)["accepted"]
        a8 = ood.decide(rule, images, z8, features=features)["accepted"]
        changed = np.flatnonzero(a32 != a8)
        out[name] = {"images": int(len(images)), "agreement": float((a32 == a8).mean()),
                     "fp32_accepted": float(a32.mean()), "int8_accepted": float(a8.mean()),
                     "changed": [{"index": int(i), "fp32": "accepted" if a32[i] else "rejected",
                                  "int8": "accepted" if a8[i] else "rejected"} for i in changed[:MAX_CHANGED]],
                     "n_changed": int(len(changed))}
    return out


def _executorch_error(folder: Path, manifest: dict, bad: dict, sample: np.ndarray, threads: int) -> dict | None:
    """The int8 .pte against the fp32 .pte, where both were exported and ExecuTorch (with torch) is
    here: logits only — XNNPACK runs the layers as delegated subgraphs whose insides ExecuTorch does
    not expose, so there is no per-layer tensor to compare."""
    pte = {a["precision"]: a for a in manifest["artifacts"] if a["format"] == "executorch"}
    if set(pte) != {"fp32", "int8"}:
        return None
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("executorch") is None:
        return {"skipped": "needs torch and executorch (pip install 'mnisttk[executorch]')"}
    for a in pte.values():
        if a["file"] in bad:
            raise ManifestError(f"{folder / a['file']}: {bad[a['file']]} since export; re-run `mnisttk export`")
    from toolkit.inspect.layer_error import error_stats
    from toolkit.runtimes import build, cpu_runtime

    spec = cpu_runtime("executorch")
    assert spec is not None, "the registry has ExecuTorch's CPU runtime"
    # built as verify builds its rows: the manifest's class count and input checked against the program's
    logits = {p: build(spec, folder, a, threads).logits(sample) for p, a in pte.items()}
    return {"files": {p: a["file"] for p, a in pte.items()}, "images": int(len(sample)),
            "logits": error_stats(logits["fp32"], logits["int8"]),
            "agreement": float((logits["int8"].argmax(1) == logits["fp32"].argmax(1)).mean()),
            "per_layer": "not observable: XNNPACK runs the layers as delegated subgraphs"}


def _fmt_scale(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, dict):
        return f"{v['min']:.2g}..{v['max']:.2g}×{v['per_channel']}"
    return f"{v:.3g}"


LAYER_COLUMNS = ["layer", "op", "int8 model ran", "SQNR acc", "SQNR iso", "cos acc", "max|Δ| acc",
                 "W SQNR", "in / out scale", "µs fp32", "µs int8"]
WIDE_COLUMNS = LAYER_COLUMNS[:-2] + ["W scales"] + LAYER_COLUMNS[-2:]  # Markdown and JSON have the weight scales


def layer_cells(layer: dict, wide: bool = False) -> list[str]:
    acc, iso, w = layer["accumulated"], layer.get("isolated"), layer.get("weight")
    sc = layer.get("scales", {})
    ran = "/".join(layer["int8_ops"]) or "—"
    cells = [layer["layer"], layer["op"], ran if layer["quantized"] else f"{ran} (fp32)", f"{acc['sqnr_db']:.1f}",
             "—" if not iso else f"{iso['sqnr_db']:.1f}", f"{acc['cosine']:.5f}", f"{acc['max_abs_diff']:.3g}",
             "—" if not w else f"{w['sqnr_db']:.1f}", f"{_fmt_scale(sc.get('input'))} / {_fmt_scale(sc.get('output'))}"]
    if wide:
        cells.append(_fmt_scale(sc.get("weight")))
    return cells + [f"{layer['fp32_us_per_image']:.2f}", f"{layer['int8_us_per_image']:.2f}"]


def format_inspect(result: dict, top: int = 12) -> str:
    lines = []
    err = result.get("error")
    if err:
        rows = [LAYER_COLUMNS] + [layer_cells(layer) for layer in err["layers"]]
        widths = [max(len(r[i]) for r in rows) for i in range(len(LAYER_COLUMNS))]
        lines.append(f"per layer, int8 vs fp32 on {err['images']:,} test images (SQNR in dB; acc: in the int8 graph, "
                     "iso: only that layer int8)")
        for k, r in enumerate(rows):
            lines.append("  " + "  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
            if k == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        worst = min((layer for layer in err["layers"] if layer.get("isolated")), key=lambda x: x["isolated"]["sqnr_db"])
        lines.append(f"  logits SQNR {err['logits']['sqnr_db']:.1f} dB, top-1 agreement {err['int8_agreement']:.2%}; "
                     f"most error on its own: {worst['layer']} ({worst['isolated']['sqnr_db']:.1f} dB isolated, "
                     f"{worst['isolated_agreement']:.2%} agreement)")
        for layer in err["layers"]:
            rng = layer.get("range")
            if rng:
                (lo, hi), (tlo, thi) = rng["calibrated"], rng["test"]
                lines.append(f"  {layer['layer']} output: calibrated [{lo:.3g}, {hi:.3g}], test images reach "
                             f"[{tlo:.3g}, {thi:.3g}]: {rng['clipped_pct']:.3f}% of values clipped"
                             + (" ← CLIPPING" if rng["clipping"] else ""))
        flips = result.get("flips", [])
        shown = ", ".join(f"#{f['index']} {f['fp32']}→{f['int8']}" + ("" if f["label"] is None else f" (true {f['label']})")
                          for f in flips[:4])
        lines.append(f"  int8 changed {len(flips)} of {result['n_test']:,} test predictions" + (f": {shown}" if flips else "")
                     + (" …" if len(flips) > 4 else ""))
        nd = result.get("not_a_digit")
        if nd:
            t, n = nd["test"], nd["non_digits"]
            shown = ", ".join(f"#{c['index']} {c['fp32']}→{c['int8']}" for c in t["changed"][:4])
            from toolkit.ood import rule_words

            rule, _, others = rule_words(result.get("classes"))
            lines.append(f"  {rule} decisions (the export's rule): int8 as fp32 on {t['agreement']:.2%} of test images"
                         f" ({t['n_changed']} changed{': ' + shown if shown else ''}{' …' if t['n_changed'] > 4 else ''})"
                         f" and {n['agreement']:.2%} of {n['images']} {others}; accepted: test "
                         f"{t['int8_accepted']:.2%} (fp32 {t['fp32_accepted']:.2%}), {others} {n['int8_accepted']:.2%} "
                         f"(fp32 {n['fp32_accepted']:.2%})")
        et = result.get("executorch")
        if et and "logits" in et:
            lines.append(f"  ExecuTorch {et['files']['int8']} vs {et['files']['fp32']}: logits SQNR {et['logits']['sqnr_db']:.1f} dB, "
                         f"agreement {et['agreement']:.2%} ({et['images']:,} images; per layer not observable)")
        elif et:
            lines.append(f"  ExecuTorch: skipped ({et['skipped']})")
        lines.append("")
    for precision, m in result["models"].items():
        lines.append(f"{m['file']} ({precision}): {m['total_us_per_image']:.2f} µs per image in kernels (wall, ONNX "
                     f"Runtime's profiler), batch {m['batch']}, {m['threads']} thread(s), median of {m['repeats']} runs")
        if m.get("cpu_us_per_image"):
            lines.append(f"  whole runs: {m['cpu_us_per_image']:.2f} CPU-µs per image = "
                         f"{1e6 / m['cpu_us_per_image']:,.0f} images per CPU-second (verify's img/s measure; "
                         "profiling adds its own cost)")
        lines.append(f"  {'node':<34} {'op':<22} {'provider':<8} {'µs/img':>8} {'share':>6}")
        for nd in m["nodes"][:top]:
            lines.append(f"  {nd['node'][:34]:<34} {nd['op'][:22]:<22} {nd['provider']:<8} {nd['us_per_image']:>8.3f} "
                         f"{nd['share']:>6.1%}")
        if len(m["nodes"]) > top:
            rest = m["nodes"][top:]
            lines.append(f"  … {len(rest)} more nodes, {sum(n['us_per_image'] for n in rest):.3f} µs/img")
        lines.append("")
    if result.get("int8_over_fp32_node_time"):
        t = result.get("timing") or {}
        by_round = t.get("int8_over_fp32_by_round") or []
        spread = f" (whole runs, by round: {', '.join(f'{x:.2f}×' for x in by_round)})" if by_round else ""
        lines.append(f"int8 kernel time is {result['int8_over_fp32_node_time']:.2f}× fp32's{spread}"
                     + (" — NOISY: " + "; ".join(t["noisy"]) if t.get("noisy") else ""))
    from toolkit.width import fit

    return fit("\n".join(lines).rstrip())
