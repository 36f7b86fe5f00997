"""Checkpoints: a state_dict plus everything needed to trust it, written atomically and
loadable with torch.load(weights_only=True)."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import torch

from toolkit import arch as arch_mod
from toolkit.arch import ArchRef
from toolkit.contract import MAX_CLASSES, InputSpec, SpecError, spec_of
from toolkit.data import DIGITS
from toolkit.errors import CheckpointError
from toolkit.fsutil import atomic_write_bytes, regular_file

FORMAT = "mnisttk-checkpoint"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 512 * 1024 * 1024  # ours are ~40 KB


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Serialized in memory, then written atomically: a full disk is one OSError, the old file intact."""
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
    return path


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict, validated; CheckpointError with a one-line reason otherwise."""
    path = regular_file(path, CheckpointError, "an mnisttk checkpoint", MAX_CHECKPOINT_BYTES,
                        missing="no such checkpoint (run `mnisttk train` first)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's multi-line pickle-protocol warning: our line says it all
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: not an mnisttk checkpoint (not a weights-only PyTorch file; refused)") from None
    except Exception:  # noqa: BLE001 - IndexError/KeyError/EOFError from the unpickler on text, truncated or foreign files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or another kind of file)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mnisttk checkpoint (no '{FORMAT}' marker)")
    arch = ckpt.get("arch")
    if not isinstance(arch, str) or (arch not in arch_mod.BUILTINS and "arch_ref" not in ckpt):
        raise CheckpointError(f"{path}: unknown arch {str(arch)[:40]!r}; choose one of {', '.join(arch_mod.BUILTINS)} "
                              "or a model file (no 'arch_ref' recorded)")
    ref = arch_mod.ref_of(ckpt, str(path))
    if arch != ref.stem:
        raise CheckpointError(f"{path}: arch {arch[:40]!r} does not match its reference {ref.spec[:80]!r}")
    classes = ckpt.get("classes", list(DIGITS))
    if not (isinstance(classes, (list, tuple)) and 2 <= len(classes) <= MAX_CLASSES
            and all(isinstance(c, str) and 0 < len(c) <= 64 for c in classes)):
        raise CheckpointError(f"{path}: 'classes' is not a list of 2 to {MAX_CLASSES} class names")
    try:
        spec_of(ckpt)
    except SpecError as exc:
        raise CheckpointError(f"{path}: its input spec: {exc}") from None
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    for key, kind in (("metrics", dict), ("data_sha256", dict), ("recipe", dict)):
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise CheckpointError(f"{path}: '{key}' is {type(ckpt[key]).__name__}, not {kind.__name__}")
    test = ckpt.get("metrics", {}).get("test", {})
    if not isinstance(test, dict) or not isinstance(ckpt.get("data_sha256", {}).get("test", ""), (str, type(None))):
        raise CheckpointError(f"{path}: 'metrics' or 'data_sha256' is malformed")
    return ckpt


def checkpoint_spec(ckpt: dict) -> InputSpec:
    """The input the model was trained on (MNIST's 1×28×28 where an older checkpoint records none)."""
    return spec_of(ckpt)


def checkpoint_classes(ckpt: dict) -> tuple:
    return tuple(ckpt.get("classes", DIGITS))


def model_from_checkpoint(ckpt: dict, source: str = "checkpoint", given: ArchRef | None = None) -> torch.nn.Module:
    """The model with the checkpoint's weights; every tensor must fit by name and shape, and be finite.
    A user model's code runs only if it is unchanged since training or named again (`given`:
    toolkit.arch.trusted)."""
    ref = arch_mod.trusted(arch_mod.ref_of(ckpt, source), given, source)
    model = arch_mod.build(ref, len(checkpoint_classes(ckpt)), checkpoint_spec(ckpt))
    expected = model.state_dict()
    state = ckpt["state_dict"]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise CheckpointError(f"{source}: weights do not fit arch {ckpt['arch']!r}: {what}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{source}: weights do not fit arch {ckpt['arch']!r}: {name} is "
                                  f"{list(tensor.shape)} in the checkpoint, {list(expected[name].shape)} in the model")
        if tensor.dtype != expected[name].dtype:
            raise CheckpointError(f"{source}: tensor {name} is {tensor.dtype} in the checkpoint, "
                                  f"{expected[name].dtype} in the model")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: tensor {name} holds NaN or infinite values (or is not float): "
                                  "the training diverged; retrain (e.g. with a smaller --lr)")
    model.load_state_dict(state)
    return model.eval()
