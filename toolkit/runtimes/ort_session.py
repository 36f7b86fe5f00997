"""The edge runtime: ONNX Runtime sessions and batched inference, onnxruntime and numpy only.

Never import torch here (a test proves it): an edge device has onnxruntime and numpy
and nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from toolkit.contract import EVAL_BATCH, MAX_CLASSES, NUM_CLASSES, to_float_input, to_uint8_input
from toolkit.errors import RuntimeUnavailable, ToolkitError, first_line
from toolkit.runtimes.candidate import batched_logits, declared_spec, max_threads, read_model_bytes, resolve_threads

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
ORT_FORMAT_ID = b"ORTM"  # the flatbuffer file identifier of a .ort model
INT8_OPS = {"ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeLinear", "QLinearMatMul"}
COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "QLinear", "QGemm", "MaxPool", "AveragePool", "Integer", "FusedConv",
               "FusedGemm", "FusedMatMul", "NhwcMaxPool")


def is_int8_kernel(op: str) -> bool:
    """Whether an ONNX Runtime kernel (as its profiler names it) computes in int8."""
    return op.startswith(("QLinear", "NhwcQLinear")) or op in INT8_OPS


def onnxruntime_distributions() -> list[str]:
    """Which pip distributions provide the `onnxruntime` package here (more than one is a broken install)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{dist} {version(dist)}")
    return found


def check_install() -> None:
    """A mixed install (CPU onnxruntime beside onnxruntime-gpu) shares one package folder and breaks
    in obscure ways; say so plainly."""
    dists = onnxruntime_distributions()
    if len(dists) > 1:
        raise RuntimeUnavailable(
            f"mixed ONNX Runtime install ({', '.join(dists)} write the same package): keep one, e.g. "
            "`pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu` (or `make gpu`)")


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


