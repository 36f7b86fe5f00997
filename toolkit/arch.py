"""Which model a checkpoint holds: a built-in (`cnn`, `mlp`) or the user's own, named as
`FILE.py:NAME` or `package.module:NAME` (a class or a factory returning an `nn.Module` that takes
N×1×28×28 float in [0, 1] and returns N×C logits), with keyword arguments as a JSON object.

The reference is recorded in the checkpoint (and the manifest): kind, file or module, name, the source's
SHA-256 and the arguments. Loading a checkpoint runs the user's code again only where that code is
unchanged (the same SHA-256) or the user names it again (`--arch`): a checkpoint never leads mnisttk
to import a file it has not seen, nor one that changed since training. Torch-side."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import CheckpointError, first_line

BUILTINS = ("cnn", "mlp")
MAX_SOURCE_BYTES = 4 * 1024 * 1024  # a model file, not a dataset
MAX_ARGS_CHARS = 4096
STEM_RE = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class ArchRef:
    """A model, as the user named it. kind: builtin | file | module."""

    kind: str
    name: str  # the built-in's name, or the class/factory's attribute name
    path: str | None = None  # file: its absolute path; module: the dotted module name
    sha256: str | None = None  # file: the file's; module: its source file's (None where it has none)
    args: dict = field(default_factory=dict)

    @property
    def stem(self) -> str:
        """The file-name stem of the artifacts: `cnn`, `mlp`, or the name in lower case, safe for a file."""
        if self.kind == "builtin":
            return self.name
        stem = STEM_RE.sub("_", self.name.lower()).strip("_")[:40] or "model"
        return stem if stem not in BUILTINS else f"{stem}_user"

    @property
    def spec(self) -> str:
        return self.name if self.kind == "builtin" else f"{self.path}:{self.name}"

    def record(self) -> dict:
        return asdict(self)


def parse(spec: str, args_json: str | None = None) -> ArchRef:
    """`cnn`, `mlp`, `FILE.py:NAME` or `package.module:NAME` (+ `--arch-args` JSON) as a reference;
    a file's SHA-256 is read now. Nothing is imported here."""
    args = parse_args(args_json)
    spec = spec.strip()
    if spec in BUILTINS:
        return ArchRef("builtin", spec, args=args)
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise CheckpointError(f"--arch {spec!r}: expected cnn, mlp, FILE.py:NAME or package.module:NAME")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser()
        try:
            path = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise CheckpointError(f"--arch {spec!r}: no such model file {where}") from None
        return ArchRef("file", name, str(path), source_sha256(path), args)
    if not all(part.isidentifier() for part in where.split(".")):
        raise CheckpointError(f"--arch {spec!r}: {where!r} is neither a .py file nor a module name")
    return ArchRef("module", name, where, None, args)


def parse_args(args_json: str | None) -> dict:
    if not args_json:
        return {}
    if len(args_json) > MAX_ARGS_CHARS:
        raise CheckpointError(f"--arch-args: longer than {MAX_ARGS_CHARS} characters")
    try:
        args = json.loads(args_json)
    except ValueError as exc:
        raise CheckpointError(f"--arch-args: not JSON ({first_line(exc, 80)})") from None
    if not isinstance(args, dict) or not all(isinstance(k, str) and k.isidentifier() for k in args):
        raise CheckpointError("--arch-args: expected a JSON object of keyword arguments, e.g. '{\"width\": 16}'")
    return args


