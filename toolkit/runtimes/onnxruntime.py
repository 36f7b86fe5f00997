"""The ONNX Runtime rows: .onnx on the CPU and CUDA providers, ONNX Runtime's .ort format and
Triton's model.onnx on the CPU. Edge side: numpy and onnxruntime only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from toolkit.contract import EVAL_BATCH
from toolkit.errors import ManifestError
from toolkit.manifest import SUBPATH_FORMATS, confined_path
from toolkit.runtimes.candidate import Arithmetic, Candidate, Placement
from toolkit.runtimes.ort_session import PRECISION_SETTINGS, Model, SessionOptions

CONSISTENCY_BATCHES = (1, 2, 7, 64)  # with EVAL_BATCH (1,000), the batch sizes whose predictions must agree


class OnnxCandidate(Candidate):
    def __init__(self, path: Path, precision: str, provider: str, threads: int, sha256: str | None = None,
                 optimization: str = "all", name: str | None = None, file: str | None = None,
                 nchwc: bool | None = None, parallel: str = "batch", fmt: str | None = None):
        self.path, self.precision, self.file = path, precision, file or path.name
        self.provider = provider
        self.runtime = f"ORT {provider.upper()}"
        self.name = name or f"ONNX {precision}"
        self.sha256 = sha256
        nchwc = precision != "int8" if nchwc is None else nchwc  # see SessionOptions.nchwc
        self.options = SessionOptions(threads=threads, optimization=optimization, nchwc=nchwc,
                                      parallel=parallel)  # see SessionOptions.parallel
        self.fmt = fmt  # the manifest's format: the bytes must be it (toolkit.formats)
        self.model = Model(path, provider, self.options, expected_sha256=sha256, fmt=fmt)
        self.loaded_sha256 = self.model.loaded_sha256
        self.fixed_batch = self.model.fixed_batch
        self.threads = threads
        self.precision_settings = dict(PRECISION_SETTINGS)  # fp32 arithmetic, asked for on every CPU
        if provider == "cuda":  # TF32 convolutions would move fp32 logits: what the provider opened with
            self.precision_settings["use_tf32"] = (self.model.cuda_options or {}).get("use_tf32", "provider default")
        self.consistency_batches = (*CONSISTENCY_BATCHES, EVAL_BATCH)  # logits() runs EVAL_BATCH at a time

    def prepare(self, images_u8):
        return self.model.prepare(images_u8)

    def _forward(self, x):
        return self.model.run(x)

    def output_limits(self):
        return self.model.output_limits()

    def declared_classes(self):
        return self.model.num_classes

    def declared_input(self):
        return self.model.declared_input()

    def metadata(self, key):
        return self.model.session.get_modelmeta().custom_metadata_map.get(key)

    def placement(self):
        profiled = Model(self.path, self.provider, replace(self.options, profile=True), expected_sha256=self.sha256,
                         fmt=self.fmt)
        profiled.logits(np.zeros((4, *self.input_spec.image_shape), np.uint8), batch=4)
        self.model.check_provider()  # still on the provider asked for, after all the measuring
        found = profiled.node_placement()
        if not found:
            return None
        gpu = self.provider != "cpu"
        nodes = ", ".join(f"{k} {v}" for k, v in sorted(found["providers"].items(), key=lambda kv: -kv[1]))
        int8 = "int8 kernels: " + "/".join(found["int8_kernels"]) if found["int8_kernels"] else "no int8 kernels"
        # the int8-kernels question is the CPU provider's (a GPU runs some int8 models in float by design);
        # the CPU-fallback question is a GPU provider's
        return Placement(self.runtime, f"{nodes} nodes; {int8}",
                         int8_kernels=None if gpu else tuple(found["int8_kernels"]),
                         cpu_compute_ops=tuple(found["cpu_compute_ops"]) if gpu else None,
                         detail={"providers": found["providers"], "ops": found["ops"]})

    def consistency(self, images_u8, preds):
        # On CUDA, cuDNN's exhaustive search may pick another algorithm per batch size, and a QDQ
        # model rounds after float convolutions: the check runs with cuDNN's fixed default algorithm.
        model = self.model if self.provider == "cpu" else Model(
            self.path, self.provider, replace(self.options, deterministic=True), expected_sha256=self.sha256,
            fmt=self.fmt)
        return all(np.array_equal(model.logits(images_u8, batch=b).argmax(1), preds) for b in CONSISTENCY_BATCHES)


def device_missing(device: str) -> str | None:
    """Why this onnxruntime cannot run on `device` ("cuda"), or None."""
    from toolkit.runtimes.ort_session import available_providers

    if device == "cuda" and "CUDAExecutionProvider" not in available_providers():
        return "no CUDAExecutionProvider in this onnxruntime (`make gpu` on a CUDA machine)"
    return None


def candidate(folder: Path, artifact: dict, threads: int, provider: str, name: str, *,
              arithmetic: Arithmetic = Arithmetic.EXACT) -> OnnxCandidate:
    path = confined_path(folder, artifact["file"], subpath=artifact["format"] in SUBPATH_FORMATS)
    cand = OnnxCandidate(path, artifact["precision"], provider, threads, artifact["sha256"], name=name,
                         file=artifact["file"], fmt=artifact["format"])
    if artifact["format"] == "triton":  # <repo>/<model>/1/model.onnx: its config.pbtxt must serve it
        from toolkit.fsutil import regular_file
        from toolkit.triton_config import MAX_CONFIG_BYTES, check

        repo, model_name = artifact["file"].split("/")[:2]
        config_rel = f"{repo}/{model_name}/config.pbtxt"
        config = regular_file(confined_path(folder, config_rel, subpath=True), ManifestError,
                              "a Triton configuration", MAX_CONFIG_BYTES, missing="Triton configuration missing")
        check(config.read_bytes(), config_rel, model_name, cand.model)
    return cand
