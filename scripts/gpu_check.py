#!/usr/bin/env python3
"""`make gpu-check`: prove the GPU path on a CUDA machine, from the source tree, in one go.

Runs against whatever torch/onnxruntime the interpreter already has (no pip step; the device
machines have no network), each step as `python -m toolkit …` in a subprocess:
  1. train on the GPU eagerly and with the CUDA-graph step (same seed): accuracy and seconds;
  2. export --quantize;
  3. verify --require-cuda, with the PyTorch rows and with --no-torch (torch's cuDNN loaded
     first, or not at all: a library clash shows up as a difference between the two);
  4. the GPU-only tests (pytest -m gpu);
then prints one summary table and says which parts it could not prove (e.g. no CUDA provider
in a CPU-only onnxruntime). Exit 0 when every step that ran passed, 1 otherwise, 2 when there
is no CUDA GPU (unless --allow-cpu, which walks the same steps on the CPU to test this script).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(args: list[str], log: Path) -> tuple[int, float, str, str]:
    """Run `python -m toolkit ARGS` (or a full command) from the source tree; (code, seconds, stdout, stderr)."""
    cmd = args if args[0] == sys.executable else [sys.executable, "-m", "toolkit", *args]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "MNISTTK_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n(exit {proc.returncode}, {seconds:.1f} s)\n\n")
    return proc.returncode, seconds, proc.stdout, proc.stderr


def last_error(stdout: str, stderr: str) -> str:
    lines = [line for line in (stderr + stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("Error", "FAIL"))]
    return (errors or lines or ["no output"])[-1][:110]


def environment() -> dict:
    info = {"python": sys.version.split()[0]}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                    gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    except ImportError:
        info.update(torch=None, cuda=False, gpu=None)
    sys.path.insert(0, str(ROOT))
    from toolkit.runtimes.ort_session import available_providers, onnxruntime_distributions

    info.update(onnxruntime=onnxruntime_distributions(), providers=available_providers())
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/mnisttk-gpu-check"), help="work folder (recreated)")
    p.add_argument("--data-dir", type=Path, default=None, help="MNIST IDX folder (default: mnisttk's own lookup)")
    p.add_argument("--epochs", type=int, default=3, help="epochs for each of the two trainings")
    p.add_argument("--calibration-size", type=int, default=1000, help="training images that calibrate int8")
    p.add_argument("--allow-cpu", action="store_true", help="no GPU: walk the same steps on the CPU (tests this script)")
    p.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu")
    p.add_argument("--loose-int8-gates", action="store_true",
                   help="verify with the int8 gates open (a walk-through on tiny data: the steps, not the numbers)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be at least 1")

    env = environment()
    print(f"python {env['python']}, torch {env['torch']}, GPU: {env['gpu'] or 'none'}; "
          f"onnxruntime: {', '.join(env['onnxruntime']) or 'none'}; providers: {', '.join(env['providers'])}")
    if env["torch"] is None:
        print("Error: torch is not installed for this interpreter; gpu-check trains with it", file=sys.stderr)
        return 2
    if not env["cuda"] and not args.allow_cpu:
        print("Error: torch sees no CUDA GPU here; nothing to check (--allow-cpu walks the steps on the CPU)",
              file=sys.stderr)
        return 2
    device = "cuda" if env["cuda"] else "cpu"
    ort_cuda = "CUDAExecutionProvider" in env["providers"]
    out = args.out
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    log = out / "gpu-check.log"
    data = ["--data-dir", str(args.data_dir)] if args.data_dir else []
    rows = []  # (step, ok, seconds, detail)

    def train(name: str, graph: bool):
        ckpt = out / f"{name}.pt"
        code, secs, so, se = sh(["train", "--device", device, "--epochs", str(args.epochs), "--seed", "0",
                                 "--checkpoint", str(ckpt), "--json", "--no-progress",
                                 "--cuda-graph" if graph else "--no-cuda-graph", *data], log)
        if code != 0:
            rows.append((f"train {name}", False, secs, last_error(so, se)))
            return None
        result = json.loads(so)
        used_graph = "captured as a CUDA graph" in se
        acc = result["metrics"]["test"]["accuracy"]
        label = ("graph really used" if used_graph else "eager (no GPU: the graph path needs CUDA)" if device == "cpu"
                 else "eager fallback: graph NOT used" if graph else "eager")
        ok = used_graph or not graph or device == "cpu"
        rows.append((f"train {name} ({device})", ok, secs,
                     f"test accuracy {acc:.4f}, {result['train_seconds']:.1f} s training; {label}"))
        return acc

    acc_eager = train("eager", graph=False)
    acc_graph = train("cnn", graph=True)
    if acc_eager is not None and acc_graph is not None:
        rows.append(("same seed, same result", abs(acc_eager - acc_graph) <= 0.002, 0.0,
                     f"|Δ accuracy| {abs(acc_eager - acc_graph) * 100:.2f} points (cuDNN picks algorithms: not bitwise)"))
    if acc_graph is not None:
        code, secs, so, se = sh(["export", "--checkpoint", str(out / "cnn.pt"), "--dir", str(out), "--quantize",
                                 "--calibration-size", str(args.calibration_size), *data], log)
        rows.append(("export --quantize", code == 0, secs, "ok" if code == 0 else last_error(so, se)))
        if code == 0:
            # OpenVINO's rows are CPU-only: nothing of the GPU path to prove there
            cuda_flag = ["--require-cuda" if device == "cuda" else "--device=cpu", "--skip-runtime", "openvino"]
            if args.loose_int8_gates:  # a model of 120 synthetic images: its int8 decisions mean nothing
                cuda_flag += ["--int8-min-agreement", "0", "--int8-max-drop", "100", "--int8-max-clipped", "100",
                              "--int8-min-ood-agreement", "0"]
            for label, extra in (("verify (torch rows first)", []), ("verify --no-torch", ["--no-torch"])):
                code, secs, so, se = sh(["verify", "--dir", str(out), *extra, *cuda_flag,
                                         "--json", str(out / f"verify{'-no-torch' if extra else ''}.json"), *data], log)
                rows.append((label, code == 0, secs, (so.strip().splitlines() or ["?"])[-1][:110] if code == 0
                             else last_error(so, se)))
    if not args.skip_tests:
        code, secs, so, se = sh([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], log)
        summary = (so.strip().splitlines() or ["no output"])[-1]
        rows.append(("pytest -m gpu", code in (0, 5), secs, summary[:110]))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'step':<{width}}  {'result':<6}  {'s':>6}  detail")
    for step, ok, secs, detail in rows:
        print(f"{step:<{width}}  {'ok' if ok else 'FAIL':<6}  {secs:>6.1f}  {detail}")
    unproven = []
    if device == "cpu":
        unproven.append("everything GPU-side (no CUDA GPU: this was the CPU walk-through)")
    elif not ort_cuda:
        unproven.append("the ONNX Runtime CUDA rows (this onnxruntime has no CUDAExecutionProvider; `make gpu`)")
    if unproven:
        print("not proven here: " + "; ".join(unproven))
    print(f"log: {log}")
    return 0 if all(ok for _, ok, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
