"""One template for everything that turns test images into logits and can be timed: verify's rows,
`--search`'s candidates, the benchmark's runners. A runtime implements two steps — `prepare` (uint8
images to its own input) and `_forward` (one prepared batch to logits) — and inherits the one
`logits()` that batches, pads a static batch, and checks the output's shape and finiteness once for
every runtime. Also the one place a model's bytes are read: `read_model_bytes` returns them with
their SHA-256, so what is hashed is what is loaded. No imports beyond numpy: both sides use it."""

from __future__ import annotations

import contextlib
import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.contract import EVAL_BATCH, MAX_CLASSES, MNIST_INPUT, NUM_CLASSES, InputSpec, SpecError
from toolkit.errors import ManifestError, ToolkitError
from toolkit.fsutil import regular_file

MAX_MODEL_BYTES = 256 * 1024 * 1024  # ours are tens of KB; anything this big is not an MNIST model


class Arithmetic(str, Enum):
    """What a row asks of a runtime that chooses the arithmetic it runs an fp32 file in (OpenVINO's
    `INFERENCE_PRECISION_HINT`: bf16 on CPUs with AVX-512 BF16 or AMX, f16 on AVX-512 FP16 / AMX-FP16
    ones; ONNX Runtime's bf16 fast-math GEMMs on aarch64). Never left to the machine: a check of
    exactness asks for EXACT, a row that shows what a user gets asks for DEFAULT, and both record what ran."""

    EXACT = "exact"  # the file's own precision, asked for explicitly (an fp32 file: fp32 arithmetic)
    DEFAULT = "default"  # nothing asked: what the runtime does on this CPU for a user who sets nothing


@dataclass(frozen=True)
class Placement:
    """Where a runtime ran a model's operators: the evidence verify's placement gates read field by field
    (toolkit.gates.Measurement's fields of the same names) and the report prints. Each runtime answers
    the questions that concern it; None is "not a question for this runtime", not "none found"."""

    backend: str  # what ran the compute: "ORT CPU", "ORT CUDA", "XNNPACK", "OpenVINO CPU" …
    summary: str  # one line for the report
    int8_kernels: tuple[str, ...] | None = None  # the int8 kernels that ran (a runtime that can run int8 in float)
    not_delegated: tuple[str, ...] = ()  # compute operators a delegate left to the runtime's own kernels
    cpu_compute_ops: tuple[str, ...] | None = None  # a GPU row's compute operators that ran on the CPU
    detail: dict[str, Any] = field(default_factory=dict)  # the runtime's own evidence (the JSON keeps it)

    def to_json(self) -> dict[str, Any]:
        """A flat JSON object: the detail's keys beside the typed fields (None fields left out)."""
        typed = {"backend": self.backend, "summary": self.summary, "not_delegated": list(self.not_delegated)}
        if self.int8_kernels is not None:
            typed["int8_kernels"] = list(self.int8_kernels)
        if self.cpu_compute_ops is not None:
            typed["cpu_compute_ops"] = list(self.cpu_compute_ops)
        return {**self.detail, **typed}

    @classmethod
    def from_json(cls, d: dict | None) -> Placement | None:
        """The typed fields of a report's placement object (to_json's), the rest as detail."""
        if not d:
            return None

        def names(key):
            v = d.get(key)
            return None if v is None else tuple(str(x) for x in v)

        typed = ("backend", "summary", "int8_kernels", "not_delegated", "cpu_compute_ops")
        return cls(str(d.get("backend", "")), str(d.get("summary", "")), names("int8_kernels"),
                   names("not_delegated") or (), names("cpu_compute_ops"),
                   {k: v for k, v in d.items() if k not in typed})


def delegate_placement(delegate: str, took: str, found: dict, detail: tuple) -> Placement:
    """The placement of a runtime with a delegate: `took` says what the delegate took, `found` holds its
    `not_delegated` operators and the `detail` keys kept in the JSON."""
    outside = found["not_delegated"]
    summary = took + (f"; outside {delegate} (own kernels): " + ", ".join(outside) if outside else "; no compute outside it")
    return Placement(delegate, summary, not_delegated=tuple(outside), detail={k: found[k] for k in detail})


def max_threads() -> int:
    return os.cpu_count() or 1


def resolve_threads(threads: int) -> int:
    """The one meaning of `threads` everywhere: 0 is all of this machine's cores, n > 0 is n."""
    if not isinstance(threads, int) or threads < 0:
        raise ToolkitError(f"threads must be 0 (all cores) or a positive count, not {threads!r}")
    return threads or max_threads()


