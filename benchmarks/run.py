"""mnisttk benchmark harness: one run measures training, ONNX Runtime and TorchScript inference,
the int8 levers and `mnisttk verify` end to end, and writes JSON and a Markdown table.

    python benchmarks/run.py                 # everything (about 10 minutes on 2 cores)
    python benchmarks/run.py --quick         # fewer repetitions, no full training run
    python benchmarks/run.py --targets-only  # ONNX Runtime, LiteRT, ExecuTorch, OpenVINO side by side (a minute)

Every run also writes the per-node ONNX Runtime profiles of the fp32 and int8 models (profiles.json).

This machine is shared and noisy: every comparison is a ratio measured inside the same run,
with the models interleaved round by round, and every figure is a median of >= 5 repetitions
after warm-up. It is a benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from toolkit.data import load_mnist, to_model_input  # noqa: E402
from toolkit.machine import cpu_flags  # noqa: E402
from toolkit.metrics import classification_metrics  # noqa: E402
from toolkit.runtimes.candidate import Candidate  # noqa: E402
from toolkit.runtimes.onnxruntime import OnnxCandidate  # noqa: E402
from toolkit.runtimes.ort_session import Model  # noqa: E402
from toolkit.timing import latency_us, throughput  # noqa: E402

MACS_PER_IMAGE = 290_080  # conv1 56,448 + conv2 225,792 + fc 7,840
FP32_PEAK_PER_CORE = 330_000  # images/s: one AVX-512 core at ~2 FMA × 16 lanes


def median(xs):
    return float(np.median(np.asarray(xs, dtype=np.float64)))


def ort_runner(name, path, threads, precision="fp32", optimization="all", nchwc=None, parallel="batch"):
    """verify's own ONNX Runtime candidate (toolkit.runtimes.candidate.Candidate), renamed for the table."""
    cand = OnnxCandidate(Path(path), precision, "cpu", threads, optimization=optimization, nchwc=nchwc,
                         parallel=parallel)
    cand.name = name
    return cand


def ts_runner(name, path, threads):
    """verify's own TorchScript candidate, renamed for the table."""
    from toolkit.runtimes.pytorch import torchscript_candidate

    cand = torchscript_candidate(Path(path), name if name in ("fp32", "int8") else "int8", threads)
    cand.name = name
    return cand


def compare(runners: list[Candidate], images, rounds, lat_iters, batches, baseline: str):
    """Interleaved rounds; each figure a median over rounds, each ratio a median of per-round ratios."""
    x1 = {r.name: r.bench_input(images[:1]) for r in runners}
    xb = {(r.name, b): r.bench_input(images[:b]) for r in runners for b in batches}
    for r in runners:  # warm-up
        with r.scope():
            for _ in range(50):
                r.run(x1[r.name])
            for b in batches:
                r.run(xb[(r.name, b)])
    raw = {r.name: {"p50": [], "p99": [], **{f"tp{b}": [] for b in batches}} for r in runners}
    for _ in range(rounds):
        for r in runners:
            with r.scope():  # its threads (and engine), restored before the next runner
                lat = latency_us(r, x1[r.name], warmup=0, iters=lat_iters)
                raw[r.name]["p50"].append(lat["p50"])
                raw[r.name]["p99"].append(lat["p99"])
                for b in batches:
                    raw[r.name][f"tp{b}"].append(throughput(r, xb[(r.name, b)], repeats=5))
    out = {}
    base = raw[baseline]
    for name, v in raw.items():
        row = {k: median(vals) for k, vals in v.items()}
        row["p50_ratio"] = median(np.array(v["p50"]) / np.array(base["p50"]))
        for b in batches:
            row[f"tp{b}_ratio"] = median(np.array(v[f"tp{b}"]) / np.array(base[f"tp{b}"]))
        out[name] = row
    return out


