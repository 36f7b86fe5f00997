"""The OpenVINO rows: the `.onnx` files, and the OpenVINO IR target's `.xml` + `.bin`, on OpenVINO's CPU
plugin (`mnisttk[openvino]`), as Intel users deploy them. Edge side: numpy and openvino only, never torch.

OpenVINO picks the precision it computes in (`INFERENCE_PRECISION_HINT`): f32 on most CPUs, bf16 on
those with AVX-512 BF16 or AMX, f16 on those with AVX-512 FP16 / AMX-FP16 where OpenVINO chooses it.
mnisttk never leaves that choice to the machine: an EXACT candidate asks for f32
(`INFERENCE_PRECISION_HINT=f32`) and refuses to run if OpenVINO reports anything else — export's
parity check and verify's fp32 rows use it, judged by the fp32 gates — and a DEFAULT candidate asks
for nothing and records what OpenVINO chose: verify's second row for an fp32 file where this CPU's
default is not f32 (`reduced_default`), judged by the reduced-precision gates. An int8 (QDQ or NNCF)
file runs at OpenVINO's default, its quantized layers on OpenVINO's own int8 kernels: the row lists
them, and a row that ran none fails like an ONNX Runtime one.

The model is read from the bytes that were hashed, written to a private folder of their own: an
ONNX file whose tensors live in an external-data file is refused first (OpenVINO, reading bytes,
looks such a file up from the working directory and follows `../` and absolute paths)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from toolkit.contract import EVAL_BATCH, to_float_input, to_uint8_input
from toolkit.errors import ManifestError, RuntimeUnavailable, ToolkitError, first_line
from toolkit.manifest import confined_path
from toolkit.runtimes.candidate import Arithmetic, Candidate, Placement, declared_spec, read_model_bytes, resolve_threads

INSTALL_HINT = "pip install 'mnisttk[openvino]'"
CONSISTENCY_BATCHES = (1, 2, 7, 64, EVAL_BATCH)
INT8_TYPES = {"u8", "i8"}
COMPUTE_LAYERS = {"Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution"}
TYPE_NAMES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def _type_name(t) -> str:
    name = t.get_type_name() if hasattr(t, "get_type_name") else str(t)
    return TYPE_NAMES.get(name, name)


class _NoTelemetry:
    """An import hook that makes `openvino_telemetry` absent. `import openvino` (and OpenVINO's
    converter, and NNCF) would otherwise start OpenVINO's telemetry: write a client id and counters
    under ~/intel and send a usage event over the network, unless the user opted out or the process
    looks like CI. All three fall back to a stub when the package cannot be imported; mnisttk makes
    them do so (a verify writes nothing outside what it is told to, and sends nothing)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "openvino_telemetry":
            raise ModuleNotFoundError(f"No module named {name!r} (mnisttk leaves OpenVINO's telemetry out)", name=name)
        return None


@contextlib.contextmanager
def telemetry_left_out():
    """Inside: `openvino_telemetry` cannot be imported. Import openvino (and nncf) inside it."""
    hook = _NoTelemetry()
    sys.meta_path.insert(0, hook)
    try:
        yield
    finally:
        sys.meta_path.remove(hook)


def openvino_module():
    """The `openvino` module, imported with its telemetry left out (see _NoTelemetry)."""
    with telemetry_left_out():
        try:
            import openvino
        except ImportError:
            raise RuntimeUnavailable(f"openvino is not installed ({INSTALL_HINT})") from None
    return openvino


def _core():
    return openvino_module().Core()


# What an EXACT candidate asks of the CPU plugin: fp32 arithmetic (not the bf16/f16 OpenVINO would pick
# on a CPU that has it), and no dynamic quantization of activations (OpenVINO's CPU plugin may quantize
# a fully connected layer's input on the fly; 0 switches it off).
EXACT_SETTINGS = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


def precision_settings(arithmetic: Arithmetic) -> dict:
    """The CPU plugin's settings that ask for `arithmetic` (DEFAULT: none)."""
    return dict(EXACT_SETTINGS) if Arithmetic(arithmetic) is Arithmetic.EXACT else {}


