"""The gates, once: `evaluate(measurement, gates)` returns the typed reasons a measured artifact
fails, and verify's rows, export's fp32 parity check and `export --search` all call it. A reason is
data (which gate, the value, the limit); its words are made only where a report shows it.

Every comparison is written `not (value <= limit)` (or `>=`), so a NaN or a missing value fails
rather than passes. Edge side: standard library only."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from toolkit.config import Gates


class Gate(str, Enum):
    NOT_MEASURED = "not_measured"  # no accuracy: the row never produced logits
    FP32_FLIPS = "fp32_flips"  # an fp32 artifact must predict exactly what the reference does
    FP32_LOGITS = "fp32_logits"  # ... with logits within gates.fp32_max_abs_logit_diff
    INT8_DROP = "int8_drop"  # an int8 artifact loses at most gates.int8_max_drop_points of accuracy
    INT8_AGREEMENT = "int8_agreement"  # ... and agrees with the reference on gates.int8_min_agreement_pct %
    BATCH_CONSISTENCY = "batch_consistency"  # the same predictions at every batch size compared
    NO_INT8_KERNELS = "no_int8_kernels"  # an int8 model that ONNX Runtime ran in float
    NOT_DELEGATED = "not_delegated"  # an int8 layer left outside XNNPACK's delegate
    CPU_COMPUTE = "cpu_compute"  # a CUDA row whose compute nodes ran on the CPU
    LATENCY = "latency"  # batch-1 p50 over the reference row's, past gates.max_latency_ratio
    SATURATION = "saturation"  # an int8 output whose top logit sits at its int8 limit too often
    OOD_AGREEMENT = "ood_agreement"  # int8 accepts/rejects ("not a digit") otherwise than the reference


@dataclass(frozen=True)
class Reason:
    gate: Gate
    value: Any = None
    limit: Any = None

    def text(self, rule: str = "not-a-digit") -> str:
        """The reason in words; `rule`: the accept/reject rule's name in the data set's language
        ("not-one-of-the-3-classes" where the classes are not the ten digits)."""
        v, lim = self.value, self.limit
        return {
            Gate.NOT_MEASURED: lambda: "not measured",
            Gate.FP32_FLIPS: lambda: f"{_n(v, 'd')} predictions differ from the reference",
            Gate.FP32_LOGITS: lambda: f"max |Δlogit| {_n(v, '.2e')} > {lim:g}",
            Gate.INT8_DROP: lambda: f"accuracy drop {_n(v, '.2f')} points > {lim:.2f}",
            Gate.INT8_AGREEMENT: lambda: f"agreement {_n(v, '.2f')}% < {lim:g}%",
            Gate.BATCH_CONSISTENCY: lambda: "predictions change with the batch size",
            Gate.NO_INT8_KERNELS: lambda: "no int8 kernel ran (the graph optimizer or the runtime turned the int8 "
                                          "model back into float)",
            Gate.NOT_DELEGATED: lambda: f"not delegated to XNNPACK: {', '.join(v)} ran on the runtime's own kernels",
            Gate.CPU_COMPUTE: lambda: f"compute nodes ran on the CPU: {', '.join(v)}",
            Gate.LATENCY: lambda: f"latency ratio {_n(v, '.2f')} > {lim:g}",
            Gate.OOD_AGREEMENT: lambda: f"{rule} decisions agree with the reference on {_n(v, '.2f')}% < {lim:g}%",
            Gate.SATURATION: lambda: f"{_n(v, '.2f')}% of images have their top logit clipped at the int8 output's "
                                     f"limit > {lim:g}% (the scores are cut off: recalibrate over the whole range)",
        }[self.gate]()


def _n(v, fmt: str) -> str:
    return "not measured" if v is None else format(v, fmt)


@dataclass
class Measurement:
    """What the gates look at for one artifact on one runtime. None: not measured (fails where a gate
    needs it) or, for the placement fields, not a question for this runtime."""

    # fp32 | int8 | a reduced precision a runtime chose for an fp32 file (bf16, f16): judged as int8 is
    # (accuracy drop, agreement, not-a-digit agreement), without the int8-only gates
    precision: str
    flipped: int | None = None  # test images whose top-1 differs from the reference
    max_abs_logit_diff: float | None = None
    accuracy_drop_points: float | None = None  # reference accuracy minus this one, in points
    agreement_pct: float | None = None  # top-1 agreement with the reference, in %
    batch_consistent: bool | None = None  # None: not checked
    int8_kernels: list | None = None  # ONNX Runtime CPU rows: the int8 kernels that ran
    not_delegated: list = field(default_factory=list)  # XNNPACK rows: operators outside the delegate
    cpu_compute_ops: list | None = None  # CUDA rows: compute operators that ran on the CPU
    latency_ratio: float | None = None  # batch-1 p50 over the reference row's
    clipped_top_pct: float | None = None  # int8 rows with a quantized output: % of images whose top logit is clipped
    ood_agreement_pct: float | None = None  # accept/reject agreement with the reference (lower of test and non-digits)
    measured: bool = True


def _within(value, limit) -> bool:
    """value <= limit, so that NaN (or a missing value) never passes."""
    return value is not None and bool(value <= limit)


def _at_least(value, limit) -> bool:
    return value is not None and bool(value >= limit)


def evaluate(m: Measurement, gates: Gates) -> list[Reason]:
    """The reasons `m` fails `gates` (empty: it passes)."""
    if not m.measured:
        return [Reason(Gate.NOT_MEASURED)]
    reasons = []
    if m.precision == "fp32":
        if not _within(m.flipped, 0):
            reasons.append(Reason(Gate.FP32_FLIPS, m.flipped, 0))
        if not _within(m.max_abs_logit_diff, gates.fp32_max_abs_logit_diff):
            reasons.append(Reason(Gate.FP32_LOGITS, m.max_abs_logit_diff, gates.fp32_max_abs_logit_diff))
    else:
        if not _within(m.accuracy_drop_points, gates.int8_max_drop_points):
            reasons.append(Reason(Gate.INT8_DROP, m.accuracy_drop_points, gates.int8_max_drop_points))
        if not _at_least(m.agreement_pct, gates.int8_min_agreement_pct):
            reasons.append(Reason(Gate.INT8_AGREEMENT, m.agreement_pct, gates.int8_min_agreement_pct))
        if m.ood_agreement_pct is not None and not _at_least(m.ood_agreement_pct, gates.int8_min_ood_agreement_pct):
            reasons.append(Reason(Gate.OOD_AGREEMENT, m.ood_agreement_pct, gates.int8_min_ood_agreement_pct))
    if m.precision == "int8":  # what only a quantized model can get wrong
        if m.int8_kernels is not None and not m.int8_kernels:
            reasons.append(Reason(Gate.NO_INT8_KERNELS))
        if m.not_delegated:
            reasons.append(Reason(Gate.NOT_DELEGATED, list(m.not_delegated)))
        if m.clipped_top_pct is not None and not _within(m.clipped_top_pct, gates.int8_max_clipped_top_pct):
            reasons.append(Reason(Gate.SATURATION, m.clipped_top_pct, gates.int8_max_clipped_top_pct))
    if m.batch_consistent is False:
        reasons.append(Reason(Gate.BATCH_CONSISTENCY))
    if m.cpu_compute_ops:
        reasons.append(Reason(Gate.CPU_COMPUTE, list(m.cpu_compute_ops)))
    if gates.max_latency_ratio is not None and not _within(m.latency_ratio, gates.max_latency_ratio):
        reasons.append(Reason(Gate.LATENCY, m.latency_ratio, gates.max_latency_ratio))
    return reasons


REDUCED_PRECISIONS = ("bf16", "f16")  # what a runtime may choose to compute an fp32 file in


def judged_precision(precision: str, arithmetic: str | None = None, ran_precision: str | None = None) -> str:
    """The precision a row is judged at: its artifact's, except for an fp32 file that a row ran at the
    runtime's default (arithmetic "default") and the runtime computed in less (bf16, f16): that
    precision, judged by the reduced-precision gates. An exact row is always judged as fp32."""
    if precision == "fp32" and arithmetic == "default" and ran_precision not in (None, "f32", "fp32"):
        return str(ran_precision)
    return precision


def latency_ratio(p50_us: float | None, reference_p50_us: float | None) -> float | None:
    """A row's batch-1 p50 over the reference row's (above 1: slower than the reference)."""
    if not p50_us or not reference_p50_us:
        return None
    return p50_us / reference_p50_us


def saturation(logits, limits) -> dict | None:
    """How much of an int8 output sits at its representable limits. `limits`: (lowest, highest, step)
    of the dequantized output, or None (a float output: nothing to measure). A value within half a
    step of a limit is at it; an image's top logit at the upper limit is clipped (its true score was
    at least that, perhaps far more)."""
    import numpy as np

    if limits is None:
        return None
    lo, hi, step = (float(v) for v in limits)
    x = np.asarray(logits, dtype=np.float64)
    at_lo, at_hi = x <= lo + step / 2, x >= hi - step / 2
    top_clipped = at_hi[np.arange(len(x)), x.argmax(1)]
    return {"output_range": [lo, hi], "step": step, "values_at_limits_pct": float((at_lo | at_hi).mean() * 100),
            "clipped_top_pct": float(top_clipped.mean() * 100), "clipped_top_images": int(top_clipped.sum())}


def score_fidelity(logits, reference) -> dict:
    """How far the reference's top-class probability moved (softmax of each): max and 99th percentile
    of |Δp| over the images, so a user sees whether the confidences can be trusted."""
    import numpy as np

    from toolkit.contract import softmax

    top = np.asarray(reference).argmax(1)
    rows = np.arange(len(top))
    d = np.abs(softmax(logits)[rows, top] - softmax(reference)[rows, top])
    return {"top_prob_abs_diff_max": float(d.max()), "top_prob_abs_diff_p99": float(np.percentile(d, 99))}