def bench_targets(folder: Path, manifest: dict, images, threads: int, rounds: int, lat_iters: int):
    """Every deployment target's runtime on its own artifacts, interleaved in the same rounds: ONNX
    Runtime (.onnx), LiteRT + XNNPACK (.tflite), ExecuTorch + XNNPACK (.pte); ratios to ONNX fp32.
    Built by verify's own registry, so each runs as verify runs it."""
    from toolkit.runtimes import RUNTIMES, build, missing
    from toolkit.targets import row_label

    runners, skipped = [], {}
    for spec in RUNTIMES:
        if spec.device == "cuda" or spec.label == "TorchScript":
            continue
        for a in manifest["artifacts"]:
            if a["format"] not in spec.formats or a["format"] in ("ort", "triton"):
                continue
            name = f"{row_label(a['format'], a['precision'])} ({spec.label})"
            if missing(spec):
                skipped[name] = missing(spec)
                continue
            runners.append(build(spec, folder, a, threads))
            runners[-1].name = name
    table = compare(runners, images, rounds, lat_iters, (256,), "ONNX fp32 (ORT CPU)")
    notes = {r.name: f"{r.runtime} ran it in {r.ran_precision}" for r in runners if r.ran_precision}
    return {"rows": table, "skipped": skipped, "notes": notes}


def bench_overhead(folder: Path, manifest: dict, images, rounds: int, iters: int) -> list[dict]:
    """The toolkit's batch-1 call against the bare runtime call on the same loaded model, side by side
    in the same interleaved rounds: ONNX Runtime (`InferenceSession.run` with a ready feed), LiteRT
    (`set_tensor`, `invoke`, `get_tensor`), OpenVINO (`infer` on a request with its input bound, the
    output tensor's data) and ExecuTorch (`Method.execute`). Medians over rounds of each round's median
    call, 1 thread."""
    from toolkit.runtimes import build, cpu_runtime, missing

    pairs = []
    for a in manifest["artifacts"]:
        spec = cpu_runtime(a["format"]) if a["format"] in ("onnx", "tflite", "openvino", "executorch") else None
        if spec is None or missing(spec):
            continue
        cand = build(spec, folder, a, 1)
        x = cand.bench_input(images[:1])
        if a["format"] == "onnx":
            sess = cand.model.session
            feed, names = {cand.model.input_name: x}, [cand.model.output_name]

            def bare(sess=sess, feed=feed, names=names):
                return sess.run(names, feed)
        elif a["format"] == "tflite":
            prog = cand.programs[1]  # the batch-1 program bench_input chose, and its quantized input
            interp, inp, out, xq = prog.it, prog.inp["index"], prog.out["index"], x.data

            def bare(interp=interp, inp=inp, out=out, xq=xq):
                interp.set_tensor(inp, xq)
                interp.invoke()
                return interp.get_tensor(out)
        elif a["format"] == "openvino":
            request = cand.compiled.create_infer_request()
            request.set_input_tensor(x.tensor)

            def bare(request=request):
                request.infer()
                return request.get_output_tensor(0).data
        else:
            method, args = cand.method, [x]

            def bare(method=method, args=args):
                return method.execute(args)
        pairs.append((f"{a['format']} {a['precision']}", (lambda cand=cand, x=x: cand.run(x)), bare))
    from types import SimpleNamespace

    times = {(n, k): [] for n, _, _ in pairs for k in ("toolkit", "bare")}
    for _ in range(rounds):
        for name, tk, bare in pairs:
            for kind, fn in (("toolkit", tk), ("bare", bare)):  # timing.latency_us calls .run(x)
                times[(name, kind)].append(latency_us(SimpleNamespace(run=lambda _, fn=fn: fn()), None, iters=iters)["p50"])
    return [{"artifact": n, "toolkit_us": median(times[(n, "toolkit")]), "bare_us": median(times[(n, "bare")]),
             "ratio": median(np.array(times[(n, "toolkit")]) / np.array(times[(n, "bare")]))} for n, _, _ in pairs]


# ------------------------------------------------------------------ training