def default_precision() -> str:
    """The precision OpenVINO's CPU plugin computes an fp32 model in on this CPU when nothing is asked
    (f32, bf16, f16), read from the plugin without compiling anything."""
    return _type_name(_core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def reduced_default() -> str | None:
    """This CPU's default precision for an fp32 file where it is not f32 (bf16 on AVX-512 BF16 and AMX
    CPUs), else None: verify shows such a default as a row of its own beside the exact one."""
    precision = default_precision()
    return None if precision == "f32" else precision


def _compiled(core, read, threads: int, name: str, settings: dict | None = None):
    """`read()`'s model compiled for the CPU plugin: latency hint, `threads` inference threads (0: all
    cores), and `settings` (toolkit's precision request: EXACT_SETTINGS, or none for OpenVINO's default)."""
    try:
        return core.compile_model(read(), "CPU", {"INFERENCE_NUM_THREADS": resolve_threads(threads),
                                                  "PERFORMANCE_HINT": "LATENCY", **(settings or {})})
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own types (RuntimeError and others): one line
        raise ToolkitError(f"{name}: not a model OpenVINO can compile ({reason(exc)})") from None


_LOCATION = ("Exception from ", "Check '", "FrontEnd API failed with", "Summary:")


def reason(exc: BaseException, limit: int = 160) -> str:
    """OpenVINO's message without the source locations it starts with ("Exception from src/…cpp:84:",
    "Check 'false' failed at …"): the lines that say what is wrong, joined on one line."""
    lines = [ln.strip(" -") for ln in str(exc).splitlines() if ln.strip(" -")]
    said = [ln for ln in lines if not ln.startswith(_LOCATION)]
    return ("; ".join(said) or first_line(exc, limit))[:limit]


def compile_onnx(data: bytes, threads: int, name: str, settings: dict | None = None):
    """OpenVINO's compiled model for these ONNX bytes, as read_model_bytes returned them (which has
    refused a model that keeps a tensor in another file)."""
    core = _core()
    with tempfile.TemporaryDirectory(prefix="mnisttk-ov-") as private:
        path = os.path.join(private, "model.onnx")  # read by path: OpenVINO keeps a path's lookups in its folder
        with open(path, "wb") as f:
            f.write(data)
        return _compiled(core, lambda: core.read_model(path), threads, name, settings)


def compile_ir(xml: bytes, weights: bytes, threads: int, name: str, settings: dict | None = None):
    """OpenVINO's compiled model for an IR given as bytes: its XML and its weights (both hashed by the
    caller, the XML's kind checked by toolkit.formats; nothing else is read)."""
    core = _core()
    return _compiled(core, lambda: core.read_model(xml, weights), threads, name, settings)


def int8_layers(compiled) -> list[str]:
    """The compute layers (convolutions, fully connected) that OpenVINO's CPU plugin runs in int8,
    read from its runtime graph (each layer's `runtimePrecision`)."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else ""
        runs = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
        if layer in COMPUTE_LAYERS and runs.lower() in INT8_TYPES:
            out.append(f"{layer}:{op.get_friendly_name()}")
    return out


class _Input:
    """A timed call's input: OpenVINO's tensor over the prepared images (bound once), and their count."""

    def __init__(self, tensor, n: int):
        self.tensor, self.n = tensor, n

    def __len__(self) -> int:
        return self.n


class OpenVinoCandidate(Candidate):
    runtime = "OpenVINO CPU"
    consistency_batches = CONSISTENCY_BATCHES

    def __init__(self, path: Path, precision: str, threads: int, sha256: str | None, name: str, file: str,
                 weights: tuple | None = None, *, arithmetic: Arithmetic = Arithmetic.EXACT):
        """An .onnx file, or (with `weights`: its .bin's path and SHA-256) an IR's .xml. `arithmetic`:
        EXACT asks for the file's own precision (an fp32 file: f32), DEFAULT asks for nothing."""
        self.name, self.precision, self.file = name, precision, file
        # an int8 file has no exact float arithmetic to ask for: its float parts run as a user's would
        exact = Arithmetic(arithmetic) is Arithmetic.EXACT and precision == "fp32"
        self.arithmetic = Arithmetic.EXACT if exact else Arithmetic.DEFAULT
        self.precision_settings = precision_settings(Arithmetic.EXACT if exact else Arithmetic.DEFAULT)
        settings = self.precision_settings
        if weights is None:
            data, self.loaded_sha256 = read_model_bytes(path, sha256, "onnx")
            self.compiled = compile_onnx(data, threads, file, settings)
            from toolkit.onnx_proto import quantized_output_limits

            self._limits = quantized_output_limits(data)  # a QDQ int8 file's dequantized output range
        else:
            data, self.loaded_sha256 = read_model_bytes(path, sha256, "openvino")
            bin_data, _ = read_model_bytes(weights[0], weights[1], model=False)
            self.compiled = compile_ir(data, bin_data, threads, file, settings)
            self._limits = None  # NNCF leaves the output in float
        if len(self.compiled.inputs) != 1 or len(self.compiled.outputs) != 1:
            raise ToolkitError(f"{file}: {len(self.compiled.inputs)} inputs and {len(self.compiled.outputs)} "
                               "outputs; an mnisttk model has one of each")
        self.request = self.compiled.create_infer_request()
        self._ov, self._bound = openvino_module(), None
        self.uint8 = _type_name(self.compiled.inputs[0].get_element_type()) == "u8"
        self.ran_precision = _type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if exact and self.ran_precision != "f32":  # asked for f32 and not given it: never called exact
            raise ToolkitError(f"{file}: asked OpenVINO for exact f32 arithmetic, but it computes in "
                               f"{self.ran_precision}; this fp32 file cannot be checked exactly here")

    def declared_input(self) -> tuple[int, int, int] | None:
        shape = self.compiled.inputs[0].get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 4 or any(d.is_dynamic for d in list(shape)[1:]):
            return None
        return declared_spec([-1, *(d.get_length() for d in list(shape)[1:])], self.file or self.name)

    def prepare(self, images_u8):
        return to_uint8_input(images_u8) if self.uint8 else to_float_input(images_u8)

    def _bind(self, tensor) -> None:
        # Binding an input of another shape costs OpenVINO a shape pass (~50 µs here, as much as the
        # batch-1 inference itself): a timed loop binds once and then only runs.
        if tensor is not self._bound:
            self.request.set_input_tensor(tensor)
            self._bound = tensor

    def _forward(self, x):
        return self._in_batches(x, len(x))

    def bench_input(self, images_u8):
        return _Input(self._ov.Tensor(self.prepare(images_u8)), len(images_u8))

    def run(self, x):
        self._bind(x.tensor)
        self.request.infer()
        return self.request.get_output_tensor(0).data

    def placement(self) -> Placement:
        kernels = int8_layers(self.compiled)
        layers = [k.split(":", 1)[-1] for k in kernels]
        asked = "exact f32 asked for" if self.arithmetic == Arithmetic.EXACT else "OpenVINO's default for this CPU"
        return Placement("OpenVINO CPU", f"computed in {self.ran_precision} ({asked}); "
                         + (f"int8 layers: {', '.join(layers)}" if layers else "no int8 layers"),
                         int8_kernels=tuple(kernels),
                         detail={"inference_precision": self.ran_precision, "arithmetic": self.arithmetic.value,
                                 "settings": dict(self.precision_settings)})

    def output_limits(self):
        return self._limits

    def _in_batches(self, x: np.ndarray, batch: int) -> np.ndarray:
        """Logits of `x`, `batch` at a time, through one input tensor bound once and refilled."""
        out, tensor = [], None
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            if tensor is None or tensor.shape[0] != len(chunk):  # the first chunk, and a shorter last one
                tensor = self._ov.Tensor(np.empty_like(chunk))
                self._bind(tensor)
            tensor.data[:] = chunk
            self.request.infer()
            out.append(self.request.get_output_tensor(0).data.copy())  # the request reuses its output tensor
        return np.concatenate(out)

    def consistency(self, images_u8, preds):
        x = self.prepare(images_u8)
        return all(np.array_equal(self._in_batches(x, b).argmax(1), preds) for b in CONSISTENCY_BATCHES)


def candidate(folder: Path, artifact: dict, threads: int, provider: str, name: str, *,
              arithmetic: Arithmetic = Arithmetic.EXACT) -> OpenVinoCandidate:
    weights = None
    if artifact["format"] == "openvino":  # an IR: its weights are a support file the manifest hashed
        w = artifact.get("weights")
        if not isinstance(w, dict) or not isinstance(w.get("file"), str):
            raise ManifestError(f"{artifact['file']}: an OpenVINO IR without its weights file in the manifest")
        weights = (confined_path(folder, w["file"]), w.get("sha256"))
    elif artifact["format"] != "onnx":
        raise ManifestError(f"{artifact['file']}: OpenVINO rows run .onnx files and IR, not {artifact['format']}")
    return OpenVinoCandidate(confined_path(folder, artifact["file"]), artifact["precision"], threads,
                             artifact["sha256"], name, artifact["file"], weights, arithmetic=arithmetic)
