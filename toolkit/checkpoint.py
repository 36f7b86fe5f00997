"""Checkpoints: a state_dict plus everything needed to trust it, written atomically and
loadable with torch.load(weights_only=True)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from toolkit.errors import CheckpointError
from toolkit.fsutil import atomic_path
from toolkit.model import ARCHS, build_model

FORMAT = "mnisttk-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
    return path


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, validated; CheckpointError with a one-line reason otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (run `mnisttk train` first)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: not an mnisttk checkpoint (not a weights-only PyTorch file)") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError):
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or another kind of file)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mnisttk checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("arch") not in ARCHS:
        raise CheckpointError(f"{path}: unknown arch {ckpt.get('arch')!r}; choose one of {', '.join(ARCHS)}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    model = build_model(ckpt["arch"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint weights do not fit arch {ckpt['arch']!r}: {str(exc).splitlines()[0]}") from None
    return model.eval()