def read_model_bytes(path: Path, expected_sha256: str | None = None, fmt: str | None = None, *,
                     model: bool = True) -> tuple[bytes, str]:
    """(the model's bytes, their SHA-256), read once: what is hashed is exactly what is loaded. With
    `expected_sha256`, other bytes are refused; with `fmt` (a manifest format), bytes of another
    format are refused (toolkit.formats). A model (`model`: not a weights file) whose bytes are ONNX
    and keep a tensor in an external-data file is refused before any runtime sees it: ONNX Runtime
    resolves such a file against the working directory, OpenVINO follows `../` and absolute paths, so
    the model would read files the manifest never listed."""
    path = regular_file(path, ToolkitError, "an mnisttk model", MAX_MODEL_BYTES, missing="no such model file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise ManifestError(f"{path}: SHA-256 changed since export: the file is not the one exported")
    if fmt is not None:
        from toolkit.formats import check_kind

        check_kind(data, fmt, str(path))
    if model:
        refuse_external_data(data, str(path))
    return data, sha256


def refuse_external_data(data: bytes, name: str) -> None:
    """ToolkitError in one line if these bytes are an ONNX model with a tensor kept outside them."""
    from toolkit.formats import sniff
    from toolkit.onnx_proto import external_tensors

    kind = sniff(data)
    if kind not in ("onnx", None):  # another kind of file: no ONNX external data in it
        return
    try:
        outside = external_tensors(data)
    except ValueError:
        if kind == "onnx":
            raise ToolkitError(f"{name}: not a parsable ONNX model; refused") from None
        return  # not ONNX at all: the runtime refuses it in its own words
    if outside:
        raise ToolkitError(f"{name}: keeps tensors in an external-data file ({', '.join(outside[:3])}), which "
                           "mnisttk refuses (unhashed, and read from outside what the manifest lists)")


def artifact_classes(artifact: dict) -> int:
    """How many logits an artifact gives per image, as its manifest entry says (MNIST's 10 by default)."""
    try:
        c = artifact["outputs"][0]["shape"][1]
    except (KeyError, IndexError, TypeError):
        return NUM_CLASSES
    return c if type(c) is int and 2 <= c <= MAX_CLASSES else NUM_CLASSES


def artifact_spec(artifact: dict) -> InputSpec | None:
    """The input a manifest entry says its file takes (C×H×W); None where the entry says none (predict
    on a model without a manifest: the model's own input decides). A malformed one is one line."""
    try:
        shape = artifact["inputs"][0]["shape"]
    except (KeyError, IndexError, TypeError):
        return None
    if not (isinstance(shape, list) and len(shape) == 4):
        raise ToolkitError(f"{artifact.get('file')}: its manifest input shape {str(shape)[:40]} is not [batch, C, H, W]")
    return InputSpec(*shape[1:])


def declared_spec(dims, name: str) -> tuple[int, int, int] | None:
    """C×H×W of a model's declared N×C×H×W input, checked against the bounds (toolkit.contract); None
    where one of them is not a fixed number (a dynamic height, say)."""
    dims = list(dims)
    if len(dims) != 4:
        raise ToolkitError(f"{name}: input {dims}; an mnisttk model takes one N×C×H×W image batch")
    chw = dims[1:]
    if not all(type(d) is int and d > 0 for d in chw):
        return None
    try:
        return InputSpec(*chw).chw
    except SpecError as exc:
        raise ToolkitError(f"{name}: input {dims}: {exc}") from None


def check_input(cand: Candidate, artifact: dict) -> None:
    """The file's declared input against its manifest entry's, and the candidate's input spec set from
    them: what `prepare` is checked against and what predict converts a picture to."""
    want, got = artifact_spec(artifact), cand.declared_input()
    if want is not None and got is not None and got != want.chw:
        raise ToolkitError(f"{cand.file or cand.name}: takes {'×'.join(map(str, got))} images, its manifest says "
                           f"{want.text}")
    cand.input_spec = want or (InputSpec(*got) if got is not None else MNIST_INPUT)


def checked_logits(out, n: int, name: str, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """`out` as N×C float logits for n images, or a one-line error naming `name` (wrong shape, or
    images whose logits are NaN or infinite)."""
    out = np.asarray(out)
    if out.shape != (n, num_classes):
        raise ToolkitError(f"{name}: output shape {list(out.shape)} for {n} images, expected [{n}, {num_classes}]")
    bad = ~np.isfinite(out).all(1)
    if bad.any():
        raise ToolkitError(f"{name}: {int(bad.sum())} of {n} images give NaN or infinite logits")
    return out


def batched_logits(forward, x, n: int, *, batch: int, fixed_batch: int | None, name: str,
                   num_classes: int = NUM_CLASSES) -> np.ndarray:
    """`forward` over prepared inputs `x` (n of them) in slices of `batch` — of `fixed_batch` exactly
    for a static-batch model, the last slice padded with zeros and its padding dropped — then checked."""
    if fixed_batch:
        batch = fixed_batch
        pad = (-n) % batch
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    out = np.concatenate([np.asarray(forward(x[i:i + batch])) for i in range(0, len(x), batch)])[:n]
    return checked_logits(out, n, name, num_classes)


class Candidate(ABC):
    """Something that turns uint8 test images into logits, and can be timed.

    A runtime fills in `prepare` and `_forward`; `logits` is the same for all. `bench_input`/`run` are
    what the timing loops call (by default the prepared input and `_forward`); `scope()` is the
    context in which the candidate may change process-wide state (threads, engines), restored on exit."""

    name: str  # e.g. "ONNX int8"
    runtime: str  # e.g. "ORT CPU"
    precision: str  # fp32 | int8
    file: str | None
    # the precision the runtime computed in, where it chooses one (OpenVINO: f32, or bf16 on CPUs that
    # have it); None: the artifact's own
    ran_precision: str | None = None
    arithmetic: Arithmetic = Arithmetic.EXACT  # what was asked of the runtime (see Arithmetic)
    # the runtime settings that asked for it, as the runtime spells them (e.g. {"INFERENCE_PRECISION_HINT":
    # "f32"}); empty: the runtime has no such switch, and computes an fp32 file in fp32
    precision_settings: dict = {}
    loaded_sha256: str | None = None  # SHA-256 of the bytes actually loaded, where a file was
    fixed_batch: int | None = None  # a static-batch model's batch: logits() runs exactly that many at a time
    consistency_batches: tuple = ()  # the batch sizes `consistency` compares
    num_classes: int = NUM_CLASSES  # logits per image: the manifest's output shape (toolkit.runtimes.build sets it)
    _input_spec: InputSpec | None = None  # set by toolkit.runtimes.build from the manifest (check_input)

    @property
    def input_spec(self) -> InputSpec:
        """What it takes: the manifest's, else its own declared input, else MNIST's 1×28×28."""
        if self._input_spec is not None:
            return self._input_spec
        declared = self.declared_input()
        return InputSpec(*declared) if declared is not None else MNIST_INPUT

    @input_spec.setter
    def input_spec(self, spec: InputSpec) -> None:
        self._input_spec = spec

    @abstractmethod
    def prepare(self, images_u8: np.ndarray):
        """uint8 N×H×W (N×H×W×C) -> this runtime's input for them (N×C×H×W)."""

    @abstractmethod
    def _forward(self, x) -> np.ndarray:
        """Logits of one prepared batch (its size: the model's fixed batch, or any up to EVAL_BATCH)."""

    def logits(self, images_u8: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
        """Logits (N×C, finite) for uint8 images, `batch` at a time (a static-batch model's own batch)."""
        return batched_logits(self._forward, self.prepare(images_u8), len(images_u8), batch=batch,
                              fixed_batch=self.fixed_batch, name=self.file or self.name, num_classes=self.num_classes)

    def bench_input(self, images_u8: np.ndarray):
        """The runtime's own input for these images (timing excludes the conversion)."""
        return self.prepare(images_u8)

    def run(self, x) -> object:
        """One timed call on a `bench_input`."""
        return self._forward(x)

    def scope(self) -> contextlib.AbstractContextManager:
        """The process-wide state this candidate needs while it runs, set on entry, restored on exit."""
        return contextlib.nullcontext()

    def placement(self) -> Placement | None:
        """Where this runtime ran the model's operators; None where it reports nothing."""
        return None

    def declared_input(self) -> tuple[int, int, int] | None:
        """C×H×W as the loaded model's input declares them, None where it does not say (a TorchScript
        module, a dynamic size)."""
        return None

    def declared_classes(self) -> int | None:
        """Logits per image as the loaded model's output declares them (2 to 256), None where it does not
        say: what a model given without a manifest (predict) is run with."""
        return None

    def metadata(self, key: str) -> str | None:
        """A metadata entry the model file carries (ONNX's metadata_props), None where it has none."""
        return None

    def input_dtype(self) -> str:
        """The dtype the loaded artifact itself takes (numpy's name: float32, uint8, int8), read from the
        runtime where it declares one; by default what `prepare` feeds it, which it ran on."""
        x = self.prepare(np.zeros((1, *self.input_spec.image_shape), np.uint8))
        return str(getattr(x, "dtype", "")).removeprefix("torch.")

    def output_limits(self) -> tuple | None:
        """(lowest, highest, step) of an int8 output after dequantization, or None (a float output)."""
        return None

    def consistency(self, images_u8: np.ndarray, preds: np.ndarray) -> bool | None:
        """Whether other batch sizes give `preds` again; None where not checked."""
        return None
