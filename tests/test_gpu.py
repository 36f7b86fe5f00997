"""The GPU path: GPU-only tests (marked `gpu`, skipped without CUDA, run by `make gpu-check`) and the
parts that can be proven on the CPU — the check script's handling, install-conflict detection,
no silent CPU fallback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import LOOSE, run

import toolkit.runtimes.ort_session as rt

ROOT = Path(__file__).resolve().parent.parent




def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def ort_cuda() -> bool:
    return "CUDAExecutionProvider" in rt.available_providers()


needs_gpu = pytest.mark.skipif("not torch_cuda()", reason="needs a CUDA GPU")
needs_ort_cuda = pytest.mark.skipif("not ort_cuda()", reason="needs onnxruntime-gpu and a CUDA GPU")


# ------------------------------------------------------------------ GPU only


@pytest.mark.gpu
@needs_gpu
def test_cuda_graph_step_matches_eager_over_50_steps():
    import torch
    from torch import nn

    from toolkit.model import build_model
    from toolkit.train import CudaGraphStep, EagerStep, make_step

    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(600, 1, 28, 28, generator=g).to(dev)
    y = (torch.arange(600) % 10).to(dev)
    order = torch.randperm(600, generator=g).to(dev)
    models = []
    for graph in (False, True):
        torch.manual_seed(0)
        model = build_model("cnn").to(dev, memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=True)
        step = make_step(model, opt, nn.CrossEntropyLoss(), x, y, 12, graph, log=lambda s: None)
        assert isinstance(step, CudaGraphStep) == graph and isinstance(step, EagerStep)
        for i in range(50):
            step(order, i)
        torch.cuda.synchronize()
        models.append(model)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_ort_cuda
def test_verify_require_cuda_places_compute_on_the_gpu(tiny_export):
    r = run("verify", "--dir", tiny_export["out"], "--data-dir", tiny_export["data"], "--require-cuda", "--no-torch",
            "--json", "-", *LOOSE)
    assert r.exit_code == 0, r.output


@pytest.mark.gpu
@needs_ort_cuda
def test_predict_on_cuda(tiny_export, tmp_path):
    import numpy as np

    from toolkit.data import load_mnist

    np.save(tmp_path / "d.npy", load_mnist(tiny_export["data"], download=False).test_images[0])
    r = run("predict", tmp_path / "d.npy", "--model", tiny_export["out"] / "cnn_int8.onnx", "--provider", "cuda")
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------ provable on the CPU


def test_predict_cuda_never_runs_silently_on_the_cpu(tiny_export, tmp_path, monkeypatch, in_process):
    import numpy as np

    np.save(tmp_path / "d.npy", np.zeros((28, 28), np.uint8))
    if not ort_cuda():
        r = run("predict", tmp_path / "d.npy", "--model", tiny_export["out"] / "cnn_int8.onnx", "--provider", "cuda")
        assert r.exit_code == 1 and r.stderr.startswith("Error: ONNX Runtime has no CUDAExecutionProvider")
    # onnxruntime-gpu without a usable GPU: ORT falls back to the CPU by itself; we refuse that
    monkeypatch.setattr(rt, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = rt.ort.InferenceSession

    def falls_back(data, sess_options=None, providers=None, **kw):
        print("*************** EP Error ***************")  # what ORT prints to stdout when it falls back
        return real(data, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(rt.ort, "InferenceSession", falls_back)
    r = run("predict", tmp_path / "d.npy", "--model", tiny_export["out"] / "cnn_int8.onnx", "--provider", "cuda",
            "--json")
    assert r.exit_code == 1 and "fell back to the CPU" in r.stderr
    assert "EP Error" not in r.stdout  # stdout stays clean for --json


def test_mixed_onnxruntime_install_is_named(tiny_export, monkeypatch):
    monkeypatch.setattr(rt, "onnxruntime_distributions", lambda: ["onnxruntime 1.32.0", "onnxruntime-gpu 1.31.0"])
    r = run("verify", "--dir", tiny_export["out"], "--data-dir", tiny_export["data"], "--no-torch")
    assert r.exit_code == 1 and r.stderr.count("Error:") == 1
    assert "mixed ONNX Runtime install (onnxruntime 1.32.0, onnxruntime-gpu 1.31.0" in r.stderr
    r = run("env")
    assert r.exit_code == 0 and "MIXED INSTALL" in r.stdout
    info = json.loads(run("env", "--json").stdout)
    assert info["onnxruntime_mixed_install"] is True and info["schema_version"] == 1


@pytest.mark.slow
def test_gpu_check_script_without_a_gpu(tiny_export, tmp_path):
    if torch_cuda():
        pytest.skip("this machine has a GPU: make gpu-check runs the real thing")
    script = [sys.executable, str(ROOT / "scripts" / "gpu_check.py")]
    r = subprocess.run([*script, "--out", str(tmp_path / "w")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("Error: torch sees no CUDA GPU")
    r = subprocess.run([*script, "--epochs", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--epochs must be at least 1" in r.stderr
    r = subprocess.run([*script, "--allow-cpu", "--epochs", "1", "--skip-tests", "--loose-int8-gates",
                        "--out", str(tmp_path / "w"),
                        "--calibration-size", "100",
                        "--data-dir", str(tiny_export["data"])], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for step in ("train eager (cpu)", "train cnn (cpu)", "export --quantize", "verify (torch rows first)",
                 "verify --no-torch"):
        assert any(line.startswith(step) and " ok " in line for line in r.stdout.splitlines()), (step, r.stdout)
    assert "not proven here: everything GPU-side" in r.stdout
