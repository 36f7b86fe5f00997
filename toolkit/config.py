"""The settings of train, quantize, export and verify: frozen dataclasses with commented defaults.
The CLI takes its option defaults from here (one source, one unit per quantity), and the config
that produced an artifact is saved beside it. Torch-free, so the CLI can read it at import."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolkit.errors import ExportError, ToolkitError
from toolkit.isolate import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S
from toolkit.targets import DEFAULT_FORMATS, FORMATS, Calibration  # noqa: F401  (the targets are defined in targets.py)

# max |Δlogit| allowed between an fp32 artifact and PyTorch eager: float32 reorderings give ~1e-5
# on these logits; 10× headroom. Export and verify share it.
FP32_MAX_ABS_LOGIT_DIFF = 1e-4
ARCH_NAMES = ("cnn", "mlp")  # the built-ins (toolkit.model.ARCHS); --arch also takes FILE.py:NAME (toolkit.arch)


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "cnn"  # a built-in, FILE.py:NAME or package.module:NAME (toolkit.arch)
    arch_args: str = ""  # the model's keyword arguments, a JSON object
    epochs: int = 10  # reaches ~99% test accuracy on the CNN
    batch_size: int = 60  # 1,000 steps per epoch of 60,000 images
    lr: float = 1e-3  # Adam's default
    seed: int = 0  # weights init and shuffling; same seed and threads on the CPU -> identical weights
    mean: tuple | None = None  # a per-channel normalisation put inside the model (toolkit.model.Normalized)
    std: tuple | None = None

    def __post_init__(self):
        from toolkit.arch import parse

        parse(self.arch, self.arch_args)  # a CheckpointError (a ToolkitError) with its reason
        if self.epochs < 1 or self.batch_size < 1:
            raise ToolkitError("epochs and batch size must be at least 1")
        if not (self.lr > 0 and self.lr != float("inf")):
            raise ToolkitError("learning rate must be a positive, finite number")
        if (self.mean is None) != (self.std is None):
            raise ToolkitError("--mean and --std go together: give both, one value per channel (or one for all)")


METHODS = tuple(m.value for m in Calibration)  # --calibration-method's choices


INT8_ISAS = ("portable", "vnni")  # QuantConfig.int8_isa


@dataclass(frozen=True)
class QuantConfig:
    calibration_size: int = 1000  # training images; accuracy is flat from ~500 up (see README)
    method: str = Calibration.MINMAX.value  # a Calibration value (toolkit.targets)
    per_channel: bool = True  # per-output-channel weight scales: cheaper in accuracy, same speed
    quant_format: str = "qdq"  # qdq (portable, ORT fuses it to int8 kernels) | qoperator
    activation_type: str = "uint8"  # uint8 activations: U8S8 kernels, fastest on x86 (VNNI and AVX2)
    weight_type: str = "int8"  # int8 weights (symmetric)
    # Which CPUs the int8 files must compute exactly on. portable (the default): every CPU kind —
    # x86 with AVX2 only (whose u8×s8 kernel, vpmaddubsw, sums two products into int16 and saturates
    # past 32,767), AVX-512 VNNI, AMX, aarch64 — so ONNX Runtime and TorchScript get 7-bit weights
    # (two products ≤ 2·64·255 = 32,640) and NNCF narrows every layer's weights (overflow_fix=enable).
    # vnni: full-range weights, exact only on CPUs with dot-product instructions (VNNI, AMX, aarch64
    # sdot); the export machine no longer decides, the user does (toolkit.int8cpu).
    int8_isa: str = "portable"
    reduce_range: bool | None = None  # None: from int8_isa; True/False: the user's explicit choice
    uint8_input: bool = True  # the ONNX int8 model takes raw uint8 pixels: /255 folded into its input scale
    # The 1-channel first conv is ORT's slow int8 case (5× the fp32 conv). Left in fp32 (with its
    # ReLU and max-pool; 19% of the multiply-adds) and fenced (see quantize.fence_first_block), the
    # int8 model is about level with fp32, not faster: measured 1.08–1.10× fp32's batch-1 p50 and
    # 1.09× its batch-256 throughput (benchmarks/results). im2col: 9 shifted slices + a 1×1 int8
    # conv, bit-identical to plain int8 and 2.5× faster than it, but still slower than fp32.
    first_conv: str = "fp32"  # fp32 (left unquantized) | im2col | int8 (as quantized)
    seed: int = 0  # which training images calibrate
    # Later layers (ONNX node names: conv2, fc1 …) left in fp32 with their ReLU/max-pool; what
    # `export --quantize --search` chooses per layer. Default: none.
    keep_fp32: tuple = ()
    percentile: float = 99.999  # --calibration-method percentile: the |activation| percentile kept (ORT's default)

    def __post_init__(self):
        if self.calibration_size < 1:
            raise ExportError("--calibration-size must be at least 1")
        if self.method not in METHODS:
            raise ExportError(f"unknown calibration method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.quant_format not in ("qdq", "qoperator"):
            raise ExportError("quantization format must be qdq or qoperator")
        if self.activation_type not in ("uint8", "int8") or self.weight_type not in ("uint8", "int8"):
            raise ExportError("activation and weight types must be int8 or uint8")
        if self.first_conv not in ("int8", "im2col", "fp32"):
            raise ExportError("first conv must be int8, im2col or fp32")
        if not 0 < self.percentile <= 100:
            raise ExportError("--calibration-percentile must be in (0, 100]")
        if not all(isinstance(n, str) and n for n in self.keep_fp32):
            raise ExportError("keep_fp32 holds layer names")
        if self.int8_isa not in INT8_ISAS:
            raise ExportError(f"--int8-for must be one of {', '.join(INT8_ISAS)}")
        if self.first_conv == "im2col" and self.quant_format != "qdq":
            raise ExportError("--first-conv im2col needs --format qdq (use --first-conv int8 with qoperator)")

    def resolved_reduce_range(self) -> bool:
        """7-bit weights for the u8×s8 kernels: what the user said, else what int8_isa needs; never what
        the export machine happens to have."""
        if self.reduce_range is not None:
            return self.reduce_range
        return self.int8_isa == "portable"

    def to_dict(self) -> dict:
        return {**asdict(self), "reduce_range": self.resolved_reduce_range(), "keep_fp32": list(self.keep_fp32)}


@dataclass(frozen=True)
class Gates:
    fp32_max_abs_logit_diff: float = FP32_MAX_ABS_LOGIT_DIFF  # shared with export
    int8_max_drop_points: float = 0.3  # accuracy points (0.3 = 30 of 10,000 images)
    int8_min_agreement_pct: float = 99.5  # top-1 agreement in % (at most 50 of 10,000 may change)
    max_latency_ratio: float | None = None  # batch-1 p50 over the reference row's, when set
    # int8 rows whose output is quantized: at most this % of test images may have their top logit at
    # the output's int8 limit (a clipped score: the argmax may survive, the confidence does not).
    # In the spirit of the agreement gate (at most 0.5% may change); 1% = 100 of 10,000 images.
    int8_max_clipped_top_pct: float = 1.0
    # int8 rows: their "not a digit" decisions (predict's rule) agree with the float reference's on at
    # least this % of the test set and of the synthetic non-digits: in the spirit of the agreement gate
    int8_min_ood_agreement_pct: float = 99.0


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path = Path("exported/cnn.pt")
    out: Path = Path("exported")
    quantize: bool = False
    quant: QuantConfig = QuantConfig()
    allow_other_test_set: bool = False  # export against a test set other than the checkpoint's
    formats: tuple = DEFAULT_FORMATS  # --targets: which formats to write (onnx always)
    search: bool = False  # --search: measure per-layer precision choices, keep the fastest that passes
    # when the default int8 ONNX model fails the gates, keep its costliest layers in fp32 until they hold
    # (toolkit.search.fallback); off: write the default and let verify fail it
    int8_fallback: bool = True
    gates: Gates = Gates()  # verify's gates: fp32 parity at export, and what --search's candidates must pass
    # the share of calibration digits the not-a-digit rule accepts (toolkit.ood): lower rejects more
    # non-digits and more real digits (docs/predict.md measures the trade-off)
    not_a_digit_keep: float = 0.99
    arch: str | None = None  # --arch: the model's source named again (a changed model file is refused otherwise)
    arch_args: str = ""
    # a target whose converter cannot take the model fails the export (True) or is listed as not exportable
    # (False); None: True for the built-in models (every target is tested on them: a failure is a fault of
    # this install or machine), False for the user's own (whose operators a converter may lack)
    require_all: bool | None = None
    preprocessing: str | None = None  # predict's: digit | plain | resize; None: by the dataset (toolkit.predict)
    cluster: str | None = None  # --search --cluster: score and time the candidates on a Ray node (toolkit.cluster)
    nodes: str | None = None  # which nodes (one kind): toolkit.cluster.select

    def __post_init__(self):
        if not 0.5 <= self.not_a_digit_keep < 1:
            raise ExportError(f"--not-a-digit-keep must be at least 0.5 and below 1, not {self.not_a_digit_keep}")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ExportError(f"unknown target {unknown[0]!r}; choose from {', '.join(FORMATS)} or all")
        if self.quantize:
            from toolkit.targets import BY_NAME

            cannot = [f for f in self.formats if self.quant.method not in BY_NAME[f].calibration_methods]
            if cannot:
                raise ExportError(f"--calibration-method {self.quant.method} is ONNX Runtime's own; {', '.join(cannot)} "
                                  "int8 calibrate by min/max over the calibration set only (one method must mean one "
                                  f"thing on every target): leave {', '.join(cannot)} out of --targets, or use minmax")
        if self.search and not self.quantize:
            raise ExportError("--search chooses the int8 model's per-layer precision: it needs --quantize")
        from toolkit.targets import SOURCE

        if SOURCE not in self.formats:
            object.__setattr__(self, "formats", (SOURCE, *self.formats))


@dataclass(frozen=True)
class VerifyConfig:
    folder: Path = Path("exported")
    runtimes: tuple = ("torch", "cpu", "cuda")  # which rows to try; cuda rows skip (with a reason) if absent
    skip_runtimes: tuple = ()  # runtime ids (toolkit.runtimes.RUNTIMES) whose rows are left out, e.g. "openvino"
    require_cuda: bool = False
    threads: int = 1  # CPU threads for every runtime: one core, the edge case, and stable timings
    throughput_batch: int = 256
    latency_iters: int = 500
    # timing rounds: every row timed once per round, rows interleaved; figures are medians over rounds
    # with their spread (toolkit.timing). 3 is the fewest with a median and a spread.
    rounds: int = 3
    gates: Gates = field(default_factory=Gates)
    # "avx2": the rows of runtimes whose int8 kernels honour an instruction-set cap (oneDNN's
    # ONEDNN_MAX_CPU_ISA: OpenVINO) run as on an AVX2-only CPU, so a VNNI or AMX machine checks the
    # arithmetic of the most common cloud CPU too; the others (MLAS, XNNPACK) say they cannot be capped.
    isa_cap: str | None = None
    expect: tuple = ()  # targets that must be in the manifest (e.g. onnx-int8), beyond what it lists
    # Each row runs in a child process (toolkit.isolate): a hostile model that hangs, allocates without
    # bound or aborts becomes that row's FAIL. A row takes ~1-3 s here; the limits are far above that.
    row_timeout_s: float = DEFAULT_TIMEOUT_S
    row_memory_mb: int = DEFAULT_MEMORY_MB  # above the child's own imports (not applied to CUDA rows)
