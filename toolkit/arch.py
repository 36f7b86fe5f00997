"""Which model a checkpoint holds: a built-in (`cnn`, `mlp`) or the user's own, named as
`FILE.py:NAME` or `package.module:NAME` (a class or a factory returning an `nn.Module` that takes
N×1×28×28 float in [0, 1] and returns N×C logits), with keyword arguments as a JSON object.

The reference is recorded in the checkpoint (and the manifest): kind, file or module, name, the source's
SHA-256 and the arguments, signed with this user's key (toolkit.userkey) when `train` wrote it. A
checkpoint never decides what code runs: a user model's reference is followed only when this user's
mnisttk recorded it (the signature holds) and its source is unchanged (the same SHA-256, for a module
too), or when the user names the model again with `--arch` on the command line. What is called must be
a class or function defined in the named file or module, and must return an `nn.Module`. A built-in's
arguments are checked against a declared schema with bounds before anything is built. Torch-side."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import os
import re
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit import userkey
from toolkit.contract import MNIST_INPUT, InputSpec
from toolkit.errors import CheckpointError, first_line

BUILTINS = ("cnn", "mlp")
MAX_SOURCE_BYTES = 4 * 1024 * 1024  # a model file, not a dataset
MAX_ARGS_CHARS = 4096
MAX_ARGS_DEPTH = 16  # keyword arguments are settings, not data
SIGNATURE = "mnisttk-arch-ref"  # the purpose a reference's MAC is made for
# A built-in's keyword arguments: name -> (kind, low, high); a list's bounds apply to each item, and its
# length is fixed. The bounds keep the largest built-in model under ~20 M parameters (80 MB), well inside
# the memory a row may use, so a checkpoint from elsewhere cannot make verify allocate gigabytes.
BUILTIN_ARGS: dict[str, dict[str, tuple]] = {
    "cnn": {"in_channels": ("int", 1, 64)},
    "mlp": {"hidden": ("ints2", 1, 4096)},
}
STEM_RE = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class ArchRef:
    """A model, as the user named it. kind: builtin | file | module."""

    kind: str
    name: str  # the built-in's name, or the class/factory's attribute name
    path: str | None = None  # file: its absolute path; module: the dotted module name
    sha256: str | None = None  # file: the file's; module: its source file's (None where it has none)
    args: dict = field(default_factory=dict)
    signed: bool = field(default=False, compare=False)  # recorded by this user's mnisttk (its MAC holds)

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
        """What a checkpoint and a manifest keep: the reference, with this user's MAC over it (None where
        no key can be made: such a reference is followed only when the user names the model again)."""
        body = _body(self)
        return {**body, "mac": userkey.mac(SIGNATURE, body, create=True)}


def _body(ref: ArchRef) -> dict:
    body = asdict(ref)
    body.pop("signed")
    return body


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
        source = _read_source(path)
        _check_names(source, path, name)
        return ArchRef("file", name, str(path), hashlib.sha256(source).hexdigest(), args)
    if not all(part.isidentifier() for part in where.split(".")):
        raise CheckpointError(f"--arch {spec!r}: {where!r} is neither a .py file nor a module name")
    return ArchRef("module", name, where, None, args)


def _check_names(source: bytes, path: Path, name: str) -> None:
    """The model file parses and defines `name` at its top level: said in a second from the source alone,
    before torch or the file's own imports are loaded (its code runs later, when the model is built)."""
    import ast

    if path.suffix != ".py":
        return  # refused with its own line where it would be imported
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        raise CheckpointError(f"model file {path}: SyntaxError{where}: {first_line(exc, 120)}") from None
    defined = [n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    assigned = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
    if name not in defined and name not in assigned:
        listed = ", ".join(n for n in defined if not n.startswith("_"))
        raise CheckpointError(f"{path}:{name}: {name} is not a class or function in {path.name} "
                              f"({'defined there: ' + listed if listed else 'it defines no class or function'})")


def parse_args(args_json: str | None) -> dict:
    if not args_json:
        return {}
    if len(args_json) > MAX_ARGS_CHARS:
        raise CheckpointError(f"--arch-args: longer than {MAX_ARGS_CHARS} characters")

    def no_constant(name: str):
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        args = json.loads(args_json, parse_constant=no_constant)
    except RecursionError:
        raise CheckpointError(f"--arch-args: nested deeper than {MAX_ARGS_DEPTH} levels") from None
    except ValueError as exc:
        raise CheckpointError(f"--arch-args: not JSON ({first_line(exc, 80)})") from None
    if not isinstance(args, dict) or not all(isinstance(k, str) and k.isidentifier() for k in args):
        raise CheckpointError("--arch-args: expected a JSON object of keyword arguments, e.g. '{\"width\": 16}'")
    why = _plain_value(args)
    if why:
        raise CheckpointError(f"--arch-args: {why}")
    return args


def _plain_value(value, depth: int = 0) -> str:
    """Why `value` is not plain JSON settings (finite numbers, at most MAX_ARGS_DEPTH deep), or ''."""
    if depth > MAX_ARGS_DEPTH:
        return f"nested deeper than {MAX_ARGS_DEPTH} levels"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return "a key is not a string"
        items = list(value.values())
    elif isinstance(value, list):
        items = value
    elif value is None or isinstance(value, (str, int, float, bool)):
        return ""
    else:
        return f"{type(value).__name__} is not a JSON value"
    for item in items:
        why = _plain_value(item, depth + 1)
        if why:
            return why
    return ""


def check_builtin_args(name: str, args: dict, source: str) -> None:
    """A built-in's keyword arguments against BUILTIN_ARGS, before anything is built."""
    schema = BUILTIN_ARGS[name]
    for key, value in args.items():
        if key not in schema:
            known = ", ".join(schema) or "none"
            raise CheckpointError(f"{source}: built-in {name} takes no argument {key[:40]!r} (it takes: {known})")
        kind, low, high = schema[key]
        items = value if kind == "ints2" else [value]
        if (kind == "ints2" and (not isinstance(value, (list, tuple)) or len(value) != 2)) or not all(
                isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in items):
            shape = "a list of 2 integers" if kind == "ints2" else "an integer"
            raise CheckpointError(f"{source}: built-in {name}'s {key} must be {shape} from {low} to {high}")


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
    """The reference a checkpoint or manifest recorded, checked field by field (it is untrusted), and
    whether this user's mnisttk signed it. A file's path must be absolute: a relative one would be
    resolved against wherever the command runs."""
    if not isinstance(record, dict):
        raise CheckpointError(f"{source}: 'arch_ref' is not a mapping")
    kind, name, path, sha, args = (record.get(k) for k in ("kind", "name", "path", "sha256", "args"))
    ok = (isinstance(name, str) and name.isidentifier()
          and ((kind == "builtin" and name in BUILTINS and path is None)
               or (kind == "file" and isinstance(path, str) and 0 < len(path) < 4096 and "\0" not in path
                   and os.path.isabs(path))
               or (kind == "module" and isinstance(path, str) and 0 < len(path) < 4096
                   and all(part.isidentifier() for part in path.split("."))))
          and (sha is None or (isinstance(sha, str) and len(sha) == 64))
          and isinstance(args, dict) and not _plain_value(args) and _args_size(args) <= MAX_ARGS_CHARS)
    if not ok:
        raise CheckpointError(f"{source}: 'arch_ref' is malformed")
    ref = ArchRef(str(kind), str(name), path, sha, dict(args or {}))
    signed = userkey.signed_here(SIGNATURE, _body(ref), record.get("mac"))
    return ArchRef(ref.kind, ref.name, ref.path, ref.sha256, ref.args, signed=signed)


def _args_size(args: dict) -> int:
    try:
        return len(json.dumps(args, allow_nan=False))
    except (ValueError, TypeError, RecursionError):
        return MAX_ARGS_CHARS + 1


def builtin_ref(name: str) -> ArchRef:
    return ArchRef("builtin", name)


def ref_of(ckpt: dict, source: str) -> ArchRef:
    """The checkpoint's model reference: a built-in by its name, the user's by its record."""
    if ckpt.get("arch") in BUILTINS and "arch_ref" not in ckpt:
        return builtin_ref(ckpt["arch"])
    return from_record(ckpt.get("arch_ref"), source)


def trusted(recorded: ArchRef, given: ArchRef | None, source: str) -> ArchRef:
    """The reference to build the checkpoint's model from. A built-in's arguments are checked against
    its schema. A user model's code runs only where the user names it again with --arch (`given`), or
    where this user's mnisttk recorded the reference (signed) and the source is the one training saw."""
    if recorded.kind == "builtin":
        if given is not None and given != recorded:
            raise CheckpointError(f"{source}: holds {recorded.spec}, not {given.spec}")
        check_builtin_args(recorded.name, recorded.args, source)
        return recorded
    if given is not None:
        if given.name != recorded.name:
            raise CheckpointError(f"{source}: holds {recorded.name}, not {given.name} (--arch)")
        return ArchRef(given.kind, given.name, given.path, given.sha256, given.args or recorded.args)
    where = "FILE.py" if recorded.kind == "file" else "package.module"
    if not recorded.signed:
        raise CheckpointError(f"{source}: holds your own model {recorded.name}, recorded by another mnisttk or edited "
                              f"(its reference is not signed by this user's key), so its code is not run; pass "
                              f"--arch {where}:{recorded.name} naming the model code you trust")
    if recorded.kind == "file":
        now = source_sha256(Path(recorded.path or ""))
        if now != recorded.sha256:
            raise CheckpointError(f"{source}: model file {recorded.path} changed since training (SHA-256 differs); "
                                  f"pass --arch {recorded.path}:{recorded.name} to use it as it is now")
    else:
        file = module_file(recorded.path or "")
        if file is None or recorded.sha256 is None or source_sha256(file) != recorded.sha256:
            why = "has no source file to check" if file is None or recorded.sha256 is None else \
                "changed since training (SHA-256 differs)"
            raise CheckpointError(f"{source}: module {recorded.path} {why}; pass --arch "
                                  f"{recorded.path}:{recorded.name} to use it as it is now")
    return recorded


def module_file(dotted: str) -> Path | None:
    """The file a module would be imported from, found without running any code (each parent package
    is looked up by path, not imported); None for a built-in or frozen module, or none at all."""
    from importlib.machinery import PathFinder

    parts = dotted.split(".")
    spec, search = None, None
    for i in range(len(parts)):
        full = ".".join(parts[: i + 1])
        loaded = sys.modules.get(full)
        try:
            spec = getattr(loaded, "__spec__", None) if loaded is not None else PathFinder.find_spec(full, search)
        except (ImportError, ValueError, OSError):
            return None
        if spec is None:
            return None
        search = spec.submodule_search_locations
    origin = getattr(spec, "origin", None)
    return Path(origin) if isinstance(origin, str) and os.path.isfile(origin) else None


def build(ref: ArchRef, num_classes: int = 10, spec: InputSpec = MNIST_INPUT):
    """The untrained model. Built-ins take `num_classes` and the input `spec` (their first layer's
    channels and their linear layer's width follow it); a user model is what its code returns (its input
    and output are checked by `probe`)."""
    from torch import nn

    from toolkit.model import ARCHS, Normalized

    if spec.mean is not None and spec.std is not None:  # train --mean/--std: the normalisation inside the model
        plain = InputSpec(spec.channels, spec.height, spec.width)
        return Normalized(build(ref, num_classes, plain), spec.mean, spec.std)
    if ref.kind == "builtin":
        check_builtin_args(ref.name, ref.args, "--arch-args")
        shaped: dict = ({"in_channels": spec.channels, "input_hw": (spec.height, spec.width)} if ref.name == "cnn"
                        else {"in_features": spec.channels * spec.height * spec.width})
        if spec.is_mnist:
            shaped = {}  # MNIST's built-ins are built exactly as they always were
        return ARCHS[ref.name](num_classes=num_classes, **{**shaped, **ref.args})
    obj = _load_object(ref)
    try:
        model = obj(**ref.args)
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a model's code that exits is an error too
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
            except (Exception, SystemExit, KeyboardInterrupt) as exc:  # sys.exit() in the file: an error too
                sys.modules.pop(mod_name, None)
                raise CheckpointError(f"model file {path}: {type(exc).__name__}: {first_line(exc, 160)}") from exc
    else:
        try:
            module = importlib.import_module(ref.path or "")
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            raise CheckpointError(f"--arch {ref.spec}: cannot import {ref.path}: {type(exc).__name__}: "
                                  f"{first_line(exc, 120)}") from exc
    obj = getattr(module, ref.name, None)
    if not _defined_in(obj, module):
        names = [n for n, v in vars(module).items() if not n.startswith("_") and _defined_in(v, module)]
        there = f"defined there: {', '.join(names[:8])}" if names else "it defines no class or function"
        what = "imported into" if obj is not None else "not a class or function in"
        raise CheckpointError(f"{ref.spec}: {ref.name} is {what} {ref.path}, not defined there ({there})"
                              if obj is not None else f"{ref.spec}: {ref.name} is {what} {ref.path} ({there})")
    return obj


def _defined_in(obj, module) -> bool:
    """A class or plain function whose code is the module's own (not one it imported)."""
    return ((inspect.isclass(obj) or inspect.isfunction(obj))
            and getattr(obj, "__module__", None) == module.__name__)


def with_module_sha(ref: ArchRef) -> ArchRef:
    """A module reference with its source file's SHA-256 (after it was imported), where it has one."""
    if ref.kind != "module":
        return ref
    file = module_file(ref.path or "")
    return ArchRef(ref.kind, ref.name, ref.path, source_sha256(file) if file else None, ref.args)


def probe(model, num_classes: int, spec: str, shape: InputSpec = MNIST_INPUT) -> None:
    """The model has parameters, takes N×C×H×W float (the data's `shape`) and returns N×K finite float
    logits, one row per image (a batch of 3, so a model that returns a fixed number of rows is caught), K
    the data's classes."""
    import torch

    dims = "×".join(map(str, shape.chw))
    if not any(True for _ in model.parameters()):
        raise CheckpointError(f"{spec}: has no parameters, so there is nothing to train")
    was_training = model.training
    model.eval()
    n = 3
    try:
        with torch.no_grad():
            out = model(torch.rand(n, *shape.chw, generator=torch.Generator().manual_seed(0)))
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        raise CheckpointError(f"{spec}: fails on a {n}×{dims} float input (the data's {shape.colour} "
                              f"{shape.width}×{shape.height} images): {type(exc).__name__}: "
                              f"{first_line(exc, 160)}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n or not out.is_floating_point():
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(f"{spec}: returns {got} for a {n}×{dims} input; expected [{n}, C] float logits, "
                              "one row per image")
    if out.shape[1] != num_classes:
        raise CheckpointError(f"{spec}: returns {out.shape[1]} logits per image; the data has {num_classes} classes "
                              f"(make its last layer {num_classes} wide, e.g. with --arch-args if its code takes the "
                              "class count as an argument)")
    if not torch.isfinite(out).all():
        raise CheckpointError(f"{spec}: returns NaN or infinite logits for an ordinary input before any training; "
                              "check its forward()")