def bench_training(data, device_name, steps, reps):
    """Steps/s of the default recipe's step (batch 60, Adam 1e-3): a plain loop (NCHW, default Adam,
    what a new user writes) and mnisttk's step(s), interleaved round by round."""
    import torch
    from torch import nn

    from toolkit.model import CNN
    from toolkit.train import make_step, to_tensors

    device = torch.device(device_name)
    x, y = to_tensors(data.train_images, data.train_labels, device)
    x_plain = x.contiguous()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(device)
    crit = nn.CrossEntropyLoss()

    torch.manual_seed(0)
    plain_model = CNN().to(device)
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-3)

    def plain(order, i):
        idx = order[(i % 1000) * 60 : (i % 1000 + 1) * 60]
        loss = crit(plain_model(x_plain[idx]), y[idx])
        plain_opt.zero_grad()
        loss.backward()
        plain_opt.step()

    variants = {"plain loop": plain}
    graph_options = (False, True) if device.type == "cuda" else (False,)
    for graph in graph_options:
        torch.manual_seed(0)
        model = CNN().to(device, memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=device.type == "cuda")
        step = make_step(model, opt, crit, x, y, 60, graph, lambda s: None)
        from toolkit.train import CudaGraphStep

        # label what actually ran: a failed capture falls back to eager training
        label = "mnisttk CUDA graph" if isinstance(step, CudaGraphStep) else (
            "mnisttk eager (CUDA graph capture failed)" if graph else "mnisttk eager")
        variants[label] = lambda o, i, step=step: step(o, i % 1000)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in variants.values():
        for i in range(30):
            fn(order, i)
    rates = {name: [] for name in variants}
    for r in range(reps):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            for i in range(steps):
                fn(order, i + r * steps)
            sync()
            rates[name].append(steps / (time.perf_counter() - t0))
    out = {}
    for name, rs in rates.items():
        sps = median(rs)
        out[name] = {"steps_per_s": sps, "images_per_s": sps * 60, "seed_recipe_s_estimate": 10_000 / sps,
                     "speedup_vs_plain": median(np.array(rs) / np.array(rates["plain loop"]))}
    return out


def full_training(data, device_name):
    import torch

    from toolkit.train import TrainConfig, train

    _, result = train(TrainConfig(), data, torch.device(device_name), progress=False)
    return {"seconds": result["train_seconds"], "test_accuracy": result["metrics"]["test"]["accuracy"],
            "epoch_seconds": [h["seconds"] for h in result["history"]]}


# ------------------------------------------------------------------ int8 levers


LEVERS = [
    # name, QuantConfig overrides (everything else as the default recipe)
    ("QDQ S8S8 per-channel, float input", dict(activation_type="int8", uint8_input=False, first_conv="int8")),
    ("QDQ U8S8 per-channel, float input", dict(uint8_input=False, first_conv="int8")),
    ("QDQ U8S8 per-tensor, float input", dict(uint8_input=False, per_channel=False, first_conv="int8")),
    ("QOperator U8S8 per-channel, float input", dict(quant_format="qoperator", uint8_input=False, first_conv="int8")),
    ("QOperator S8S8 per-channel, float input",
     dict(quant_format="qoperator", activation_type="int8", uint8_input=False, first_conv="int8")),
    ("QDQ U8S8 per-channel, uint8 input", dict(first_conv="int8")),
    ("QDQ S8S8 per-channel, uint8 input", dict(activation_type="int8", first_conv="int8")),
    ("QDQ U8S8, uint8 input, conv1 im2col", dict(first_conv="im2col")),
    ("QDQ S8S8, uint8 input, conv1 im2col", dict(first_conv="im2col", activation_type="int8")),
    ("QDQ U8S8 per-tensor, uint8 input, conv1 im2col", dict(first_conv="im2col", per_channel=False)),
    ("QDQ U8S8, uint8 input, conv1 fp32, no fence", dict(first_conv="fp32", fence=False)),
    ("QDQ U8S8, uint8 input, conv1 fp32 + fence (default)", dict()),
    ("QDQ S8S8, uint8 input, conv1 fp32 + fence", dict(activation_type="int8")),
    ("QDQ U8S8 per-tensor, uint8 input, conv1 fp32 + fence", dict(per_channel=False)),
    ("QDQ U8S8, float input, conv1 fp32 + fence", dict(uint8_input=False)),
    ("QOperator U8S8, uint8 input, conv1 fp32 + fence", dict(quant_format="qoperator")),
]


