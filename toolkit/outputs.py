"""Outputs that travel: every verify row's per-image logits in one JSON file, bound to the artifact's
and the test set's SHA-256, so another machine's run (`verify --golden`) or a later one
(`mnisttk compare`) can be judged against this one image by image.

The file (schema `mnisttk-outputs`, version 1) is JSON: machine, test set, labels, and per row its id,
artifact hash, status, accuracy, timings and logits. Arrays are float32/uint8, little-endian,
byte-shuffled (float bytes grouped by significance, as blosc does: the exponent bytes then compress
well), zlib'd and base64'd, each with the SHA-256 of its raw bytes; the whole document carries the
SHA-256 of its canonical form. The hashes catch truncation and edits by mistake, not a forger (anyone
can recompute them): it is evidence to compare, not a signature. Edge side: numpy and the standard
library only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.contract import MAX_CLASSES
from toolkit.errors import ToolkitError
from toolkit.fsutil import json_safe

KIND = "mnisttk-outputs"
SCHEMA_VERSION = 1
MAX_FILE_BYTES = 256 * 1024 * 1024  # 10,000 images × 10 logits × 40 rows is about 16 MB
MAX_IMAGES = 1_000_000
MAX_ROWS = 256
# Bounds on the whole file, checked before anything is decoded (a per-array bound alone lets a few MB
# of compressed rows inflate past memory): the bytes all its arrays decode to, its JSON objects and
# arrays (ours: ~20 a row), and its nesting (ours: 5 deep).
MAX_DECODED_BYTES = 512 * 1024 * 1024
MAX_CONTAINERS = 100_000
MAX_DEPTH = 32
NUM_CLASSES = 10
RAN_PRECISIONS = (None, "f32", "fp32", "bf16", "f16", "int8")  # what a row may say its runtime computed in


class OutputsError(ToolkitError):
    """An outputs file is missing, truncated, edited or not one of ours."""


def _encode(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    raw = a.tobytes()
    shuffled = np.frombuffer(raw, np.uint8).reshape(-1, a.itemsize).T.tobytes() if a.itemsize > 1 else raw
    return {"dtype": a.dtype.name, "shape": list(a.shape), "encoding": "shuffle+zlib+base64",
            "sha256": hashlib.sha256(raw).hexdigest(),
            "data": base64.b64encode(zlib.compress(shuffled, 9)).decode("ascii")}


_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}


def _decode(d, what: str, shape: tuple) -> np.ndarray:
    """An array stored by _encode, checked against the shape expected here before anything is inflated."""
    if not isinstance(d, dict) or d.get("encoding") != "shuffle+zlib+base64" or not isinstance(d.get("dtype"), str) \
            or d["dtype"] not in _DTYPES:  # a list or a dict as the dtype: refused, not hashed
        raise OutputsError(f"{what}: not an encoded array")
    if d.get("shape") != list(shape):
        raise OutputsError(f"{what}: shape {d.get('shape')} where {list(shape)} was expected")
    dtype = _DTYPES[d["dtype"]]
    size = int(np.prod(shape)) * dtype.itemsize
    try:
        packed = base64.b64decode(d["data"], validate=True)
        inflater = zlib.decompressobj()
        shuffled = inflater.decompress(packed, size + 1)  # never inflate past the size the shape allows
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise OutputsError(f"{what}: its data does not decode ({exc})") from None
    if len(shuffled) != size or not inflater.eof:
        raise OutputsError(f"{what}: {len(shuffled):,} bytes where {size:,} were expected (truncated or edited)")
    raw = (np.frombuffer(shuffled, np.uint8).reshape(dtype.itemsize, -1).T.tobytes()
           if dtype.itemsize > 1 else shuffled)
    if hashlib.sha256(raw).hexdigest() != d.get("sha256"):
        raise OutputsError(f"{what}: SHA-256 of its values does not match the one stored (edited or damaged)")
    return np.frombuffer(raw, dtype).reshape(shape).copy()


def _canonical(doc: dict) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != "sha256"}, sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode()


# what each saved row keeps of verify's row (besides its logits)
ROW_FIELDS = ("id", "name", "runtime", "precision", "fmt", "file", "status", "accuracy", "latency_us", "throughput",
              "loaded_sha256", "is_reference", "arithmetic", "ran_precision")


def build(result: dict, logits: dict, labels: np.ndarray, test_sha256: str, artifact_sha256: dict) -> dict:
    """The outputs document of one verify run. `logits`: row id -> (n, C) logits of the rows that
    produced them; `artifact_sha256`: file -> its SHA-256 in the manifest."""
    rows = []
    for r in result["rows"]:
        row = {k: json_safe(r.get(k)) for k in ROW_FIELDS}
        row["artifact_sha256"] = artifact_sha256.get(r.get("file"))
        if r["id"] in logits:
            row["logits"] = _encode(np.asarray(logits[r["id"]], dtype=np.float32))
        rows.append(row)
    doc = {"kind": KIND, "schema_version": SCHEMA_VERSION, "mnisttk": _version(), "created": _now(),
           "machine": result.get("machine"), "threads": result.get("threads"),
           "throughput_batch": result.get("throughput_batch"), "passed": result.get("passed"),
           "test_sha256": test_sha256, "n_test": int(len(labels)),
           "num_classes": int(next(iter(logits.values())).shape[1]) if logits else NUM_CLASSES,
           "labels": _encode(np.asarray(labels, dtype=np.uint8)), "rows": rows}
    doc["sha256"] = hashlib.sha256(_canonical(doc)).hexdigest()
    return doc


def dumps(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode()


@dataclass
class Outputs:
    """A loaded, checked outputs file: `rows` by id, each with its logits (None: the row produced none)."""

    path: str
    doc: dict
    labels: np.ndarray
    logits: dict

    @property
    def test_sha256(self) -> str:
        return self.doc["test_sha256"]

    @property
    def rows(self) -> dict:
        return {r["id"]: r for r in self.doc["rows"]}

    def label(self) -> str:
        m = self.doc.get("machine") or {}
        cpu = (m.get("cpu") or {}).get("model") or "?"
        note = f", {m['note']}" if m.get("note") else ""
        return f"{Path(self.path).name} ({m.get('arch') or '?'}, {cpu}{note})"


def load(path) -> Outputs:
    """Read and check an outputs file: size, JSON, kind and version, the document's hash, each array's
    shape and hash. OutputsError with one line naming the fault otherwise."""
    from toolkit.fsutil import regular_file

    p = regular_file(path, OutputsError, "an outputs file", MAX_FILE_BYTES)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise OutputsError(f"{path}: not a readable outputs file ({exc.strerror or exc})") from None
    # JSON's containers cost ~100 bytes of memory each for 2 bytes of file: bounded before parsing
    if raw.count(b"{") + raw.count(b"[") > MAX_CONTAINERS:
        raise OutputsError(f"{path}: more than {MAX_CONTAINERS:,} JSON objects and arrays: not an outputs file of "
                           "mnisttk's; refused")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise OutputsError(f"{path}: not a readable outputs file ({str(exc).splitlines()[0][:120]})") from None
    del raw
    if _depth(doc) > MAX_DEPTH:
        raise OutputsError(f"{path}: JSON nested more than {MAX_DEPTH} deep: not an outputs file of mnisttk's; refused")
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise OutputsError(f"{path}: not an mnisttk outputs file (make one with `mnisttk verify --save-outputs`)")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise OutputsError(f"{path}: outputs schema_version {doc.get('schema_version')!r}; this mnisttk reads "
                           f"{SCHEMA_VERSION}")
    try:
        same = hashlib.sha256(_canonical(doc)).hexdigest() == doc.get("sha256")
    except (TypeError, ValueError):
        same = False
    if not same:
        raise OutputsError(f"{path}: its SHA-256 does not match its contents (truncated or edited)")
    n, rows = doc.get("n_test"), doc.get("rows")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES:
        raise OutputsError(f"{path}: n_test {n!r} is not an image count")
    if not isinstance(doc.get("test_sha256"), str) or not isinstance(rows, list) or len(rows) > MAX_ROWS:
        raise OutputsError(f"{path}: no test_sha256 or no list of rows")
    for i, r in enumerate(rows):
        if isinstance(r, dict):
            _check_types(path, i, r)
    _check_types(path, None, doc)
    c_n = doc.get("num_classes", NUM_CLASSES)  # files without it: MNIST's 10
    if type(c_n) is not int or not 2 <= c_n <= MAX_CLASSES:
        raise OutputsError(f"{path}: num_classes {str(c_n)[:20]!r} is not a class count from 2 to {MAX_CLASSES}")
    with_logits = sum(1 for r in rows if isinstance(r, dict) and "logits" in r)
    decoded = n + with_logits * n * c_n * 4
    if decoded > MAX_DECODED_BYTES:
        raise OutputsError(f"{path}: its {with_logits} rows of {n:,} images would decode to {decoded:,} bytes, more "
                           f"than the {MAX_DECODED_BYTES:,} an outputs file may hold; refused")
    labels = _decode(doc.get("labels"), f"{path}: labels", (n,))
    if labels.max(initial=0) >= c_n:
        raise OutputsError(f"{path}: labels outside 0-{c_n - 1}")
    logits, seen = {}, set()
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("id"), str) or r["id"] in seen:
            raise OutputsError(f"{path}: row {i} has no id, or one seen before")
        seen.add(r["id"])
        if r.get("precision") not in ("fp32", "int8"):
            raise OutputsError(f"{path}: row {r['id']}: precision {r.get('precision')!r}")
        if r.get("arithmetic") not in (None, "exact", "default") or r.get("ran_precision") not in RAN_PRECISIONS:
            raise OutputsError(f"{path}: row {r['id']}: arithmetic {r.get('arithmetic')!r} / ran_precision "
                               f"{r.get('ran_precision')!r} is not one mnisttk writes")
        if "logits" in r:
            x = _decode(r["logits"], f"{path}: row {r['id']}", (n, c_n))
            if not np.isfinite(x).all():
                raise OutputsError(f"{path}: row {r['id']}: logits that are not finite")
            logits[r["id"]] = x
    return Outputs(str(path), doc, labels.astype(np.int64), logits)


def _depth(obj) -> int:
    """How deep JSON containers nest in `obj` (iterative: a deep document cannot exhaust the stack)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


