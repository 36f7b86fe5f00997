"""The PyTorch runtime's rows: eager fp32 (the reference) and TorchScript. Imported only when a row
needs it and torch is installed; the edge side never needs it."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from toolkit.contract import to_float_input
from toolkit.errors import CheckpointAbsent, ManifestError, ToolkitError, first_line
from toolkit.fsutil import sha256_file
from toolkit.runtimes.candidate import Arithmetic, Candidate, read_model_bytes, resolve_threads
from toolkit.scoped import float32_matmul_precision, quantized_engine, torch_threads

# fp32 arithmetic asked for (torch's default; a process that lowered it must not lower a row's)
PRECISION_SETTINGS = {"float32_matmul_precision": "highest"}


class TorchCandidate(Candidate):
    def __init__(self, module, name: str, runtime: str, precision: str, file: str | None, size_bytes: int | None,
                 threads: int, engine: str | None = None):
        """threads: 0 all cores (toolkit.runtimes.candidate.resolve_threads); engine: the quantized
        engine an int8 TorchScript module runs on. Both are set only inside `scope()`."""
        self.module, self.name, self.runtime, self.precision = module, name, runtime, precision
        self.file, self.size_bytes = file, size_bytes
        self.threads, self.engine = resolve_threads(threads), engine
        self.precision_settings = dict(PRECISION_SETTINGS)

    @contextlib.contextmanager
    def scope(self):
        with torch_threads(self.threads), quantized_engine(self.engine), \
                float32_matmul_precision(PRECISION_SETTINGS["float32_matmul_precision"]):
            yield

    def prepare(self, images_u8: np.ndarray) -> np.ndarray:
        return to_float_input(images_u8)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        try:
            with torch.inference_mode():
                return self.module(torch.from_numpy(x)).numpy()
        except Exception as exc:  # noqa: BLE001 - a TorchScript file with other inputs or outputs
            raise ToolkitError(f"{self.file}: PyTorch failed while running ({first_line(exc, 120)})") from None

    def bench_input(self, images_u8):
        return torch.from_numpy(to_float_input(images_u8))

    def run(self, x):
        with torch.inference_mode():
            return self.module(x)


def eager_candidate(manifest: dict, folder: Path, threads: int) -> TorchCandidate:
    """PyTorch eager from the checkpoint named in the manifest: its file name, inside the folder only."""
    from toolkit.arch import BUILTINS
    from toolkit.checkpoint import checkpoint_spec, load_checkpoint, model_from_checkpoint
    from toolkit.manifest import confined_path

    info = manifest["checkpoint"]
    name = info["file"] if "file" in info else Path(info["path"]).name  # older manifests: the path's name
    if not isinstance(name, str) or not name:
        raise CheckpointAbsent(f"the export's checkpoint ({Path(str(info.get('path'))).name}) is not in {folder}")
    path = confined_path(folder, name, "checkpoint")
    if not os.path.lexists(path):
        raise CheckpointAbsent(f"checkpoint {name} not in {folder}")
    if not path.is_file():
        raise ManifestError(f"checkpoint {name} in {folder} is not a regular file")
    from toolkit.checkpoint import MAX_CHECKPOINT_BYTES
    from toolkit.fsutil import regular_file

    regular_file(path, ManifestError, "a checkpoint", MAX_CHECKPOINT_BYTES)
    if sha256_file(path, MAX_CHECKPOINT_BYTES) != info["sha256"]:
        raise ManifestError(f"{path}: SHA-256 differs from the one the artifacts were exported from")
    ckpt = load_checkpoint(path)
    if ckpt.get("arch") not in BUILTINS or ckpt.get("arch_ref", {}).get("kind", "builtin") != "builtin":
        raise CheckpointAbsent(f"checkpoint {name} holds your own model ({ckpt['arch']}), whose code verify never "
                               "imports (a folder must not make mnisttk run code)")
    model = model_from_checkpoint(ckpt, str(path))
    cand = TorchCandidate(model, "PyTorch fp32", "PyTorch eager", "fp32", path.name, path.stat().st_size, threads)
    cand.num_classes = len(ckpt.get("classes") or range(10))
    cand.input_spec = checkpoint_spec(ckpt)
    return cand


def torchscript_candidate(path: Path, precision: str, threads: int, sha256: str | None = None) -> TorchCandidate:
    """Loaded from the very bytes that were hashed."""
    data, loaded_sha256 = read_model_bytes(path, sha256, "torchscript")
    engine = "x86" if precision == "int8" else None
    try:
        with warnings.catch_warnings(), quantized_engine(engine):
            warnings.simplefilter("ignore")  # torch.jit is deprecated in 2.14 and says so on every load
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch.jit.load raises its own types on foreign bytes: one line
        raise ToolkitError(f"{path}: not a loadable TorchScript model ({first_line(exc, 120)})") from None
    cand = TorchCandidate(module, f"TorchScript {precision}", "TorchScript", precision, path.name,
                          path.stat().st_size, threads, engine=engine)
    cand.loaded_sha256 = loaded_sha256
    return cand


def candidate(folder: Path, artifact: dict, threads: int, provider: str, name: str, *,
              arithmetic: Arithmetic = Arithmetic.EXACT) -> TorchCandidate:
    from toolkit.manifest import confined_path

    return torchscript_candidate(confined_path(folder, artifact["file"]), artifact["precision"], threads,
                                 artifact["sha256"])