def bench_levers(data, fp32_path, rounds, lat_iters):
    from toolkit.exporters.quantize import QuantConfig, calibration_indices, onnx_static_int8

    calib = to_model_input(data.train_images[calibration_indices(len(data.train_images), QuantConfig())])
    tmp = Path(tempfile.mkdtemp(prefix="mnisttk-levers-"))
    runners, info = [ort_runner("fp32", fp32_path, 1)], {"fp32": {"config": "fp32 ONNX"}}
    acc = {"fp32": classification_metrics(data.test_labels, Model(fp32_path).logits(data.test_images).argmax(1))["accuracy"]}
    import toolkit.exporters.quantize as quantize

    for name, overrides in LEVERS:
        path = tmp / f"lever{len(runners)}.onnx"
        overrides = dict(overrides)
        fence = quantize.fence_first_block
        if not overrides.pop("fence", True):  # the loser, to show what the fence is for
            quantize.fence_first_block = lambda model, block: None
        try:
            onnx_static_int8(fp32_path, path, calib, QuantConfig(**overrides))
        finally:
            quantize.fence_first_block = fence
        acc[name] = classification_metrics(data.test_labels, Model(path).logits(data.test_images).argmax(1))["accuracy"]
        runners.append(ort_runner(name, path, 1, "int8"))
        info[name] = {"config": overrides}
    # ORT's optimizer and session levers on the default int8 model
    default = tmp / "lever_default.onnx"
    onnx_static_int8(fp32_path, default, calib, QuantConfig())
    for level in ("disable", "basic", "extended"):
        runners.append(ort_runner(f"default int8, optimization {level}", default, 1, "int8", optimization=level))
        acc[runners[-1].name] = acc.get("QDQ U8S8, uint8 input, conv1 fp32 + fence (default)")
    runners.append(ort_runner("default int8, NCHWc layout kept", default, 1, "int8", nchwc=True))
    acc[runners[-1].name] = acc.get("QDQ U8S8, uint8 input, conv1 fp32 + fence (default)")
    import gc

    gc.collect()  # calibration sessions built above must not linger while timing
    res = compare(runners, data.test_images, rounds, lat_iters, (256,), "fp32")
    for name in res:
        res[name]["accuracy"] = acc.get(name)
        res[name].update(info.get(name, {}))
    return res


def bench_calibration(data, fp32_path):
    """int8 test accuracy and agreement with fp32 against calibration size and method."""
    from toolkit.exporters.quantize import QuantConfig, calibration_indices, onnx_static_int8

    fp32_preds = Model(fp32_path).logits(data.test_images).argmax(1)
    tmp = Path(tempfile.mkdtemp(prefix="mnisttk-calib-"))
    rows = []
    for method, size in [("minmax", 100), ("minmax", 300), ("minmax", 1000), ("minmax", 5000),
                         ("entropy", 1000), ("percentile", 1000)]:
        cfg = QuantConfig(calibration_size=size, method=method)
        calib = to_model_input(data.train_images[calibration_indices(len(data.train_images), cfg)])
        path = tmp / f"{method}{size}.onnx"
        t0 = time.perf_counter()
        onnx_static_int8(fp32_path, path, calib, cfg)
        seconds = time.perf_counter() - t0
        preds = Model(path).logits(data.test_images).argmax(1)
        rows.append({"method": method, "size": size, "seconds": seconds,
                     "accuracy": classification_metrics(data.test_labels, preds)["accuracy"],
                     "agreement": float((preds == fp32_preds).mean())})
    return rows


# ------------------------------------------------------------------ verify


PEAK_RSS = """
import atexit, sys
def peak():  # VmHWM: this process image's own peak resident memory
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    sys.stderr.write("PEAK_RSS_KB %s\\n" % hwm.split()[1])
atexit.register(peak)
from toolkit.cli import main
main(sys.argv[1:], prog_name="mnisttk")
"""


