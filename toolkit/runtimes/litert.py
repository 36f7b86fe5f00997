"""The LiteRT rows: `.tflite` files on LiteRT's interpreter (`ai-edge-litert`) with its default
XNNPACK delegate. Edge side: numpy and ai_edge_litert only, never torch.

A `.tflite` from litert-torch has a static batch (its converter bakes the batch into the reshapes:
a dynamic-batch file converts but cannot run), so export writes one file per batch size it needs:
the artifact at batch 1, and `batch_files` (e.g. batch 256, for throughput and bulk runs), each
hashed in the manifest. Bulk inputs run in chunks of the largest batch, the last chunk padded.

Arithmetic: XNNPACK computes an fp32 file in fp32 unless its delegate is built with fp16 forced
(LiteRT's Python interpreter exposes no such switch, and mnisttk sets none): EXACT and DEFAULT are
the same request here, and the row records none."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.contract import MAX_CLASSES, to_float_input
from toolkit.errors import ManifestError, RuntimeUnavailable, ToolkitError, first_line
from toolkit.manifest import confined_path
from toolkit.runtimes.candidate import (
    Arithmetic,
    Candidate,
    Placement,
    batched_logits,
    declared_spec,
    delegate_placement,
    read_model_bytes,
    resolve_threads,
)

INSTALL_HINT = "pip install 'mnisttk[litert]'"
SHAPE_OPS = {"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS"}  # layout only: no arithmetic worth a delegate


def interpreter(data: bytes, threads: int, name: str):
    """A LiteRT interpreter over these bytes, tensors allocated (XNNPACK applied by default, with its
    latest features: batch-1 p50 10.1 against 11.2 µs for the int8 model, the same logits to the bit
    on the test set; benchmarks/, this machine). threads 0: all cores."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise RuntimeUnavailable(f"ai-edge-litert is not installed ({INSTALL_HINT})") from None
    from toolkit.quietfd import native_output_captured

    try:
        with native_output_captured():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            it = Interpreter(model_content=data, num_threads=resolve_threads(threads),
                             experimental_default_delegate_latest_features=True)
            declared = declared_bytes(it)
            if declared > MAX_DECLARED_BYTES:  # checked before a byte of it is allocated
                raise _TooLarge(f"its tensors declare {declared / 2**20:,.0f} MB (over "
                                f"{MAX_DECLARED_BYTES // 2**20} MB; ours need under 10 MB); refused")
            it.allocate_tensors()
    except _TooLarge as exc:
        raise ToolkitError(f"{name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - LiteRT's interpreter raises its own types on foreign bytes: one line
        raise ToolkitError(f"{name}: not a loadable LiteRT model ({first_line(exc, 160)})") from None
    return it


MAX_DECLARED_BYTES = 512 * 2**20  # a batch-256 program of ours declares ~6 MB; one hostile file declared 2 GB


class _TooLarge(Exception):
    pass


def declared_bytes(it) -> int:
    """The bytes the interpreter's tensors declare (read from the model before allocation)."""
    total = 0
    for t in it.get_tensor_details():
        n = np.dtype(t["dtype"]).itemsize
        for d in t["shape"]:
            n *= max(int(d), 0)
        total += n
    return total


def delegation(it) -> dict:
    """Which of the model's operators the XNNPACK delegate took, and which run on LiteRT's builtin
    kernels. A delegate node replaces a connected part of the graph whose boundary is its own inputs
    and outputs: walking back from its outputs to its inputs finds the operators it replaced."""
    ops = it._get_ops_details()
    producer = {int(t): op for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    taken: set[int] = set()
    for d in (op for op in ops if op["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:
            op = producer.get(stack.pop())
            if op is None or op["index"] in taken:
                continue
            taken.add(op["index"])
            stack += [int(t) for t in op["inputs"] if int(t) >= 0 and int(t) not in boundary]
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    outside = [op["op_name"] for op in originals if op["index"] not in taken]
    return {"backend": "XNNPACK", "delegated": [op["op_name"] for op in originals if op["index"] in taken],
            "not_delegated": [op for op in outside if op not in SHAPE_OPS], "shape_ops": [op for op in outside if op in SHAPE_OPS]}


class Program:
    """One static-batch .tflite file: set the input, invoke, read the output."""

    def __init__(self, data: bytes, threads: int, name: str):
        self.it = interpreter(data, threads, name)
        inputs, outputs = self.it.get_input_details(), self.it.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ToolkitError(f"{name}: {len(inputs)} inputs and {len(outputs)} outputs; an mnisttk model has 1 and 1")
        self.inp, self.out = inputs[0], outputs[0]
        shape = [int(d) for d in self.inp["shape"]]
        out_shape = [int(d) for d in self.out["shape"]]
        if len(out_shape) != 2 or not 2 <= out_shape[1] <= MAX_CLASSES:
            raise ToolkitError(f"{name}: output {out_shape}, expected [batch, classes] (2 to {MAX_CLASSES} classes)")
        self.chw = declared_spec(shape, name)
        self.batch = shape[0]
        self.dtype = np.dtype(self.inp["dtype"])
        # bound once: this runs per image in the latency loop
        self._set, self._invoke, self._get = self.it.set_tensor, self.it.invoke, self.it.get_tensor
        self._in, self._out = self.inp["index"], self.out["index"]
        out_dtype = np.dtype(self.out["dtype"])
        self._lut = None  # an int8/uint8 output: dequantized through a 256-entry table (one numpy call)
        if out_dtype != np.float32:
            scale, zero = self.out["quantization"]
            codes = np.arange(256, dtype=np.uint8).view(out_dtype).astype(np.float32)
            self._lut = (codes - np.float32(zero)) * np.float32(scale)
            # the timed call dequantizes straight from the interpreter's output tensor (a view, no copy)
            # into one buffer made here: no allocation and no copy per call
            self._out_view = self.it.tensor(self._out)
            self._buf = np.empty([int(d) for d in self.out["shape"]], np.float32)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float [0, 1] images in the model's input type (int8 models take int8: scale, zero point)."""
        if self.dtype == np.float32:
            return np.ascontiguousarray(x, np.float32)
        scale, zero = self.inp["quantization"]
        info = np.iinfo(self.dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self.dtype)

    def run(self, xq: np.ndarray) -> np.ndarray:
        """Logits of one prepared batch, in an array of their own."""
        self._set(self._in, xq)
        self._invoke()
        y = self._get(self._out)
        return y if self._lut is None else self._lut.take(y.view(np.uint8))  # take: 0.3 µs less than []

    def run_timed(self, xq: np.ndarray) -> np.ndarray:
        """As `run`, but an int8 output is dequantized into the program's own buffer, which the next
        call overwrites: the timed loops' call (they keep no result)."""
        self._set(self._in, xq)
        self._invoke()
        if self._lut is None:
            return self._get(self._out)
        return self._lut.take(self._out_view().view(np.uint8), out=self._buf)


class _Batch:
    """A prepared batch: the program of its size (None: chunks of the bulk one) and its input."""

    def __init__(self, program, data):
        self.program, self.data = program, data

    def __len__(self):
        return len(self.data)


class LiteRTCandidate(Candidate):
    runtime = "LiteRT XNNPACK"

    def __init__(self, files: dict, precision: str, threads: int, name: str, file: str):
        """files: batch size -> (path, expected SHA-256); the batch-1 file is the artifact."""
        self.name, self.precision, self.file = name, precision, file
        self.programs = {}
        for batch, (path, sha) in sorted(files.items()):
            data, loaded_sha256 = read_model_bytes(path, sha, "tflite")
            program = Program(data, threads, path.name)
            if program.batch != batch:
                raise ToolkitError(f"{path.name}: a batch-{program.batch} LiteRT model where a batch-{batch} one was expected")
            self.programs[batch] = program
            if batch == 1:
                self.loaded_sha256 = loaded_sha256
        if 1 not in self.programs:
            raise ManifestError(f"{file}: no batch-1 LiteRT file")
        self.bulk = self.programs[max(self.programs)]
        self.fixed_batch = self.bulk.batch  # logits() runs the largest program, the last chunk padded
        self.consistency_batches = tuple(sorted(self.programs))

    def prepare(self, images_u8):
        return to_float_input(images_u8)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        return self.bulk.run(self.bulk.quantize(x))

    def _through(self, program: Program, x: np.ndarray) -> np.ndarray:
        """Float images through one static-batch program (the template's batching, at its batch)."""
        return batched_logits(lambda chunk: program.run(program.quantize(chunk)), x, len(x), batch=program.batch,
                              fixed_batch=program.batch, name=self.file or self.name,
                              num_classes=self.num_classes)

    def bench_input(self, images_u8):
        x = to_float_input(images_u8)
        program = self.programs.get(len(x))
        return _Batch(program, program.quantize(x) if program else x)

    def run(self, x):
        return x.program.run_timed(x.data) if x.program else self._through(self.bulk, x.data)

    def placement(self) -> Placement:
        found = delegation(self.programs[1].it)
        return delegate_placement("XNNPACK", f"{len(found['delegated'])} ops delegated to XNNPACK", found,
                                  ("delegated", "shape_ops"))

    def declared_input(self) -> tuple[int, int, int] | None:
        return self.programs[1].chw

    def declared_classes(self):
        shape = [int(v) for v in self.programs[1].out["shape"]]
        return shape[1] if len(shape) == 2 and 2 <= shape[1] <= MAX_CLASSES else None

    def input_dtype(self) -> str:
        return self.programs[1].dtype.name  # an int8 file may take int8 (the template quantizes for it)

    def output_limits(self):
        lut = self.programs[1]._lut  # an int8 output's 256 dequantized values
        if lut is None:
            return None
        scale, _ = self.programs[1].out["quantization"]
        return float(lut.min()), float(lut.max()), float(scale)

    def consistency(self, images_u8, preds):
        x = to_float_input(images_u8)
        return all(np.array_equal(self._through(p, x).argmax(1), preds) for p in self.programs.values())


def candidate(folder: Path, artifact: dict, threads: int, provider: str, name: str, *,
              arithmetic: Arithmetic = Arithmetic.EXACT) -> LiteRTCandidate:
    # The artifact is always the file the manifest names, at batch 1; a batch file only adds a larger
    # batch (the manifest's validation refuses one that claims batch 1 or a batch twice).
    files = {1: (confined_path(folder, artifact["file"]), artifact["sha256"])}
    for variant in artifact.get("batch_files", []):
        if variant["batch"] in files:
            raise ManifestError(f"{variant['file']}: a batch file for batch {variant['batch']}, which "
                                f"{artifact['file']} (or another batch file) already is; refused")
        files[variant["batch"]] = (confined_path(folder, variant["file"]), variant["sha256"])
    return LiteRTCandidate(files, artifact["precision"], threads, name, artifact["file"])
