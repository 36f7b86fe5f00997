"""Every deployment target mnisttk writes and checks, one `Target` record each: the one place a
target is defined. The CLI's `--targets` and `--expect` choices, the manifest's known formats and
targets, the report's row labels, the exporter registry, the byte-format check and the rows verify
runs are all derived from `TARGETS` (and the runtimes that run each target from
`toolkit.runtimes.RUNTIMES`, which names targets from here). Adding a target is one exporter file, one
runtime file (or a line in an existing runtime's record) and one line here. Standard library only:
the edge side reads it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

PRECISIONS = ("fp32", "int8")


class Calibration(str, Enum):
    """`--calibration-method`: how an int8 model's activation ranges come from the calibration images."""

    MINMAX = "minmax"  # min/max over the calibration set: every quantizer has it
    ENTROPY = "entropy"  # ONNX Runtime's KL-divergence calibrator
    PERCENTILE = "percentile"  # ONNX Runtime's: the |activation| percentile kept (--calibration-percentile)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Target:
    name: str  # the format as `--targets`, the manifest and the row ids name it (e.g. "tflite")
    label: str  # the report's row name before the precision (e.g. "LiteRT int8")
    kind: str  # what its bytes must be (toolkit.formats: onnx, ort, tflite, pte, zip)
    exporter: tuple  # (module in toolkit.exporters, function): `(Sources) -> Written` (toolkit.exporters)
    # the top-level names an export of it can write ({arch}, {precision} filled in): what a new export
    # that leaves the target out removes from the folder
    names: tuple
    needs: tuple = ()  # modules the exporter imports (an optional extra)
    extra: str | None = None  # the pip extra that installs them
    subpath: bool = False  # its files sit in a folder inside the export (a model repository)
    default: bool = False  # written when `--targets` is not given (TorchScript and ONNX)
    # made from the PyTorch model first, fp32 and then int8, each checked before the next step (the
    # other targets are made from these or after them)
    primary: bool = False
    # --calibration-method values its int8 can honour with the same meaning as ONNX Runtime's: min/max
    # over the calibration set everywhere; entropy and percentile exist only in ONNX Runtime's quantizer
    calibration_methods: tuple = (Calibration.MINMAX,)
    # its int8 file takes raw uint8 pixels under --uint8-input (the ONNX model's folded input, and the
    # files made from it); the others take what their own exporter records
    uint8_input: bool = False
    input_name: str = "image"  # the model's input, as its manifest entry names it
    onnx_opset: bool = False  # an ONNX graph (or ONNX Runtime's own format of one): the manifest records its opset
    source: bool = False  # every export writes it; the other targets and verify's reference build on it
    # its support files, by role (verify fails the artifact when one changed): "batch_files" (LiteRT's
    # batch variants), "weights" (an IR's .bin), "model_config" (a Triton config.pbtxt beside the model),
    # "required_operators" (an .ort model's reduced-build config)
    support: tuple = ()
    # how its int8 file was calibrated, where export itself quantizes it (None: its exporter says)
    calibration_by: str | None = None
    # the int8 kernel family its files run on (toolkit.int8cpu): mlas and onednn pair u8×s8 products in
    # a saturating int16 on AVX2 (the bound is read from the file's weights), fbgemm too (7-bit
    # activations bound it), xnnpack never does
    int8_kernels: str = "mlas"

    def __post_init__(self):
        if len(self.exporter) != 2:
            raise ValueError(f"target {self.name}: exporter is (module, function)")
        if self.needs and not self.extra:
            raise ValueError(f"target {self.name}: modules it needs must name the extra that installs them")


ORT_METHODS = tuple(Calibration)  # ONNX Runtime's calibrators (toolkit.exporters.quantize)
TARGETS = (
    Target("torchscript", "TorchScript", "zip", ("torchscript", "export_torchscript"), ("{arch}_{precision}.torchscript.pt",),
           default=True, primary=True, input_name="input", calibration_by="torch.ao", int8_kernels="fbgemm"),
    Target("onnx", "ONNX", "onnx", ("onnx", "export_onnx"), ("{arch}_{precision}.onnx",), default=True, primary=True,
           calibration_methods=ORT_METHODS, uint8_input=True, onnx_opset=True, source=True,
           calibration_by="onnxruntime"),  # always: the source of the others
    Target("ort", "ORT format", "ort", ("ort", "export_ort"), ("{arch}_{precision}.ort", "required_operators.config"),
           calibration_methods=ORT_METHODS, uint8_input=True, onnx_opset=True, support=("required_operators",),
           calibration_by="onnxruntime"),  # ORT Mobile's format
    Target("tflite", "LiteRT", "tflite", ("tflite", "export_tflite"),
           ("{arch}_{precision}.tflite", "{arch}_{precision}.b256.tflite"),
           needs=("litert_torch", "ai_edge_quantizer", "ai_edge_litert"), extra="tflite", support=("batch_files",),
           int8_kernels="xnnpack"),
    Target("executorch", "ExecuTorch", "pte", ("executorch", "export_executorch"), ("{arch}_{precision}.pte",),
           needs=("executorch",), extra="executorch", int8_kernels="xnnpack"),
    Target("triton", "Triton", "onnx", ("triton", "export_triton"), ("triton",), subpath=True,
           calibration_methods=ORT_METHODS, uint8_input=True, onnx_opset=True, support=("model_config",),
           calibration_by="onnxruntime"),  # the int8 model.onnx, in a model repository
    # OpenVINO's own format, its int8 from NNCF (not from ONNX Runtime's QDQ model)
    Target("openvino", "OpenVINO IR", "ir", ("openvino_ir", "export_openvino"),
           ("{arch}_{precision}.xml", "{arch}_{precision}.bin"), needs=("openvino", "nncf"), extra="openvino-ir",
           support=("weights",), int8_kernels="onednn"),
)
BY_NAME = {t.name: t for t in TARGETS}
FORMATS = tuple(t.name for t in TARGETS)
DEFAULT_FORMATS = tuple(t.name for t in TARGETS if t.default)
SUBPATH_FORMATS = tuple(t.name for t in TARGETS if t.subpath)
KNOWN_TARGETS = tuple(f"{t.name}-{p}" for p in PRECISIONS for t in TARGETS)  # "<format>-<precision>"
SOURCE = next(t.name for t in TARGETS if t.source)  # the target every export writes (ONNX)


def with_support(role: str) -> tuple:
    """The formats whose artifacts have support files of this role (Target.support)."""
    return tuple(t.name for t in TARGETS if role in t.support)


def row_label(fmt: str, precision: str) -> str:
    return f"{BY_NAME[fmt].label} {precision}"


def possible_names(arch: str) -> list[str]:
    """Every top-level name an export of `arch` can write, over all targets and precisions."""
    return sorted({n.format(arch=arch, precision=p) for t in TARGETS for n in t.names for p in PRECISIONS})