_NUMBER = (int, float)
# field -> the types it may have in an outputs file (None allowed everywhere: not measured)
_ROW_TYPES: dict[str, Any] = {"name": str, "runtime": str, "fmt": str, "file": str, "status": str, "artifact_sha256": str,
              "loaded_sha256": str, "is_reference": bool, "accuracy": _NUMBER, "throughput": _NUMBER,
              "latency_us": dict}
_DOC_TYPES: dict[str, Any] = {"machine": dict, "mnisttk": str, "created": str, "threads": int, "throughput_batch": int,
              "passed": bool}
_MACHINE_TYPES: dict[str, Any] = {"cpu": dict, "arch": str, "note": str, "onnxruntime": str}


def _check_types(path, i, obj) -> None:
    """OutputsError naming the field whose value has a type no outputs file of mnisttk's has."""
    if not isinstance(obj, dict):
        raise OutputsError(f"{path}: row {i} is not an object")
    where = f"{path}: " + (f"row {obj.get('id', i)!s:.60}: " if i is not None else "")
    checks: list[tuple[dict, dict[str, Any], str]] = [(obj, _ROW_TYPES if i is not None else _DOC_TYPES, "")]
    if i is None and isinstance(obj.get("machine"), dict):
        checks.append((obj["machine"], _MACHINE_TYPES, "machine."))
        cpu = obj["machine"].get("cpu")
        if isinstance(cpu, dict) and cpu.get("model") is not None and not isinstance(cpu["model"], str):
            raise OutputsError(f"{where}field machine.cpu.model is {type(cpu['model']).__name__}, not a string")
    for o, types, prefix in checks:
        for key, want in types.items():
            v = o.get(key)
            bad = v is not None and (not isinstance(v, want) or (want is not bool and isinstance(v, bool)
                                                                 and want in (int, _NUMBER)))
            if bad:
                raise OutputsError(f"{where}field {prefix}{key} is {type(v).__name__}, which it never is; refused")
    lat = obj.get("latency_us") if i is not None else None
    if isinstance(lat, dict) and any(v is not None and (not isinstance(v, _NUMBER) or isinstance(v, bool))
                                     for v in lat.values()):
        raise OutputsError(f"{where}field latency_us holds a value that is not a number; refused")


def _version() -> str:
    from toolkit import __version__

    return __version__


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
