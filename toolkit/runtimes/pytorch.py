"""The PyTorch runtime's rows: eager fp32 (the reference) and TorchScript. Imported only when a row
needs it and torch is installed; the edge side never needs it."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from toolkit.errors import ManifestError, ToolkitError, first_line
from toolkit.fsutil import sha256_file
from toolkit.candidate import Candidate
from toolkit.contract import EVAL_BATCH, NUM_CLASSES, batched, to_float_input


class TorchCandidate(Candidate):
    def __init__(self, module, name: str, runtime: str, precision: str, file: str | None, size_bytes: int | None,
                 threads: int):
        self.module, self.name, self.runtime, self.precision = module, name, runtime, precision
        self.file, self.size_bytes = file, size_bytes
        if threads > 0:
            torch.set_num_threads(threads)

    def logits(self, images_u8: np.ndarray) -> np.ndarray:
        try:
            with torch.inference_mode():
                out = batched(lambda x: self.module(torch.from_numpy(x)).numpy(), to_float_input(images_u8), EVAL_BATCH)
        except Exception as exc:  # a TorchScript file with other inputs or outputs
            raise ToolkitError(f"{self.file}: PyTorch failed while running ({first_line(exc, 120)})") from None
        if out.shape != (len(images_u8), NUM_CLASSES):
            raise ToolkitError(f"{self.file}: output shape {list(out.shape)}, expected [{len(images_u8)}, {NUM_CLASSES}]")
        return out

    def bench_input(self, images_u8):
        return torch.from_numpy(to_float_input(images_u8))

    def run(self, x):
        with torch.inference_mode():
            return self.module(x)


def eager_candidate(manifest: dict, folder: Path, threads: int) -> TorchCandidate:
    """PyTorch eager from the checkpoint named in the manifest: its file name, inside the folder only."""
    from toolkit.checkpoint import load_checkpoint, model_from_checkpoint
    from toolkit.manifest import confined_path

    info = manifest["checkpoint"]
    name = Path(info["path"]).name
    path = confined_path(folder, name, "checkpoint")
    if not path.is_file():
        raise ManifestError(f"checkpoint {name} not in {folder} (needed for the PyTorch eager row; copy it there, "
                            "or --no-torch uses reference.npz)")
    if sha256_file(path) != info["sha256"]:
        raise ManifestError(f"{path}: SHA-256 differs from the one the artifacts were exported from")
    model = model_from_checkpoint(load_checkpoint(path), str(path))
    return TorchCandidate(model, "PyTorch fp32", "PyTorch eager", "fp32", path.name, path.stat().st_size, threads)


def torchscript_candidate(path: Path, precision: str, threads: int, sha256: str | None = None) -> TorchCandidate:
    """Loaded from the very bytes that were hashed."""
    import hashlib

    from toolkit.runtime import read_model_bytes

    data = read_model_bytes(path, sha256, "torchscript")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in 2.14 and says so on every load
            if precision == "int8":
                torch.backends.quantized.engine = "x86"
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:
        raise ToolkitError(f"{path}: not a loadable TorchScript model ({first_line(exc, 120)})") from None
    cand = TorchCandidate(module, f"TorchScript {precision}", "TorchScript", precision, path.name,
                          path.stat().st_size, threads)
    cand.loaded_sha256 = hashlib.sha256(data).hexdigest()
    return cand


def candidate(folder: Path, artifact: dict, threads: int, provider: str, name: str) -> TorchCandidate:
    from toolkit.manifest import confined_path

    return torchscript_candidate(confined_path(folder, artifact["file"]), artifact["precision"], threads,
                                 artifact["sha256"])
