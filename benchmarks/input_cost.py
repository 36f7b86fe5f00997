"""How verify's cost grows with the model's work (issue 46): the built-in CNN on MNIST (1×28×28, 0.29 M
multiply-adds an image) against a ResNet-8 on 3×32×32 RGB (tests/models/resnet8_rgb.py at width 16, about
12.5 M multiply-adds), on the same number of test images, the same targets, the same machine.

    python benchmarks/input_cost.py [--test-images 2000] [--repeats 3] [--targets all]

Each model is trained briefly (its accuracy is not the point), exported with --quantize, then verified
`--repeats` times; the table gives the median wall time and phases (verify's own `timing.phases_s`).
Writes benchmarks/results/input_cost.{json,md}. Needs the `train` extras (torch) and the MNIST cache."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.data import encode_idx, load_mnist  # noqa: E402
from toolkit.machine import machine_info  # noqa: E402


def mnisttk(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], check=True, cwd=ROOT)


def mnist_slice(folder: Path, n_test: int) -> Path:
    import gzip

    from toolkit.data import IDX_FILES

    m = load_mnist()
    arrays = {"train_images": m.train_images[:10000], "train_labels": m.train_labels[:10000],
              "test_images": m.test_images[:n_test], "test_labels": m.test_labels[:n_test]}
    folder.mkdir(parents=True)
    for key, stem in IDX_FILES.items():
        (folder / f"{stem}.gz").write_bytes(gzip.compress(encode_idx(arrays[key])))
    return folder


def rgb_set(folder: Path, n_test: int, classes: int = 10) -> Path:
    """10 classes of 3×32×32: each a coloured square and a stripe pattern on noise."""
    rng = np.random.default_rng(0)
    colours = rng.integers(60, 256, (classes, 3))

    def make(n):
        y = np.arange(n) % classes
        x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.float64)
        for i, c in enumerate(y):
            r, q = rng.integers(2, 20, 2)
            x[i, r:r + 10, q:q + 10] = colours[c]
            x[i, :, (c % 4)::4] += 30
        return np.clip(x, 0, 255).astype(np.uint8), y

    folder.mkdir(parents=True)
    x, y = make(5000)
    np.savez(folder / "train.npz", x=x, y=y)
    x, y = make(n_test)
    np.savez(folder / "test.npz", x=x, y=y)
    return folder


def measure(name: str, data: Path, arch: list, work: Path, args) -> dict:
    out = work / name
    mnisttk("train", *arch, "--data-dir", data, "--epochs", 2, "--device", "cpu", "--checkpoint", out / "m.pt", "--quiet")
    t0 = time.perf_counter()
    mnisttk("export", "--checkpoint", out / "m.pt", "--dir", out, "--quantize", "--targets", args.targets,
            "--data-dir", data, "--quiet")
    export_s = time.perf_counter() - t0
    runs = []
    for k in range(args.repeats):
        report = work / f"{name}-{k}.json"
        subprocess.run([sys.executable, "-m", "toolkit", "verify", "--dir", str(out), "--data-dir", str(data), "--json",
                        str(report), "--quiet", "--int8-min-agreement", "0", "--int8-max-drop", "100",
                        "--int8-max-clipped", "100", "--int8-min-ood-agreement", "0"], cwd=ROOT, check=False)
        runs.append(json.loads(report.read_text()))
    phases = sorted({p for r in runs for p in r["timing"]["phases_s"]})
    return {"name": name, "export_s": round(export_s, 1), "rows": len(runs[0]["rows"]),
            "verify_s": [round(r["seconds"], 1) for r in runs],
            "verify_median_s": round(statistics.median(r["seconds"] for r in runs), 1),
            "phases_median_s": {p: round(statistics.median(r["timing"]["phases_s"].get(p, 0.0) for r in runs), 2)
                                for p in phases}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--targets", default="all")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mnisttk-cost-") as tmp:
        work = Path(tmp)
        results = [
            measure("cnn-mnist-1x28x28", mnist_slice(work / "mnist", args.test_images), ["--arch", "cnn"], work, args),
            measure("resnet8-rgb-3x32x32", rgb_set(work / "rgb", args.test_images),
                    ["--arch", f"{ROOT / 'tests/models/resnet8_rgb.py'}:ResNet8", "--arch-args",
                     '{"width": 16, "num_classes": 10}'], work, args),
        ]
    machine = machine_info(None)
    doc = {"machine": machine, "test_images": args.test_images, "targets": args.targets, "results": results,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "input_cost.json").write_text(json.dumps(doc, indent=1) + "\n")
    phases = sorted({p for r in results for p in r["phases_median_s"]}, key=lambda p: -results[-1]["phases_median_s"].get(p, 0))
    lines = [f"Machine: {machine['cpu']['model']}, {machine['cpu'].get('cores')} cores; {args.test_images:,} test "
             f"images, targets {args.targets}, {args.repeats} verify runs each (medians). {doc['date']}.", "",
             "| model | export s | verify s (runs) | " + " | ".join(phases) + " |",
             "|---|---|---|" + "---|" * len(phases)]
    for r in results:
        lines.append(f"| {r['name']} | {r['export_s']} | {r['verify_median_s']} ({', '.join(map(str, r['verify_s']))}) | "
                     + " | ".join(str(r["phases_median_s"].get(p, 0)) for p in phases) + " |")
    (out / "input_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