def _read_source(path: Path) -> bytes:
    """A model file's bytes, read once and no further than the bound (a huge file is refused unread)."""
    try:
        if not path.is_file():
            raise CheckpointError(f"model file {path}: not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"model file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise CheckpointError(f"model file {path}: larger than {MAX_SOURCE_BYTES // 2**20} MiB; not a model file")
    return data


def source_sha256(path: Path) -> str:
    return hashlib.sha256(_read_source(path)).hexdigest()


def from_record(record: Any, source: str) -> ArchRef:
    """The reference a checkpoint or manifest recorded, checked field by field (it is untrusted)."""
    if not isinstance(record, dict):
        raise CheckpointError(f"{source}: 'arch_ref' is not a mapping")
    kind, name, path, sha, args = (record.get(k) for k in ("kind", "name", "path", "sha256", "args"))
    ok = (isinstance(name, str) and name.isidentifier()
          and ((kind == "builtin" and name in BUILTINS and path is None)
               or (kind in ("file", "module") and isinstance(path, str) and 0 < len(path) < 4096))
          and (sha is None or (isinstance(sha, str) and len(sha) == 64))
          and isinstance(args, dict) and len(json.dumps(args, default=str)) <= MAX_ARGS_CHARS)
    if not ok:
        raise CheckpointError(f"{source}: 'arch_ref' is malformed")
    return ArchRef(str(kind), str(name), path, sha, dict(args or {}))


def builtin_ref(name: str) -> ArchRef:
    return ArchRef("builtin", name)


def ref_of(ckpt: dict, source: str) -> ArchRef:
    """The checkpoint's model reference: a built-in by its name, the user's by its record."""
    if ckpt.get("arch") in BUILTINS and "arch_ref" not in ckpt:
        return builtin_ref(ckpt["arch"])
    return from_record(ckpt.get("arch_ref"), source)


def trusted(recorded: ArchRef, given: ArchRef | None, source: str) -> ArchRef:
    """The reference to build the checkpoint's model from. A user model is imported only if its source
    is the one training recorded (same SHA-256) or the user names it again with --arch."""
    if recorded.kind == "builtin":
        if given is not None and given != recorded:
            raise CheckpointError(f"{source}: holds {recorded.spec}, not {given.spec}")
        return recorded
    if given is not None:
        if given.name != recorded.name:
            raise CheckpointError(f"{source}: holds {recorded.name}, not {given.name} (--arch)")
        return ArchRef(given.kind, given.name, given.path, given.sha256, given.args or recorded.args)
    if recorded.kind == "file":
        now = source_sha256(Path(recorded.path or ""))
        if now != recorded.sha256:
            raise CheckpointError(f"{source}: model file {recorded.path} changed since training (SHA-256 differs); "
                                  f"pass --arch {recorded.path}:{recorded.name} to use it as it is now")
    return recorded


def build(ref: ArchRef, num_classes: int = 10):
    """The untrained model. Built-ins take `num_classes`; a user model is what its code returns (its
    output width is checked by `probe`)."""
    from torch import nn

    from toolkit.model import ARCHS

    if ref.kind == "builtin":
        return ARCHS[ref.name](num_classes=num_classes, **ref.args)
    obj = _load_object(ref)
    try:
        model = obj(**ref.args)
    except Exception as exc:
        raise CheckpointError(f"{ref.spec}: building the model failed: {type(exc).__name__}: {first_line(exc, 160)}") \
            from exc
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{ref.spec}: returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_object(ref: ArchRef):
    if ref.kind == "file":
        path = Path(ref.path or "")
        if path.suffix != ".py":
            raise CheckpointError(f"model file {path}: not importable as Python (not a .py file)")
        # The bytes hashed are the bytes run (read once), and no bytecode is written beside the user's file:
        # a folder mnisttk only reads stays as it was.
        source = _read_source(path)
        sha = hashlib.sha256(source).hexdigest()
        if ref.sha256 is not None and sha != ref.sha256:
            raise CheckpointError(f"model file {path} changed while in use (SHA-256 differs)")
        mod_name = f"mnisttk_user_model_{sha[:16]}"
        module = sys.modules.get(mod_name)
        if module is None:
            module = types.ModuleType(mod_name)
            module.__file__ = str(path)
            sys.modules[mod_name] = module
            try:
                exec(compile(source, str(path), "exec", dont_inherit=True), module.__dict__)
            except Exception as exc:
                sys.modules.pop(mod_name, None)
                raise CheckpointError(f"model file {path}: {type(exc).__name__}: {first_line(exc, 160)}") from exc
    else:
        try:
            module = importlib.import_module(ref.path or "")
        except Exception as exc:
            raise CheckpointError(f"--arch {ref.spec}: cannot import {ref.path}: {type(exc).__name__}: "
                                  f"{first_line(exc, 120)}") from exc
    obj = getattr(module, ref.name, None)
    if obj is None or not callable(obj):
        raise CheckpointError(f"{ref.spec}: {ref.name} is not a class or function in {ref.path}")
    return obj


def with_module_sha(ref: ArchRef) -> ArchRef:
    """A module reference with its source file's SHA-256 (after it was imported), where it has one."""
    if ref.kind != "module":
        return ref
    module = sys.modules.get(ref.path or "")
    file = getattr(module, "__file__", None)
    return ArchRef(ref.kind, ref.name, ref.path, source_sha256(Path(file)) if file else None, ref.args)


def probe(model, num_classes: int, spec: str) -> None:
    """The model takes N×1×28×28 float and returns N×C finite float logits, C the dataset's classes."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    except Exception as exc:
        raise CheckpointError(f"{spec}: fails on a 2×1×28×28 float input: {type(exc).__name__}: "
                              f"{first_line(exc, 160)}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2 or not out.is_floating_point():
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(f"{spec}: returns {shape} for a 2×1×28×28 input; expected [2, C] float logits")
    if out.shape[1] != num_classes:
        raise CheckpointError(f"{spec}: returns {out.shape[1]} logits per image; the data has {num_classes} classes")
