"""exported/manifest.json: what each artifact is, its hash and size, how it was made.
Standard library only: verify reads it on the edge.

A manifest is untrusted input: `load_manifest` validates it against its schema before
anything is read by name, and every name it holds must be a plain file inside the folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from toolkit.contract import MAX_CLASSES, MNIST_INPUT, InputSpec, SpecError, spec_of
from toolkit.errors import ManifestError, first_line
from toolkit.fsutil import atomic_write_bytes, sha256_file
from toolkit.targets import BY_NAME, FORMATS, KNOWN_TARGETS, PRECISIONS, SUBPATH_FORMATS, with_support  # noqa: F401

MANIFEST_NAME = "manifest.json"
REFERENCE_NAME = "reference.npz"
MANIFEST_VERSION = 2  # 2: `targets` recorded; names confined to the folder
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # ours are a few KB; a larger one is not ours

# The formats come from toolkit.targets (onnx always: it is the source of the others); each in fp32,
# and int8 with --quantize. A target is "<format>-<precision>".
REQUIRED_TARGETS = ("onnx-fp32",)  # every export writes it; a manifest without it is not one of ours


def targets_for(formats, quantize: bool) -> list[str]:
    return [f"{f}-{p}" for p in (("fp32", "int8") if quantize else ("fp32",)) for f in FORMATS if f in formats]
_HEX64 = re.compile(r"[0-9a-f]{64}")


def target_of(artifact: dict) -> str:
    return f"{artifact['format']}-{artifact['precision']}"


def io_spec(fmt: str, uint8_input: bool, num_classes: int = 10, spec: InputSpec = MNIST_INPUT) -> dict:
    dtype = "uint8" if uint8_input else "float32"
    value = "raw pixels 0-255" if uint8_input else "pixel/255 in [0, 1]"
    name = BY_NAME[fmt].input_name
    return {"inputs": [{"name": name, "dtype": dtype, "shape": ["batch", *spec.chw], "values": value}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", num_classes]}]}


def artifact_entry(path: Path, fmt: str, precision: str, quant_params: dict | None, opset: int | None,
                   test_accuracy: float, uint8_input: bool = False, file: str | None = None,
                   extra: dict | None = None, num_classes: int = 10, spec: InputSpec = MNIST_INPUT) -> dict:
    entry = {
        "file": file or path.name,
        "format": fmt,
        "precision": precision,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        **io_spec(fmt, uint8_input, num_classes, spec),
        "opset": opset,
        "test_accuracy": test_accuracy,
    }
    if quant_params is not None:
        entry["quant_params"] = quant_params
    entry.update(extra or {})  # a target's own fields: its I/O, delegation, batch files
    return entry


def classes_of(manifest: dict) -> tuple:
    """The export's class names (label k is the k-th); MNIST's digits where it records none."""
    return tuple(manifest.get("classes") or (str(d) for d in range(10)))


def ood_rule(manifest: dict, folder: Path) -> dict | None:
    """The export's not-a-digit rule (toolkit.ood), checked; None when it has none. A malformed one
    is a ManifestError: verify and inspect judge by it."""
    from toolkit import ood

    if manifest.get("ood") is None:
        return None
    try:
        rule = ood.check_rule(manifest["ood"])
    except ValueError as exc:
        raise ManifestError(f"{folder / 'manifest.json'}: its not-a-digit rule (ood): {exc}") from None
    rule_classes, classes = ood.rule_classes(rule), len(classes_of(manifest))
    if rule_classes != classes:
        raise ManifestError(f"{folder / 'manifest.json'}: its not-a-digit rule (ood) is for {rule_classes} classes, "
                            f"the export's model has {classes}")
    return rule


def deployed_bytes(manifest: dict, artifact: dict) -> int:
    """What deploying this artifact ships, in bytes: its file and, for an OpenVINO IR, its weights
    file (a LiteRT batch file is an alternative to the artifact, not a part of it)."""
    weights = (artifact.get("weights") or {}).get("file")
    extra = sum(f.get("size_bytes", 0) for f in manifest.get("support_files", []) if f["file"] == weights)
    return artifact["size_bytes"] + extra


def write_manifest(path: Path, manifest: dict) -> None:
    atomic_write_bytes(path, (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode())


def confined_path(folder: Path, name, what: str = "file", subpath: bool = False) -> Path:
    """`folder/name` for a plain file name (or, with `subpath`, plain names joined by '/') that stays
    inside `folder` with symlinks resolved; ManifestError naming it otherwise. Nothing is opened."""
    if not isinstance(name, str) or not name:
        raise ManifestError(f"manifest: {what} name {name!r} is not a file name")
    parts = name.split("/") if subpath else [name]
    if (os.path.isabs(name) or "\\" in name or "\0" in name or any(ord(c) < 32 for c in name)
            or any(p in ("", ".", "..") or "/" in p for p in parts)):
        kind = "a plain relative path" if subpath else "a plain file name"
        raise ManifestError(f"manifest: {what} {name!r} is not {kind} inside the folder; refused")
    folder = Path(folder)
    path = folder.joinpath(*parts)
    try:
        resolved, root = path.resolve(), folder.resolve()
        inside = resolved.parent == root if not subpath else root in resolved.parents
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise ManifestError(f"manifest: {what} {name!r} resolves outside {folder}; refused")
    return path


def _fail(path: Path, what: str):
    raise ManifestError(f"{path}: not a valid mnisttk manifest: {what} (re-run `mnisttk export`)")


def _check_entry(path: Path, entry, where: str, keys: dict) -> None:
    if not isinstance(entry, dict):
        _fail(path, f"{where} is {type(entry).__name__}, not an object")
    for key, kind in keys.items():
        if key not in entry:
            _fail(path, f"{where} has no '{key}'")
        value = entry[key]
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0) if kind is int else isinstance(value, kind)
        if not ok:
            want = "a non-negative integer" if kind is int else "a " + kind.__name__
            _fail(path, f"{where}.{key} is {json.dumps(value)[:40]}, not {want}")
    if "sha256" in keys and not _HEX64.fullmatch(entry["sha256"]):
        _fail(path, f"{where}.sha256 is not 64 lower-case hex digits")


def validate_manifest(manifest, folder: Path, path: Path | None = None) -> dict:
    """The manifest if it fits the schema; ManifestError with one line naming the first fault."""
    path = path or Path(folder) / MANIFEST_NAME
    if not isinstance(manifest, dict):
        _fail(path, "the top level is not an object")
    version = manifest.get("schema_version")
    if version != MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest version {version!r}, this mnisttk reads {MANIFEST_VERSION} "
                            f"(re-run `mnisttk export` with this version)")
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, list):
        _fail(path, "'artifacts' is not a list")
    if not artifacts:
        _fail(path, "it lists no artifacts")
    for i, a in enumerate(artifacts):
        _check_entry(path, a, f"artifacts[{i}]", {"file": str, "format": str, "precision": str, "sha256": str,
                                                   "size_bytes": int})
        if a["format"] not in FORMATS:
            _fail(path, f"artifacts[{i}] has unknown format {a['format']!r} (known: {', '.join(FORMATS)})")
        if a["precision"] not in PRECISIONS:
            _fail(path, f"artifacts[{i}] has unknown precision {a['precision']!r} (known: {', '.join(PRECISIONS)})")
        confined_path(folder, a["file"], f"artifacts[{i}].file", subpath=a["format"] in SUBPATH_FORMATS)
    _check_entry(path, manifest.get("reference"), "reference", {"file": str, "sha256": str})
    confined_path(folder, manifest["reference"]["file"], "reference.file")
    _check_entry(path, manifest.get("checkpoint"), "checkpoint", {"path": str, "sha256": str})
    support = manifest.get("support_files", [])
    if not isinstance(support, list):
        _fail(path, "'support_files' is not a list")
    for i, f in enumerate(support):
        _check_entry(path, f, f"support_files[{i}]", {"file": str, "sha256": str})
        confined_path(folder, f["file"], f"support_files[{i}].file", subpath=True)
    support_sha = {f["file"]: f["sha256"] for f in support}
    for i, a in enumerate(artifacts):
        if "static_batch" in a and (type(a["static_batch"]) is not int or a["static_batch"] != 1):
            _fail(path, f"artifacts[{i}].static_batch is {json.dumps(a['static_batch'])[:40]}, not 1 "
                        "(an artifact runs at batch 1; larger batches are batch_files)")
        variants = a.get("batch_files", [])
        if not isinstance(variants, list):
            _fail(path, f"artifacts[{i}].batch_files is not a list")
        if variants and a["format"] not in with_support("batch_files"):
            _fail(path, f"artifacts[{i}] is {a['format']}, which has no batch files")
        batches = set()
        for j, v in enumerate(variants):
            _check_entry(path, v, f"artifacts[{i}].batch_files[{j}]", {"file": str, "sha256": str, "batch": int})
            if v["batch"] < 2 or v["batch"] in batches or v["batch"] > 65536:
                _fail(path, f"artifacts[{i}].batch_files[{j}].batch {v['batch']} is not a new batch size from 2 "
                            "to 65536 (the artifact itself is batch 1)")
            batches.add(v["batch"])
            if support_sha.get(v["file"]) != v["sha256"]:
                _fail(path, f"artifacts[{i}].batch_files[{j}] is not a listed support file with that SHA-256")
        if a["format"] in with_support("weights") or "weights" in a:  # an IR's .bin: hashed like any other
            if a["format"] not in with_support("weights"):
                _fail(path, f"artifacts[{i}] is {a['format']}, which has no weights file")
            _check_entry(path, a.get("weights"), f"artifacts[{i}].weights", {"file": str, "sha256": str})
            if support_sha.get(a["weights"]["file"]) != a["weights"]["sha256"]:
                _fail(path, f"artifacts[{i}].weights is not a listed support file with that SHA-256")
    files = [a["file"] for a in artifacts] + [manifest["reference"]["file"]] + [f["file"] for f in support]
    if len(set(files)) != len(files):
        _fail(path, "a file is listed twice")
    targets = manifest.get("targets")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        _fail(path, "'targets' is not a list of names")
    unknown = [t for t in targets if t not in KNOWN_TARGETS]
    if unknown:
        _fail(path, f"unknown target {unknown[0]!r} (known: {', '.join(KNOWN_TARGETS)})")
    for t in REQUIRED_TARGETS:
        if t not in targets:
            _fail(path, f"target {t} missing: every export writes it")
    listed = [target_of(a) for a in artifacts]
    for t in targets:
        if listed.count(t) != 1:
            _fail(path, f"target {t} has {listed.count(t)} artifacts, expected exactly one")
    extra = [t for t in listed if t not in targets]
    if extra:
        _fail(path, f"artifact of target {extra[0]} was not asked for in 'targets'")
    skipped = manifest.get("not_exported", [])
    if not isinstance(skipped, list):
        _fail(path, "'not_exported' is not a list")
    if len(skipped) > len(KNOWN_TARGETS):  # one entry per target at most: 9,000 would be a 1 MB report
        _fail(path, f"'not_exported' lists {len(skipped):,} entries; there are {len(KNOWN_TARGETS)} targets")
    seen: set = set()
    for i, e in enumerate(skipped):
        _check_entry(path, e, f"not_exported[{i}]", {"target": str, "reason": str})
        if e["target"] not in KNOWN_TARGETS or e["target"] in targets or len(e["reason"]) > 400:
            _fail(path, f"not_exported[{i}] is not a known target left out of 'targets' with a short reason")
        if e["target"] in seen:
            _fail(path, f"not_exported[{i}] names {e['target']} a second time")
        seen.add(e["target"])
    classes = manifest.get("classes")
    if classes is not None and not (isinstance(classes, list) and 2 <= len(classes) <= MAX_CLASSES
                                    and all(isinstance(c, str) and 0 < len(c) <= 64 for c in classes)):
        _fail(path, f"'classes' is not a list of 2 to {MAX_CLASSES} class names")
    if manifest.get("calibration") is not None and not any(t.endswith("-int8") for t in targets):
        _fail(path, "it records a calibration but no int8 target")
    try:
        spec_of(manifest)
    except SpecError as exc:
        _fail(path, f"its input: {exc}")
    return manifest


def manifest_spec(manifest: dict) -> InputSpec:
    """What the export's models take (MNIST's 1×28×28 where an older manifest records none)."""
    return spec_of(manifest)


def load_manifest(folder: Path) -> dict:
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.lexists(folder) else "no such folder"
        raise ManifestError(f"{folder}: {what} (--dir names the folder `mnisttk export` wrote)")
    path = Path(folder) / MANIFEST_NAME
    if os.path.lexists(path):  # a link out of the folder is refused like any other name
        confined_path(folder, MANIFEST_NAME, "manifest")
    if not path.is_file():
        if path.exists():
            raise ManifestError(f"{path}: not a regular file")
        raise ManifestError(f"{path}: no manifest (run `mnisttk export --quantize` first)")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path}: {path.stat().st_size:,} bytes is far too large for a manifest; refused")
        manifest = json.loads(path.read_bytes(), parse_constant=_no_constant)
    except ManifestError:
        raise
    except RecursionError:
        raise ManifestError(f"{path}: not a readable mnisttk manifest (JSON nested too deeply)") from None
    except (ValueError, OSError) as exc:
        raise ManifestError(f"{path}: not a readable mnisttk manifest ({first_line(exc, 120)})") from None
    return validate_manifest(manifest, folder, path)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a manifest may hold")


MAX_LISTED_BYTES = 256 * 1024 * 1024  # any file a manifest lists: ours are KB to a few MB


def check_hashes(folder: Path, manifest: dict) -> list[dict]:
    """One record per listed file (artifacts, the reference, support files): ok, missing or changed.
    Each file's size is checked against the manifest's (and a bound) before a byte is hashed, and the
    hash reads no more than that size: a huge or sparse file listed there is refused at once."""
    from toolkit.fsutil import TooLarge

    entries = [*manifest["artifacts"], {"file": manifest["reference"]["file"], "sha256": manifest["reference"]["sha256"]},
               *manifest.get("support_files", [])]
    results = []
    for entry in entries:
        path = confined_path(folder, entry["file"], subpath="/" in entry["file"])
        size = entry.get("size_bytes")
        if not path.is_file():
            status = "not a regular file" if path.exists() else "missing"
        else:
            try:
                actual = path.stat().st_size
                bound = size if isinstance(size, int) and not isinstance(size, bool) else MAX_LISTED_BYTES
                if actual > MAX_LISTED_BYTES:
                    status = f"changed ({actual:,} bytes, more than any file mnisttk reads)"
                elif actual != bound and bound != MAX_LISTED_BYTES:
                    status = "changed"  # another size: not the bytes exported, and not worth hashing
                else:
                    status = "ok" if sha256_file(path, min(bound, MAX_LISTED_BYTES)) == entry["sha256"] else "changed"
            except TooLarge:
                status = "changed (it grew while being read)"
            except OSError as exc:
                status = f"unreadable ({exc.strerror or exc})"
        results.append({"file": entry["file"], "status": status})
    return results