def bench_verify(folder: Path, reps):
    """Seconds end to end, and peak resident memory with and without the torch rows."""
    times, peaks = [], {}
    for _i in range(reps):
        for extra in ([], ["--no-torch"]):
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", PEAK_RSS, "verify", "--dir", str(folder), *extra],
                               capture_output=True, text=True, cwd=ROOT)
            if not extra:
                times.append(time.perf_counter() - t0)
            if p.returncode not in (0, 1):
                raise SystemExit(f"verify failed: {p.stderr.strip().splitlines()[-1:]}")
            kb = next(int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
            key = "no_torch" if extra else "with_torch"
            peaks[key] = max(peaks.get(key, 0), kb / 1024)
    return {"seconds": times, "median_s": median(times), "passed": p.returncode == 0, "peak_rss_mb": peaks}


# ------------------------------------------------------------------ report


def machine():
    import onnxruntime

    info = {"cpu": cpu_flags(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "ort_providers": onnxruntime.get_available_providers(), "gpu": None}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def scaling(by_threads: dict) -> list[str]:
    """One line: each row's batch-256 throughput on the most threads over its own 1-thread figure (a
    row named "int8, intra-op" is compared with "int8"). Different rounds: read as ±10%."""
    counts = sorted(by_threads, key=int)
    if len(counts) < 2 or int(counts[0]) != 1:
        return []
    one, many = by_threads[counts[0]], by_threads[counts[-1]]
    parts = [f"{name} {r['tp256'] / one[name.split(', ')[0]]['tp256']:.2f}×" for name, r in many.items()
             if one.get(name.split(", ")[0])]
    return [f"Batch-256 throughput on {counts[-1]} threads over 1 thread (separate rounds): {'; '.join(parts)}."]


def markdown(res) -> str:
    m = res["machine"]
    cpu = m["cpu"]
    flags = ", ".join(k for k in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if cpu.get(k))
    out = [f"Machine: {cpu['model']}, {cpu['cores']} cores ({flags}); GPU: {m['gpu'] or 'none'}; "
           f"onnxruntime {m['onnxruntime']}, torch {m.get('torch', '—')}. {res['created']}.", ""]
    if res.get("train"):
        out += ["**Training** (seed recipe: batch 60, Adam 1e-3, 10 epochs = 10,000 steps; loops interleaved in one run)",
                "", "| device | loop | steps/s | images/s | 10,000 steps at that rate | speed-up vs plain loop |",
                "|---|---|---|---|---|---|"]
        for dev, t in res["train"].items():
            for name, v in t["steps"].items():
                out.append(f"| {dev} | {name} | {v['steps_per_s']:.0f} | {v['images_per_s']:,.0f} | "
                           f"{v['seed_recipe_s_estimate']:.1f} s | {v['speedup_vs_plain']:.2f}× |")
        for dev, t in res["train"].items():
            if t.get("full"):
                f = t["full"]
                out.append(f"\nFull seed-recipe run on {dev} (`mnisttk train`'s loop, per-epoch test evaluation "
                           f"included): {f['seconds']:.1f} s, test accuracy {f['test_accuracy'] * 100:.2f}%.")
        out.append("")
    for section, title in (("onnx", "ONNX Runtime CPU"), ("torchscript", "TorchScript CPU")):
        if not res.get(section):
            continue
        out += [f"**{title}** (batch-1 latency p50/p99; throughput; ratios to fp32 at the same thread count, "
                "measured in the same rounds)", "",
                "| model | threads | p50 µs | p99 µs | p50 / fp32 | img/s b64 | img/s b256 | img/s b1000 | b256 / fp32 "
                "| best batch: % of fp32 peak |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for threads, rows in res[section].items():
            for name, r in rows.items():
                peak = max(r["tp64"], r["tp256"], r["tp1000"]) / (FP32_PEAK_PER_CORE * int(threads)) * 100
                out.append(f"| {name} | {threads} | {r['p50']:.1f} | {r['p99']:.1f} | {r['p50_ratio']:.2f} | "
                           f"{r['tp64']:,.0f} | {r['tp256']:,.0f} | {r['tp1000']:,.0f} | {r['tp256_ratio']:.2f} | {peak:.0f}% |")
        out += scaling(res[section]) + [""]
    if res.get("targets"):
        out += ["**Deployment targets side by side** (each runtime on its own artifact, interleaved in the same "
                "rounds; batch-1 p50 and batch-256 throughput; ratios to ONNX fp32 on ORT CPU in the same rounds)", "",
                "| artifact (runtime) | threads | p50 µs | p50 / ORT fp32 | img/s b256 | b256 / ORT fp32 |",
                "|---|---|---|---|---|---|"]
        for threads, t in res["targets"].items():
            for name, r in t["rows"].items():
                out.append(f"| {name} | {threads} | {r['p50']:.1f} | {r['p50_ratio']:.2f} | {r['tp256']:,.0f} | "
                           f"{r['tp256_ratio']:.2f} |")
        out += scaling({threads: t["rows"] for threads, t in res["targets"].items()})
        skipped = {k: v for t in res["targets"].values() for k, v in t["skipped"].items()}
        notes = {k: v for t in res["targets"].values() for k, v in t.get("notes", {}).items()}
        out += [f"Not run: {k} — {v}." for k, v in skipped.items()]
        out += [f"{k}: {v}." for k, v in notes.items()] + [""]
    if res.get("onnx"):
        out.append(f"fp32 peak: {MACS_PER_IMAGE:,} multiply-adds per image; one AVX-512 core peaks near "
                   f"{FP32_PEAK_PER_CORE:,} images/s in fp32.\n")
    if res.get("levers"):
        out += ["**int8 levers** (ONNX Runtime CPU, 1 thread; ratios to fp32 in the same rounds)", "",
                "| variant | test acc | p50 µs | p50 / fp32 | img/s b256 | b256 / fp32 |", "|---|---|---|---|---|---|"]
        for name, r in res["levers"].items():
            accs = "—" if r.get("accuracy") is None else f"{r['accuracy'] * 100:.2f}%"
            out.append(f"| {name} | {accs} | {r['p50']:.1f} | {r['p50_ratio']:.2f} | {r['tp256']:,.0f} | {r['tp256_ratio']:.2f} |")
        out.append("")
    if res.get("calibration"):
        out += ["**Calibration** (ONNX int8, default recipe otherwise; training images only)", "",
                "| method | images | int8 test acc | agreement with fp32 | quantize time |", "|---|---|---|---|---|"]
        for r in res["calibration"]:
            out.append(f"| {r['method']} | {r['size']:,} | {r['accuracy'] * 100:.2f}% | {r['agreement'] * 100:.2f}% "
                       f"| {r['seconds']:.1f} s |")
        out.append("")
    if res.get("verify"):
        v = res["verify"]
        out.append(f"**`mnisttk verify` end to end** (no training): median {v['median_s']:.1f} s over "
                   f"{len(v['seconds'])} runs ({', '.join(f'{s:.1f}' for s in v['seconds'])}).")
        if v.get("peak_rss_mb"):
            m = v["peak_rss_mb"]
            out.append(f"Peak resident memory of `mnisttk verify` (10,000 test images): {m['no_torch']:.0f} MB "
                       f"with `--no-torch`, {m['with_torch']:.0f} MB with the PyTorch rows.")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=ROOT / "exported", help="exported artifacts (run `make demo` first)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--quick", action="store_true", help="fewer latency iterations and verify runs, no full training run")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-levers", action="store_true")
    ap.add_argument("--targets-only", action="store_true",
                    help="only the deployment targets side by side, into targets.json / targets.md")
    ap.add_argument("--overhead-only", action="store_true",
                    help="only the toolkit's batch-1 call against the bare runtime call, into overhead.json")
    args = ap.parse_args()

    rounds, lat_iters = 5, (200 if args.quick else 500)
    folder = args.dir
    if not (folder / "manifest.json").is_file():
        raise SystemExit(f"no manifest in {folder}: run `make demo` (or mnisttk pipeline) first")
    from toolkit.manifest import confined_path, load_manifest

    manifest = load_manifest(folder)  # validated, names confined to the folder
    files = {(a["format"], a["precision"]): confined_path(folder, a["file"], subpath=True) for a in manifest["artifacts"]}
    data = load_mnist()
    res = {"created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine()}
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    args.out.mkdir(parents=True, exist_ok=True)
    all_threads = os.cpu_count() or 1
    thread_counts = sorted({1, all_threads})
    def save_profiles():  # per-node profiles of the default models, so a regression shows node by node
        from toolkit.inspect.profile import profile_model
        from toolkit.runtimes.ort_session import SessionOptions

        profiles = {"created": res["created"], "machine": res["machine"], "batch": 256, "threads": 1, "models": {}}
        for precision in ("fp32", "int8"):
            if ("onnx", precision) in files:
                profiles["models"][precision] = profile_model(files[("onnx", precision)], data.test_images, 256, 1, 20,
                                                              SessionOptions(nchwc=precision != "int8"))
        (args.out / "profiles.json").write_text(json.dumps(profiles, indent=2) + "\n")

    if args.overhead_only:
        rows = bench_overhead(folder, manifest, data.test_images, rounds, 2000)
        res["overhead"] = rows
        (args.out / "overhead.json").write_text(json.dumps(res, indent=2) + "\n")
        print(f"{res['machine']}\n| artifact | toolkit µs | bare µs | toolkit / bare |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['artifact']} | {r['toolkit_us']:.1f} | {r['bare_us']:.1f} | {r['ratio']:.2f} |")
        return
    save_profiles()
    if args.targets_only:
        res["targets"] = {t: bench_targets(folder, manifest, data.test_images, t, rounds, lat_iters) for t in thread_counts}
        (args.out / "targets.json").write_text(json.dumps(res, indent=2) + "\n")
        (args.out / "targets.md").write_text(markdown(res))
        print(markdown(res))
        return

    def save():  # after every section, so a long run that is cut short keeps what it measured
        (args.out / "latest.json").write_text(json.dumps(res, indent=2) + "\n")
        (args.out / "latest.md").write_text(markdown(res))

    if not args.no_train:
        import torch

        res["train"] = {}
        for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            log(f"training throughput on {dev}")
            t = {"steps": bench_training(data, dev, steps=200, reps=5)}
            if not args.quick:
                log(f"full seed-recipe training on {dev}")
                t["full"] = full_training(data, dev)
            res["train"][dev] = t
            save()

    res["onnx"], res["torchscript"] = {}, {}
    for threads in thread_counts:
        log(f"ONNX Runtime CPU, {threads} thread(s)")
        runners = [ort_runner("fp32", files[("onnx", "fp32")], threads)]
        if ("onnx", "int8") in files:
            runners.append(ort_runner("int8", files[("onnx", "int8")], threads, "int8"))
        if threads > 1:  # the other way to use the threads (SessionOptions.parallel), in the same rounds
            runners.append(ort_runner("fp32, intra-op", files[("onnx", "fp32")], threads, parallel="intra"))
            if ("onnx", "int8") in files:
                runners.append(ort_runner("int8, intra-op", files[("onnx", "int8")], threads, "int8", parallel="intra"))
        res["onnx"][threads] = compare(runners, data.test_images, rounds, lat_iters, (64, 256, 1000), "fp32")
        log(f"TorchScript CPU, {threads} thread(s)")
        runners = [ts_runner("fp32", files[("torchscript", "fp32")], threads)]
        if ("torchscript", "int8") in files:
            runners.append(ts_runner("int8", files[("torchscript", "int8")], threads))
        res["torchscript"][threads] = compare(runners, data.test_images, rounds, max(100, lat_iters // 5),
                                              (64, 256, 1000), "fp32")
        save()
    if not args.no_levers:
        log("int8 levers")
        res["levers"] = bench_levers(data, files[("onnx", "fp32")], rounds, lat_iters)
        log("calibration size and method")
        save()
        res["calibration"] = bench_calibration(data, files[("onnx", "fp32")])
        save()
    log("mnisttk verify end to end")
    res["verify"] = bench_verify(folder, 3 if args.quick else 5)

    save()
    print(markdown(res))


if __name__ == "__main__":
    main()