_DLLS_PRELOADED = False


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu needs CUDA and cuDNN; torch's CUDA wheels (nvidia-* packages) carry them.
    ORT >= 1.21 can load those, so no system CUDA install is needed."""
    global _DLLS_PRELOADED
    if _DLLS_PRELOADED or not hasattr(ort, "preload_dlls"):
        return
    _DLLS_PRELOADED = True
    # it narrates to stdout; absent libraries: the provider's own error says more, when it is asked for
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):  # noqa: BLE001
        ort.preload_dlls()


def select_provider(name: str) -> str:
    """The one place an execution provider is chosen; checks it is really there."""
    if name not in PROVIDERS:
        raise ToolkitError(f"unknown execution provider {name!r}; choose one of {', '.join(PROVIDERS)}")
    provider = PROVIDERS[name]
    if name == "cuda":
        check_install()
    if provider not in available_providers():
        hint = " (`make gpu` installs onnxruntime-gpu; a CUDA GPU is needed; `mnisttk env` shows what is here)" if name == "cuda" else ""
        raise RuntimeUnavailable(f"ONNX Runtime has no {provider} here{hint}")
    if name == "cuda":
        _preload_cuda_libraries()
    return provider


# ONNX Runtime's one CPU switch that trades fp32 arithmetic for speed: bf16 fast-math GEMMs on aarch64
# CPUs with bf16 (off by default; MLAS on x86 has none). mnisttk asks for it off in every session, so an
# fp32 file is computed in fp32 on every CPU, and records the request with each row.
PRECISION_SETTINGS = {"mlas.enable_gemm_fastmath_arm64_bfloat16": "0"}


@dataclass(frozen=True)
class SessionOptions:
    threads: int = 0  # CPU threads (see parallel); 0: all cores
    optimization: str = "all"  # basic | extended | all: graph optimizations applied at load
    profile: bool = False  # record which provider ran each node
    deterministic: bool = False  # CUDA: cuDNN's fixed default algorithm, not the per-shape fastest
    # ORT's x86 NCHWc layout: fastest for the fp32 model (1.5× its throughput), but in the int8 model it
    # only wraps the fp32 first conv in reorders: without it the int8 model gives the same logits and
    # 1.18× fp32's batch-256 throughput instead of 1.08× (benchmarks/, this machine).
    nchwc: bool = True
    # How a CPU session uses more than one thread. "batch" (default): one single-threaded session per
    # thread, each running a slice of the batch at the same time (ORT releases the GIL); batches of fewer
    # than MIN_SHARD images a thread run on one session. "intra": ONNX Runtime's own intra-op pool splits
    # every node. On 2 threads at batch 256 (benchmarks/, this machine, same rounds): fp32 1.97× its
    # 1-thread throughput batch-parallel, 1.27-2.0× intra-op; int8 1.81× against 0.55-1.3× (its uint8
    # Transposes, Quantize/DequantizeLinear and NHWC max-pools barely parallelize); and batch-1 latency
    # is the 1-thread figure, where ORT's pool made it 1.2-1.6× slower.
    parallel: str = "batch"

    def __post_init__(self):
        if not isinstance(self.threads, int) or not 0 <= self.threads <= max_threads():
            raise ToolkitError(f"threads must be 0 (all cores) to {max_threads()} (this machine's cores), not {self.threads}")
        if self.parallel not in ("intra", "batch"):
            raise ToolkitError(f"parallel must be 'intra' or 'batch', not {self.parallel!r}")

    @property
    def shards(self) -> int:
        """How many single-threaded sessions run a batch side by side (1: plain intra-op threading)."""
        if self.parallel != "batch" or self.profile:
            return 1
        return resolve_threads(self.threads)

    def to_ort(self) -> ort.SessionOptions:
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = levels[self.optimization]
        so.log_severity_level = 3  # errors only: keep ORT's warnings off the user's terminal
        for key, value in PRECISION_SETTINGS.items():  # asked for, never left to the build's default
            so.add_session_config_entry(key, value)
        if self.threads == 1:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        else:
            # ORT's pool threads otherwise spin for 20-200 ms after each run, taking a core from whatever
            # runs next in this process (another row of verify, another runtime in the benchmarks):
            # LiteRT's 2-thread throughput measured 1.0-1.3× its 1-thread figure right after a spinning
            # ORT session and 1.97× after one that stops; ORT's own 2-thread throughput is the same
            # either way (benchmarks/, this machine).
            so.add_session_config_entry("session.force_spinning_stop", "1")
        if self.profile:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="mnisttk-prof-"), "ort")
        return so


MIN_SHARD = 16  # images per session below which a batch-parallel model runs the batch on one session


def _dims(arg) -> list:
    return list(arg.shape) if isinstance(arg.shape, (list, tuple)) else []


class Model:
    """An ONNX model in an inference session on one execution provider.

    Loaded from its bytes, so an ONNX file that keeps weights in an external-data sidecar
    is refused (the sidecar would be unhashed) and the bytes run are the bytes hashed."""

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", options: SessionOptions = SessionOptions(),
                 expected_sha256: str | None = None, fmt: str | None = None):
        """fmt: "onnx" or "ort" where the caller knows which it must be (a manifest, a suffix):
        bytes of the other are refused; None accepts either."""
        self.path = Path(path)
        self.provider = provider
        ep = select_provider(provider)
        data, self.loaded_sha256 = read_model_bytes(self.path, expected_sha256, fmt)
        shards = options.shards if provider == "cpu" else 1
        if shards > 1:
            options = replace(options, threads=1)
        self.is_ort_format = data[4:8] == ORT_FORMAT_ID  # ONNX Runtime's own (flatbuffer) format
        self._data = data  # kept for output_limits (tens of KB)
        # fp32 on CUDA must stay fp32: TF32 convolutions would move logits by ~1e-3.
        cuda_opts = {"cudnn_conv_algo_search": "DEFAULT"} if options.deterministic else {}
        attempts = [[("CUDAExecutionProvider", {"use_tf32": "0", **cuda_opts}), "CPUExecutionProvider"],
                    [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]] if provider == "cuda" else [[ep]]
        error: ToolkitError | None = None
        self.session: Any = None
        for providers in attempts:
            try:
                # ORT print()s an "EP Error ... Falling back" banner to stdout and falls back to the
                # CPU on its own: keep stdout for results, and decide on fallbacks here.
                session = self._open(data, options, providers)
            except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/etc.
                msg = first_line(exc)
                if "external" in msg.lower() or "model_path must not be empty" in msg:
                    msg = "it keeps weights in an external-data file, which mnisttk refuses (unhashed)"
                error = ToolkitError(f"{self.path}: ONNX Runtime cannot load it ({msg})")
                continue
            if provider == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
                error = RuntimeUnavailable("the CUDA provider could not start here (no GPU or CUDA libraries); "
                                           "ONNX Runtime fell back to the CPU")
                continue
            self.session = session
            # what the CUDA provider was asked for (use_tf32 "0": fp32 convolutions in fp32), as it opened
            first = providers[0]
            self.cuda_options = dict(first[1]) if provider == "cuda" and isinstance(first, tuple) else None
            break
        if self.session is None:
            raise error or ToolkitError(f"{self.path}: ONNX Runtime cannot load it")
        if hasattr(self.session, "disable_fallback"):
            self.session.disable_fallback()  # a failing CUDA run raises instead of moving to the CPU
        self._check_io()
        self.providers_used = self.session.get_providers()
        # Batch-parallel: the same bytes in more single-threaded sessions, and threads to drive them.
        self._shards = [self.session] + [self._open(data, options, providers) for _ in range(shards - 1)]
        self._pool: Any = ThreadPoolExecutor(shards - 1, thread_name_prefix="mnisttk-shard") if shards > 1 else None

    def _open(self, data: bytes, options: SessionOptions, providers: list) -> ort.InferenceSession:
        so = options.to_ort()
        if self.is_ort_format:
            so.add_session_config_entry("session.load_model_format", "ORT")
        with contextlib.redirect_stdout(io.StringIO()):
            return ort.InferenceSession(data, sess_options=so, providers=providers, enable_fallback=0,
                                        disabled_optimizers=[] if options.nchwc else ["NchwcTransformer"])

    def _check_io(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ToolkitError(f"{self.path}: has {len(inputs)} inputs; an mnisttk model takes one image batch")
        inp = inputs[0]
        dims = _dims(inp)
        if inp.type not in ("tensor(float)", "tensor(uint8)") or len(dims) != 4:
            raise ToolkitError(f"{self.path}: input {inp.name!r} is {inp.type} {dims}; an mnisttk model takes "
                               "float32 or uint8 N×C×H×W")
        self._declared_input = declared_spec(dims, str(self.path))
        if not outputs or outputs[0].type != "tensor(float)" or len(_dims(outputs[0])) != 2 or (
                isinstance(_dims(outputs[0])[1], int) and not 2 <= _dims(outputs[0])[1] <= MAX_CLASSES):
            o = outputs[0] if outputs else None
            raise ToolkitError(f"{self.path}: output {o.name if o else None!r} is {o.type if o else 'missing'} "
                               f"{_dims(o) if o else ''}; an mnisttk model gives float N×C logits "
                               f"(2 to {MAX_CLASSES} classes)")
        self.input_name = inp.name
        self.input_type = inp.type  # 'tensor(float)' or 'tensor(uint8)'
        self.output_name = outputs[0].name
        self.fixed_batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None

    def output_limits(self) -> tuple | None:
        """(lowest, highest, step) of a QDQ model's quantized logits (ONNX files; an .ort file's graph is
        a flatbuffer this reader does not parse: None)."""
        if self.is_ort_format:
            return None
        from toolkit.onnx_proto import quantized_output_limits

        return quantized_output_limits(self._data)

    @property
    def takes_uint8(self) -> bool:
        return self.input_type == "tensor(uint8)"

    def declared_input(self) -> tuple[int, int, int] | None:
        return self._declared_input

    def prepare(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 N×H×W (N×H×W×C) -> this model's input (uint8 N×C×H×W, or float32 in [0, 1])."""
        return to_uint8_input(images_u8) if self.takes_uint8 else to_float_input(images_u8)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for a prepared batch. ORT failures (cuDNN, out of memory) become one-line errors, and
        a session that left its provider is an error, never a silent CPU run."""
        try:
            if self._pool is not None and len(x) >= MIN_SHARD * len(self._shards):
                out = self._run_sharded(x)
            else:
                out = self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types while running: one line
            raise ToolkitError(f"{self.path.name}: ONNX Runtime failed while running ({first_line(exc)})") from None
        if self.provider == "cuda":
            self.check_provider()
        return out

    def _run_sharded(self, x: np.ndarray) -> np.ndarray:
        """Contiguous slices of the batch, one per session, run at the same time; logits in batch order."""
        n, k = len(x), len(self._shards)
        cuts = [n * i // k for i in range(k + 1)]
        names, feed = [self.output_name], self.input_name
        others = [self._pool.submit(s.run, names, {feed: x[a:b]})
                  for s, a, b in zip(self._shards[1:], cuts[1:-1], cuts[2:], strict=False)]
        first = self.session.run(names, {feed: x[:cuts[1]]})[0]
        return np.concatenate([first] + [f.result()[0] for f in others])

    def check_provider(self) -> None:
        if self.provider == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RuntimeUnavailable(f"{self.path.name}: ONNX Runtime left the CUDA provider while running")

    def logits(self, images_u8: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
        """Logits for uint8 images, `batch` at a time (the model's own batch if it fixes one), checked
        (toolkit.runtimes.candidate.batched_logits: the one batching every runtime shares)."""
        return batched_logits(self.run, self.prepare(images_u8), len(images_u8), batch=batch,
                              fixed_batch=self.fixed_batch, name=self.path.name, num_classes=self.num_classes)

    @property
    def num_classes(self) -> int:
        """Logits per image, as the model's output declares them (MNIST's 10 where it does not say)."""
        shape = self.session.get_outputs()[0].shape
        c = shape[1] if len(shape) == 2 else None
        return c if type(c) is int and 2 <= c <= MAX_CLASSES else NUM_CLASSES

    def node_events(self) -> list[dict]:
        """ORT's per-node kernel events, in run order: {'node', 'op', 'provider', 'us'} (session must be
        profiling; this ends the profile)."""
        prof = self.session.end_profiling()
        if not prof:
            return []
        try:
            events = json.loads(Path(prof).read_text())
        finally:
            Path(prof).unlink(missing_ok=True)
            Path(prof).parent.rmdir()  # the per-session folder made in SessionOptions.to_ort
        return [{"node": ev["name"][: -len("_kernel_time")], "op": ev["args"].get("op_name", ""),
                 "provider": ev["args"]["provider"], "us": float(ev.get("dur", 0))}
                for ev in events if ev.get("cat") == "Node" and "provider" in ev.get("args", {})
                and ev.get("name", "").endswith("_kernel_time")]

    def node_placement(self) -> dict:
        """Which provider ran how many nodes, read from ORT's profile (session must be profiling)."""
        events = self.node_events()
        if not events:
            return {}
        nodes = {ev["node"]: (ev["provider"], ev["op"]) for ev in events}
        by_provider = Counter(p.replace("ExecutionProvider", "") for p, _ in nodes.values())
        ops = Counter(op for _, op in nodes.values())
        int8_ops = sorted(op for op in ops if is_int8_kernel(op))
        # Compute nodes (convolutions, matmuls, pooling) that ran on the CPU: a CUDA row's are a failure.
        # Shape-only nodes (Shape/Gather/Concat feeding Reshape) stay on the CPU by design.
        cpu_compute = sorted({op for p, op in nodes.values() if p == "CPUExecutionProvider"
                              and any(k in op for k in COMPUTE_OPS)})
        return {"providers": dict(by_provider), "ops": dict(ops), "int8_kernels": int8_ops,
                "cpu_compute_ops": cpu_compute}

