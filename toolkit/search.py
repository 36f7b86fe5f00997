"""`mnisttk export --quantize --search`: a measured search over the int8 ONNX model's per-layer
precision. Every candidate — the first conv as fp32, im2col or int8, and each later Conv/Gemm/MatMul
block int8 or fp32 — is quantized with the export's calibration, scored on the full test set under
verify's gates, and timed on ONNX Runtime CPU (1 thread; batch-1 p50 and batch-256 throughput;
the candidates and fp32 interleaved round by round, medians). The fastest candidate that passes
the gates is the export's int8 model; the whole table goes into the manifest under `search`.

"Speed" is one number per round: the geometric mean of the candidate's batch-1 p50 and batch-256 time
per image, each relative to fp32's in the same round (below 1: faster than fp32); a candidate's speed
is the median over rounds and its spread the range. The default recipe (what `export --quantize`
writes without --search; if it fails the gates, the passing candidate with the most int8 layers) is
kept unless a passing candidate is faster **beyond the spread**: its slowest round faster than the
kept one's fastest round. Among such candidates the fastest wins (then the one with more int8 layers).
A loaded machine widens the spreads and so keeps the default: noise cannot pick the shipped model."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from toolkit.config import Gates, QuantConfig
from toolkit.errors import ExportError
from toolkit.gates import Measurement, evaluate, saturation

ROUNDS = 5  # interleaved timing rounds (toolkit.timing), the spread of each candidate's speed over them
LATENCY_ITERS = 200
BATCH = 256


def later_layers(fp32_onnx: Path) -> tuple[list[str], bool]:
    """The Conv/Gemm/MatMul node names after the first conv (all of them without a conv), and
    whether the model has a conv (then the first conv's variants are searched too)."""
    import onnx

    nodes = [n for n in onnx.load(str(fp32_onnx), load_external_data=False).graph.node
             if n.op_type in ("Conv", "Gemm", "MatMul")]
    has_conv = bool(nodes) and nodes[0].op_type == "Conv"
    return [n.name for n in (nodes[1:] if has_conv else nodes)], has_conv


def candidates(base: QuantConfig, layers: list[str], has_conv: bool) -> list[QuantConfig]:
    firsts: tuple[str, ...] = ("fp32", "im2col", "int8") if has_conv else (base.first_conv,)
    if base.quant_format != "qdq":
        firsts = tuple(f for f in firsts if f != "im2col")
    out = []
    for first in firsts:
        for keep in itertools.product((False, True), repeat=len(layers)):
            kept = tuple(name for name, k in zip(layers, keep, strict=True) if k)
            if len(kept) == len(layers) and (first == "fp32" or not has_conv):
                continue  # nothing left in int8
            out.append(replace(base, first_conv=first, keep_fp32=kept))
    return out


def describe(q: QuantConfig, layers: list[str], has_conv: bool) -> dict:
    precisions = {}
    if has_conv:
        precisions["first conv"] = q.first_conv
    for name in layers:
        precisions[name] = "fp32" if name in q.keep_fp32 else "int8"
    return precisions


def _time(runners: list, images_u8: np.ndarray, rounds: int = ROUNDS) -> dict:
    """Every runner timed once per round, the runners interleaved (toolkit.timing's loops); per runner its
    per-round p50, throughput and speed relative to runner 0 (fp32) in the same round; the machine's
    load per round."""
    from toolkit.timing import cpu_snapshot, latency_us, load_between, rotated, throughput

    x1 = [r.bench_input(images_u8[:1]) for r in runners]
    xb = [r.bench_input(images_u8[:BATCH]) for r in runners]
    p50 = np.zeros((len(runners), rounds))
    tp = np.zeros((len(runners), rounds))
    load = []
    for k in range(rounds):
        start = cpu_snapshot()
        for i in rotated(list(range(len(runners))), k):
            p50[i, k] = latency_us(runners[i], x1[i], warmup=20, iters=LATENCY_ITERS)["p50"]
            tp[i, k] = throughput(runners[i], xb[i], repeats=3)
        load.append(load_between(start, cpu_snapshot(), 1))
    speed = np.sqrt((p50 / p50[0]) / (tp / tp[0]))  # per runner, per round
    return {"p50": np.median(p50, 1).tolist(), "tp": np.median(tp, 1).tolist(),
            "p50_ratio": np.median(p50 / p50[0], 1).tolist(), "tp_ratio": np.median(tp / tp[0], 1).tolist(),
            "speed_rounds": speed.tolist(), "machine_load": load}


def choose(rows: list[dict], default: int) -> int:
    """Index of the candidate to ship among `rows` (each with `passed`, `speed_rounds` and `int8_layers`):
    the default (`default`; if it fails, the passing one with the most int8 layers, then the faster) unless
    a passing candidate's slowest round is faster than its fastest round; then the fastest of those."""
    passing = [i for i, r in enumerate(rows) if r["passed"]]
    if not passing:
        raise ValueError("no candidate passes")
    med = {i: float(np.median(rows[i]["speed_rounds"])) for i in passing}
    kept = default if default in passing else max(passing, key=lambda i: (rows[i]["int8_layers"], -med[i]))
    floor = min(rows[kept]["speed_rounds"])
    beyond = [i for i in passing if max(rows[i]["speed_rounds"]) < floor]
    if not beyond:
        return kept
    return min(beyond, key=lambda i: (med[i], -rows[i]["int8_layers"]))


def evaluate_candidates(fp32_onnx: Path, paths: list[Path], images_u8: np.ndarray, labels: np.ndarray, ref_logits: np.ndarray,
             gates: Gates) -> tuple[list[dict], dict]:
    """Every candidate file scored on the test set, then all of them and the fp32 file timed in interleaved
    rounds: (the scores, the timing). Runs here, or on a cluster node (toolkit.cluster.search_on_cluster)."""
    ref_pred = ref_logits.argmax(1)
    ref_acc = float((ref_pred == labels).mean())
    classes = ref_logits.shape[1]
    runners = [_onnx(fp32_onnx, "fp32", classes)]
    scores = []
    for path in paths:
        cand = _onnx(path, "int8", classes)
        scores.append(_scored(cand, images_u8, labels, ref_pred, ref_acc, gates))
        runners.append(cand)
    return scores, _time(runners, images_u8)


def run_search(fp32_onnx: Path, calib: np.ndarray, base: QuantConfig, images_u8: np.ndarray, labels: np.ndarray,
               ref_logits: np.ndarray, gates: Gates = Gates(), log: Callable[[str], None] = lambda s: None,
               evaluator: Callable | None = None) -> dict:
    """Quantize, score and time every candidate; returns {'chosen': QuantConfig, 'table': [...], ...}.
    `evaluator`: where the candidates are scored and timed (`evaluate_candidates`'s signature; default: here, on this
    machine; `export --search --cluster`: on the node kind the user targets)."""
    from toolkit.exporters.quantize import onnx_static_int8

    layers, has_conv = later_layers(fp32_onnx)
    configs = candidates(base, layers, has_conv)
    ref_pred = ref_logits.argmax(1)
    ref_acc = float((ref_pred == labels).mean())
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mnisttk-search-") as tmp:
        paths = []
        for i, q in enumerate(configs):
            paths.append(Path(tmp) / f"candidate_{i}.onnx")
            onnx_static_int8(fp32_onnx, paths[-1], calib, q)
        scores, timing = (evaluator or evaluate_candidates)(fp32_onnx, paths, images_u8, labels, ref_logits, gates)
        for i, (q, scored) in enumerate(zip(configs, scores, strict=True)):
            acc, agreement, reasons = scored["accuracy"], scored["agreement"], scored["reasons"]
            rows.append({"precision": describe(q, layers, has_conv), **scored, "_config": q})
            log(f"search: candidate {i + 1}/{len(configs)} {_label(rows[-1]['precision'])}: "
                f"accuracy {acc:.2%}, agreement {agreement:.2%}{'' if not reasons else ' (fails: ' + '; '.join(reasons) + ')'}")
    fp32_row = {"precision": {k: "fp32" for k in describe(base, layers, has_conv)}, "accuracy": ref_acc,
                "agreement": 1.0, "flipped": 0, "passed": None, "reasons": ["the fp32 baseline"]}
    for k, row in enumerate([fp32_row] + rows):
        speeds = timing["speed_rounds"][k]
        row.update(p50_us=timing["p50"][k], throughput=timing["tp"][k], p50_ratio=timing["p50_ratio"][k],
                   throughput_ratio=timing["tp_ratio"][k], speed=float(np.median(speeds)), speed_rounds=speeds,
                   speed_spread=[min(speeds), max(speeds)],
                   int8_layers=sum(v != "fp32" for v in row["precision"].values()))
    if not any(r["passed"] for r in rows):
        raise ExportError(f"--search: none of the {len(rows)} candidates passes verify's gates "
                          f"(best agreement {max(r['agreement'] for r in rows):.2%}); nothing was written")
    default = next((i for i, r in enumerate(rows) if r["_config"] == base), -1)
    best = rows[choose(rows, default)]
    for r in rows:
        r["chosen"] = r is best
        r["default"] = r["_config"] == base
    table = [{k: v for k, v in r.items() if k != "_config"} for r in [fp32_row] + rows]
    return {"chosen": best["_config"], "table": table,
            "criterion": "the default recipe (if it passes verify's gates; else the passing candidate with the most "
                         "int8 layers) unless a passing candidate is faster beyond the spread over rounds (its slowest "
                         "round's sqrt(p50 ratio × batch-256 time ratio) to fp32 below the kept one's fastest); then "
                         "the fastest of those",
            "gates": {"int8_max_drop_points": gates.int8_max_drop_points,
                      "int8_min_agreement_pct": gates.int8_min_agreement_pct},
            "timing": {"threads": 1, "batch": BATCH, "rounds": ROUNDS, "latency_iters": LATENCY_ITERS,
                       "machine_load": timing["machine_load"], **({"node": timing["node"]} if "node" in timing else {})}}


def _onnx(path: Path, precision: str, num_classes: int):
    """An ONNX Runtime CPU runner (1 thread) of a candidate file, checked for `num_classes` logits."""
    from toolkit.runtimes.onnxruntime import OnnxCandidate

    cand = OnnxCandidate(path, precision, "cpu", 1)
    cand.num_classes = num_classes
    return cand


def _scored(cand, images_u8: np.ndarray, labels: np.ndarray, ref_pred: np.ndarray, ref_acc: float,
            gates: Gates) -> dict:
    """One int8 candidate on the test set under verify's gates (the same function verify judges with)."""
    logits = cand.logits(images_u8)
    pred = logits.argmax(1)
    sat = saturation(logits, cand.output_limits())
    acc, agreement = float((pred == labels).mean()), float((pred == ref_pred).mean())
    found = cand.placement()
    measured = Measurement("int8", accuracy_drop_points=(ref_acc - acc) * 100, agreement_pct=agreement * 100,
                           int8_kernels=list(found.int8_kernels or ()) if found else [],
                           clipped_top_pct=sat["clipped_top_pct"] if sat else None)
    reasons = [r.text() for r in evaluate(measured, gates)]
    return {"accuracy": acc, "agreement": agreement, "flipped": int((pred != ref_pred).sum()), "passed": not reasons,
            "reasons": reasons}


MAX_FALLBACK_LAYERS = 24  # layers ranked one by one; a larger model keeps its default recipe and the evidence


def fallback(fp32_onnx: Path, calib: np.ndarray, base: QuantConfig, images_u8: np.ndarray, labels: np.ndarray,
             ref_logits: np.ndarray, gates: Gates = Gates(),
             log: Callable[[str], None] = lambda s: None) -> tuple[QuantConfig, dict | None]:
    """What `export --quantize` does by itself when the default int8 ONNX model fails verify's gates: each
    later layer is tried alone in fp32 and ranked by the agreement that buys (the layer int8 costs the
    most first); then the costliest layers are kept in fp32, one more at a time, until the gates hold.
    Returns the recipe to write and the evidence (None where the default passed): every step measured
    on the full test set, so the manifest shows why each layer is fp32 — or why no recipe passes."""
    from toolkit.exporters.quantize import onnx_static_int8

    ref_pred = ref_logits.argmax(1)
    ref_acc = float((ref_pred == labels).mean())
    layers, _ = later_layers(fp32_onnx)
    with tempfile.TemporaryDirectory(prefix="mnisttk-fallback-") as tmp:
        def score(q: QuantConfig, name: str) -> dict:
            path = Path(tmp) / f"{name}.onnx"
            onnx_static_int8(fp32_onnx, path, calib, q)
            return _scored(_onnx(path, "int8", ref_logits.shape[1]), images_u8, labels, ref_pred, ref_acc, gates)

        default = score(base, "default")
        if default["passed"]:
            return base, None
        log(f"int8: the default recipe fails verify's gates ({'; '.join(default['reasons'])}); keeping the layers "
            "that cost the most in fp32 until they hold")
        evidence: dict = {"default": default, "ranking": [], "steps": [], "kept_fp32": None}
        if len(layers) > MAX_FALLBACK_LAYERS:
            evidence["why"] = f"{len(layers)} layers, more than the {MAX_FALLBACK_LAYERS} ranked one by one"
            return base, evidence
        for i, name in enumerate(layers):
            alone = score(replace(base, keep_fp32=(name,)), f"alone_{i}")
            evidence["ranking"].append({"layer": name, **alone})
        ranked = [r["layer"] for r in sorted(evidence["ranking"], key=lambda r: (-r["agreement"], -r["accuracy"]))]
        for k in range(1, len(ranked) + 1):
            kept = tuple(ranked[:k])
            if len(kept) == len(layers) and base.first_conv == "fp32":
                break  # nothing left in int8
            step = score(replace(base, keep_fp32=kept), f"keep_{k}")
            evidence["steps"].append({"kept_fp32": list(kept), **step})
            log(f"int8: {', '.join(kept)} in fp32: agreement {step['agreement']:.2%}, accuracy {step['accuracy']:.2%}"
                + ("" if not step["reasons"] else f" (fails: {'; '.join(step['reasons'])})"))
            if step["passed"]:
                evidence["kept_fp32"] = list(kept)
                return replace(base, keep_fp32=kept), evidence
    evidence["why"] = "no number of layers kept in fp32 makes the int8 model pass the gates"
    return base, evidence


def _label(precision: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in precision.items())


def format_search(search: dict) -> str:
    layers = list(search["table"][0]["precision"])
    head = [*layers, "acc %", "agree %", "flips", "p50 µs", "p50×", "img/s b256", "b256×", "speed", "range", "gates"]
    rows = [head]
    for r in search["table"]:
        gate = "baseline" if r["passed"] is None else ("PASS" if r["passed"] else "fail") + (
            " (default)" if r.get("default") else "") + (" ← chosen" if r.get("chosen") else "")
        rows.append([*(r["precision"][k] for k in layers), f"{r['accuracy'] * 100:.2f}", f"{r['agreement'] * 100:.2f}",
                     str(r["flipped"]), f"{r['p50_us']:.1f}", f"{r['p50_ratio']:.2f}", f"{r['throughput']:,.0f}",
                     f"{r['throughput_ratio']:.2f}", f"{r['speed']:.2f}",
                     f"{r['speed_spread'][0]:.2f}–{r['speed_spread'][1]:.2f}", gate])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < len(layers) or i == len(head) - 1 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
