"""`mnisttk verify`: does each deployed artifact do the same job as the float model?

One row per artifact × runtime, all on the full MNIST test set, each judged by gates.
Edge side: numpy and onnxruntime only at import; the PyTorch rows come from
`toolkit.runtimes.pytorch`, imported only when torch is installed. The runtimes and the formats
each runs come from the registry in `toolkit.runtimes`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from toolkit import isolate, ood, timing
from toolkit.compare import compare_pair
from toolkit.config import Gates, VerifyConfig  # noqa: F401  (part of this module's API)
from toolkit.errors import CheckpointAbsent, ManifestError, RuntimeUnavailable, ToolkitError, first_line
from toolkit.gates import Measurement, evaluate, judged_precision, latency_ratio, saturation, score_fidelity
from toolkit.manifest import (
    KNOWN_TARGETS,
    check_hashes,
    classes_of,
    confined_path,
    deployed_bytes,
    load_manifest,
    manifest_spec,
    ood_rule,
    target_of,
)
from toolkit.metrics import classification_metrics, paired_accuracy_diff
from toolkit.outputs import Outputs, OutputsError
from toolkit.reference import read_reference
from toolkit.runtimes import RUNTIMES, ask_reduced_default, device_missing, missing
from toolkit.runtimes import build as build_candidate
from toolkit.runtimes.candidate import Arithmetic, Placement, resolve_threads
from toolkit.runtimes.ort_session import available_providers, check_install
from toolkit.targets import row_label, with_support


@dataclass
class Row:
    name: str  # e.g. "ONNX int8"
    runtime: str  # "PyTorch eager", "TorchScript", "ORT CPU", "ORT CUDA"
    precision: str
    file: str | None
    status: str = "ok"  # ok | FAIL | skipped
    reasons: list = field(default_factory=list)
    accuracy: float | None = None
    macro_precision: float | None = None
    macro_recall: float | None = None
    agreement: float | None = None
    flipped: int | None = None
    flipped_indices: list | None = None  # test-set indices whose top-1 differs from the reference
    flipped_predictions: list | None = None  # this row's top-1 on each of them (the reference's: its logits)
    max_abs_logit_diff: float | None = None
    acc_diff: float | None = None
    acc_diff_ci95: list | None = None
    mcnemar_p: float | None = None
    latency_us: dict | None = None
    throughput: float | None = None
    size_bytes: int | None = None
    latency_ratio: float | None = None
    loaded_sha256: str | None = None  # of the bytes the runtime actually loaded
    placement: dict | None = None
    batch_consistent: bool | None = None
    consistency_batches: list | None = None  # the batch sizes compared
    consistency_images: int | None = None  # on how many test images (see consistency_sample)
    is_reference: bool = False
    device: str | None = None  # the ONNX Runtime provider ("cpu", "cuda") of an ORT row; None otherwise
    fmt: str | None = None  # the artifact's target format (toolkit.targets); None for the reference row
    runtime_id: str | None = None  # the runtime's id (toolkit.runtimes.RuntimeSpec.id; torch/npz: the reference)
    ran_precision: str | None = None  # what the runtime computed in, where it chose (OpenVINO: f32 or bf16)
    # what the row asked of the runtime (toolkit.runtimes.candidate.Arithmetic): "exact" (an fp32 file in
    # fp32, judged by the fp32 gates) or "default" (what the runtime picks on this CPU), and the runtime
    # settings that asked for it
    arithmetic: str = Arithmetic.EXACT.value
    precision_settings: dict | None = None
    # int8 rows: how much of a quantized output sits at its limits (None: a float output), and how far
    # the reference's top-class probability moved (toolkit.gates.saturation / score_fidelity)
    saturation: dict | None = None
    score_fidelity: dict | None = None
    failed_gates: list = field(default_factory=list)  # toolkit.gates.Gate values, one per failed gate
    # --golden: this row against the same artifact's saved outputs from another run (toolkit.compare)
    golden: dict | None = None
    # timing rounds (toolkit.timing): latency_us and throughput are medians over them
    latency_rounds_us: list | None = None  # batch-1 p50 of each round
    throughput_rounds: list | None = None  # images per CPU-second at the throughput batch, each round
    throughput_wall: float | None = None  # images per wall second (median over the rounds), beside it
    latency_spread_us: list | None = None  # [min, max] of latency_rounds_us
    throughput_spread: list | None = None
    # memory of the row's child process: its peak RSS, and how far it grew while the row ran
    peak_rss_mb: float | None = None
    rss_growth_mb: float | None = None
    # "not a digit": how often this row's accept/reject decisions (the export's rule, toolkit.ood) agree
    # with the float reference's, on the test set and on synthetic non-digits
    ood: dict | None = None
    # the row (its id) whose measurements and timing rounds this row shares: the same bytes (SHA-256) on
    # the same runtime with the same settings (a Triton model.onnx and the .onnx it copies) run once
    measured_with: str | None = None
    # int8 rows: the int8 arithmetic this runtime's kernels take on this CPU (toolkit.int8cpu), and
    # whether the file is exact on this CPU kind (the manifest's int8_exact_on; None: it records none)
    int8_arithmetic: str | None = None
    int8_exact_here: bool | None = None

    @property
    def id(self) -> str:
        """Stable across runs, from the target and the runtime (never the display name): e.g.
        onnx-int8@ort-cpu, tflite-int8@litert; the reference row is eager-fp32@torch (or @npz)."""
        return f"{self.fmt or 'eager'}-{self.precision}@{self.runtime_id or self.runtime.lower()}"

    def fail(self, reason: str) -> None:
        self.status = "FAIL"
        self.reasons.append(reason)


def _fill_accuracy(row: Row, labels: np.ndarray, logits: np.ndarray, ref_logits: np.ndarray) -> None:
    preds, ref_preds = logits.argmax(1), ref_logits.argmax(1)
    m = classification_metrics(labels, preds, ref_logits.shape[1])
    row.accuracy, row.macro_precision, row.macro_recall = m["accuracy"], m["macro_precision"], m["macro_recall"]
    row.agreement = float((preds == ref_preds).mean())
    flipped = np.flatnonzero(preds != ref_preds)
    row.flipped, row.flipped_indices = int(len(flipped)), flipped.tolist()
    row.flipped_predictions = preds[flipped].tolist()  # this row's answer on each, the reference's is ref_preds
    row.max_abs_logit_diff = float(np.abs(logits.astype(np.float64) - ref_logits).max())
    d = paired_accuracy_diff(labels, preds, ref_preds)
    row.acc_diff, row.acc_diff_ci95, row.mcnemar_p = d["diff"], d["ci95"], d["mcnemar_p"]


def measurement(row: Row) -> Measurement:
    """What the gates look at in a measured row (placement questions asked only of the runtimes they
    concern: int8 kernels of ONNX Runtime CPU rows, XNNPACK's delegate, CUDA's CPU fallback)."""
    placement = Placement.from_json(row.placement)
    # an fp32 file a runtime computed in less (OpenVINO's bf16 default) is judged as reduced precision
    # only in the row that asked for the default: an exact row that did not run in f32 stays at fp32's gates
    return Measurement(
        precision=judged_precision(row.precision, row.arithmetic, row.ran_precision), flipped=row.flipped,
        max_abs_logit_diff=row.max_abs_logit_diff,
        accuracy_drop_points=None if row.acc_diff is None else -row.acc_diff * 100,
        agreement_pct=None if row.agreement is None else row.agreement * 100,
        batch_consistent=row.batch_consistent,
        int8_kernels=None if placement is None or placement.int8_kernels is None else list(placement.int8_kernels),
        not_delegated=list(placement.not_delegated) if placement else [],
        cpu_compute_ops=None if placement is None or placement.cpu_compute_ops is None else list(placement.cpu_compute_ops),
        latency_ratio=row.latency_ratio, measured=row.accuracy is not None,
        clipped_top_pct=(row.saturation or {}).get("clipped_top_pct"),
        ood_agreement_pct=(row.ood or {}).get("agreement_pct"))


def judge(row: Row, gates: Gates, classes: tuple | None = None) -> None:
    """Apply the gates (toolkit.gates.evaluate) to a measured row: each failed gate is named in
    `failed_gates` and worded in `reasons` (in the language of the data set's `classes`)."""
    if row.status == "skipped" or row.is_reference or row.status == "FAIL" and row.accuracy is None:
        return
    for reason in evaluate(measurement(row), gates):
        row.failed_gates.append(reason.gate.value)
        row.fail(reason.text(ood.rule_words(classes)[0]))
    golden = row.golden or {}
    for gate, text in zip(golden.get("failed_gates", ()), golden.get("reasons", ()), strict=False):
        row.failed_gates.append(f"golden_{gate}")
        row.fail(f"against the golden outputs: {text}")
    if row.reasons:
        row.status = "FAIL"


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


@dataclass
class _Run:
    """What every step of one verify run shares: the request, the test set, the reference's logits and
    not-a-digit decisions, and what the steps fill in (timing rounds, machine load, saved outputs)."""

    config: VerifyConfig
    folder: Path
    manifest: dict
    test_images: np.ndarray
    labels: np.ndarray
    ref_logits: np.ndarray
    have_torch: bool
    bad_files: dict
    integrity: list
    golden: Outputs | None = None
    outputs: dict | None = None
    ood: dict | None = None  # rule, non_digits, their features, the reference's accept decisions
    rounds: dict = field(default_factory=dict)  # row id -> its timing rounds (toolkit.timing.one_round)
    machine_load: list = field(default_factory=list)
    phases: dict = field(default_factory=dict)  # where the wall time went, in seconds (timing.phases_s)
    child_cpu_s: float = 0.0  # CPU seconds the rows' children used (each says its own)
    # row id -> the bounded child (isolate.Worker) that measured the row and keeps its model loaded for
    # the timing rounds; all closed when the run ends
    workers: dict = field(default_factory=dict)


def run_verify(config: VerifyConfig, test_images: np.ndarray, test_labels: np.ndarray, test_sha256: str,
               log: Callable[[str], None] = lambda s: None, *, golden: Outputs | None = None,
               outputs: dict | None = None, judged: dict | None = None) -> dict:
    """Measure and judge every row: the steps below, in order. `golden`: another run's saved outputs
    (toolkit.outputs) that each row is also judged against, image by image; `outputs`: a dict this fills
    with row id -> logits (float32) of every row that produced them, for `--save-outputs`; `judged`: a
    dict this fills with `reference_predictions`, the reference's top-1 per test image that the rows were
    judged against (the HTML report's thumbnails use these, not a second read of the folder)."""
    t_start, cpu_start = time.perf_counter(), os.times()
    check_install()  # onnxruntime beside onnxruntime-gpu: say so, not an obscure failure later
    have_torch = "torch" in config.runtimes and torch_available()
    _start_children(config, have_torch)  # on another core, while this process opens the export
    run = _open_run(config, test_images, test_labels, test_sha256, golden, outputs, have_torch)
    run.phases["open"] = time.perf_counter() - t_start  # manifest, hashes, reference, not-a-digit features
    if judged is not None:
        judged["reference_predictions"] = run.ref_logits.argmax(1)
    try:
        reference = _Reference(run)  # live PyTorch eager, on this process's thread, beside the rows' children
        with _Clock(run.phases)("plan"):
            plan = _plan_rows(run)
        rows = _measure_rows(run, plan, log)
        reference_row, eager = reference.result()
        rows.insert(0, reference_row)
        _timing_rounds(run, plan, eager, reference_row, log)
    finally:
        for worker in run.workers.values():
            worker.close()
        _LOADED.clear()
    with _Clock(run.phases)("judge"):
        _judge_rows(run, rows, reference_row)
    return _result(run, rows, t_start, cpu_start)


class _Reference:
    """Step 2 and 4 on a thread of their own, started now: the reference row, live PyTorch eager from the
    export's checkpoint (importing torch, running the test set) while the rows' children measure on the
    other cores; result() waits for it."""

    def __init__(self, run: _Run):
        self._run = run
        self._value: tuple | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="mnisttk-reference", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            with _Clock(self._run.phases)("reference"):
                reference_row, eager = _reference_row(self._run)
                _measure_reference(self._run, reference_row, eager)
            self._value = (reference_row, eager)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            self._error = exc

    def result(self) -> tuple:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def _start_children(config: VerifyConfig, have_torch: bool) -> None:
    """The bounded children's forkserver, with the modules this run's rows import (torch, ExecuTorch's:
    seconds), started now on another core while this process opens the export and makes the reference's
    logits."""
    preload = [m for spec in RUNTIMES if not _skip_reason(config, have_torch, spec) for m in spec.preload]
    # toolkit.verify itself: each child unpickles measure_row/time_row from it
    isolate.prepare(tuple(dict.fromkeys((["torch"] if have_torch else []) + preload + ["toolkit.verify"])))
    threading.Thread(target=isolate.warm_up, name="mnisttk-forkserver", daemon=True).start()


_ACCOUNTING = threading.Lock()


def _child_call(run, worker: isolate.Worker, fn, *args, **kwargs):
    """worker.call, its wall time split into the child's own phases (which it returns in `phases_s`)
    and the rest: the child's start-up and the transfer of its inputs and results."""
    t0 = time.perf_counter()
    out = worker.call(fn, *args, **kwargs)
    wall = time.perf_counter() - t0
    phases = out.pop("phases_s", {}) if isinstance(out, dict) else {}
    cpu = out.pop("cpu_s", 0.0) if isinstance(out, dict) else 0.0
    with _ACCOUNTING:  # rows' children report from two threads at once (_measure_rows)
        run.child_cpu_s += cpu
        for name, seconds in phases.items():
            run.phases[name] = run.phases.get(name, 0.0) + seconds
        run.phases["child_startup"] = run.phases.get("child_startup", 0.0) + max(0.0, wall - sum(phases.values()))
    return out


def _open_run(config: VerifyConfig, test_images, test_labels, test_sha256: str, golden, outputs,
              have_torch: bool) -> _Run:
    """Step 1: the export's manifest, the hashes of its files, the reference (made on this very test
    set) and the not-a-digit rule, each checked; what was asked (--expect, the latency gate) checked
    against what the export and this machine have."""
    folder = Path(config.folder)
    manifest = load_manifest(folder)
    targets = list(manifest["targets"])
    for t in config.expect:
        if t not in KNOWN_TARGETS:
            raise ToolkitError(f"unknown target {t!r} for --expect; choose from {', '.join(KNOWN_TARGETS)}")
        skipped = {e["target"]: e["reason"] for e in manifest.get("not_exported", [])}
        if t in skipped:
            raise ManifestError(f"{folder / 'manifest.json'}: expected target {t} was not exportable: {skipped[t]}")
        if t not in targets:
            raise ManifestError(f"{folder / 'manifest.json'}: expected target {t} is not in this export "
                                f"(it has {', '.join(targets)})")
    if config.gates.max_latency_ratio is not None and not have_torch:
        raise ToolkitError("--max-latency-ratio needs the PyTorch eager reference row, which has a latency; "
                           "with --no-torch (or without torch) the gate cannot be checked")
    integrity = check_hashes(folder, manifest)
    bad_files = {r["file"]: r["status"] for r in integrity if r["status"] != "ok"}
    ref_info = manifest["reference"]
    if ref_info["file"] in bad_files:
        raise ManifestError(f"{folder / ref_info['file']}: {bad_files[ref_info['file']]} since export; re-run `mnisttk export`")
    manifest_spec(manifest).check_images(test_images, "the test set loaded")  # before any model is run
    labels = test_labels.astype(np.int64)
    ref = read_reference(confined_path(folder, ref_info["file"]), len(labels), len(classes_of(manifest)))
    if ref["test_sha256"] != test_sha256:
        raise ManifestError("the loaded MNIST test set is not the one the reference was made on (SHA-256 differs)")
    if not np.array_equal(ref["labels"], labels):
        raise ManifestError("reference labels do not match the test labels")
    if golden is not None and (golden.test_sha256 != test_sha256 or not np.array_equal(golden.labels, labels)):
        raise OutputsError(f"--golden {golden.path}: made on another test set (SHA-256 {golden.test_sha256[:12]}…) "
                           f"than the one loaded here ({test_sha256[:12]}…); refused")
    run = _Run(config, folder, manifest, test_images, labels, ref["logits"], have_torch, bad_files, integrity, golden,
               outputs)
    rule = ood_rule(manifest, folder)
    if rule is not None and ref["non_digit_logits"] is not None:
        # the reference's decisions and the images' own features: once for every row
        non_digits = ood.non_digit_images(tuple(test_images.shape[1:]))
        test_features, nd_features = ood.rule_features(rule, test_images), ood.rule_features(rule, non_digits)
        run.ood = {"rule": rule, "non_digits": non_digits, "test_features": test_features, "nd_features": nd_features,
                   "ref_accepts": (ood.decide(rule, test_images, run.ref_logits, features=test_features)["accepted"],
                                   ood.decide(rule, non_digits, ref["non_digit_logits"], features=nd_features)["accepted"])}
    return run


def _reference_row(run: _Run) -> tuple[Row, object]:
    """Step 2: the reference row, and live PyTorch eager from the export's checkpoint when torch is here."""
    reference_row = Row("PyTorch fp32", "PyTorch eager" if run.have_torch else "reference.npz", "fp32",
                        run.manifest["reference"]["file"], is_reference=True,
                        runtime_id="torch" if run.have_torch else "npz")
    eager = None
    if run.have_torch:
        from toolkit.runtimes.pytorch import eager_candidate

        try:
            eager = eager_candidate(run.manifest, run.folder, run.config.threads)
            reference_row.file = eager.file
        except CheckpointAbsent as exc:  # a layout choice, not a fault: the saved reference logits stand in
            reference_row.runtime, reference_row.runtime_id = "reference.npz", "npz"
            reference_row.reasons.append(f"{exc}: the reference is reference.npz (live PyTorch eager not run)")
        except ToolkitError as exc:
            reference_row.fail(str(exc))
    return reference_row, eager


def _plan_rows(run: _Run) -> list[tuple]:
    """Step 3: one row per artifact × runtime that runs its format (toolkit.runtimes.RUNTIMES), each
    with its runtime and artifact; rows this run cannot or was not asked to measure are marked skipped."""
    import platform

    from toolkit import int8cpu
    from toolkit.machine import cpu_flags

    plan = []
    skips = {spec.id: _skip_reason(run.config, run.have_torch, spec) for spec in RUNTIMES}
    kind = int8cpu.cpu_kind(cpu_flags(), platform.machine())  # this CPU's, read once for every int8 row
    for spec in RUNTIMES:
        skip = skips[spec.id]
        reduced = None if skip else _reduced_default(spec)
        for fmt in spec.formats:
            for a in (a for a in run.manifest["artifacts"] if a["format"] == fmt):
                row = Row(row_label(fmt, a["precision"]), spec.label, a["precision"], a["file"], device=spec.device,
                          fmt=fmt, runtime_id=spec.id)
                if a["precision"] == "int8":
                    _int8_on_this_cpu(row, spec, a, kind, run.config.isa_cap)
                if skip:
                    row.status, row.reasons = skip
                plan.append((row, spec, a))
                if reduced and a["precision"] == "fp32":  # what a user who sets nothing gets on this CPU
                    plan.append((Row(row.name, f"{spec.label} {reduced}", "fp32", a["file"], device=spec.device,
                                     fmt=fmt, runtime_id=f"{spec.id}-{reduced}", arithmetic=Arithmetic.DEFAULT.value),
                                 spec, a))
    return plan


def _int8_on_this_cpu(row: Row, spec, artifact: dict, cpu, isa_cap: str | None) -> None:
    """The int8 arithmetic `spec`'s kernels take on this CPU kind `cpu` (under the ISA cap, where they
    honour it), and whether the file is exact on this CPU kind by the manifest's record."""
    from toolkit import int8cpu

    kind = int8cpu.capped(cpu, isa_cap, spec.int8_kernels)
    row.int8_arithmetic = int8cpu.arithmetic(kind, spec.int8_kernels)
    if isa_cap and spec.int8_kernels != "onednn" and not spec.gpu:
        row.int8_arithmetic += f" (--isa-cap {isa_cap} does not reach these kernels)"
    exact_on = artifact.get("int8_exact_on")
    if isinstance(exact_on, list) and kind != int8cpu.CpuKind.OTHER:
        row.int8_exact_here = kind.value in exact_on


def _reduced_default(spec) -> str | None:
    """The precision `spec` computes an fp32 file in on this CPU by default, where not fp32 (asked of the
    runtime in a bounded child); None where it is fp32, or the question cannot be answered here."""
    try:
        return ask_reduced_default(spec)
    except ToolkitError:
        return None  # the runtime cannot start: its rows fail on their own, with the reason


def _skip_reason(config: VerifyConfig, have_torch: bool, spec) -> tuple[str, list] | None:
    """(status, reasons) of a row on runtime `spec` that this run does not measure, or None."""
    if spec.id in config.skip_runtimes:
        return "skipped", ["not asked for (--skip-runtime)"]
    if spec.needs_torch and not have_torch:
        return "skipped", ["torch not installed" if "torch" in config.runtimes and not torch_available()
                           else "not asked for (--no-torch)"]
    if reason := missing(spec):
        return "skipped", [reason]
    if spec.device and spec.device not in config.runtimes:
        return "skipped", ["not asked for (--device)"]
    if why := device_missing(spec):
        return ("FAIL" if config.require_cuda else "skipped"), [why]
    return None


def _measure_reference(run: _Run, reference_row: Row, eager) -> None:
    """Step 4: the reference row's accuracy (from reference.npz), and live eager's drift from it (its
    timing comes with the rows', in the rounds)."""
    if eager is not None:
        try:
            with eager.scope():
                live = eager.logits(run.test_images).astype(np.float64)
            run.rounds[reference_row.id] = []
            drift = float(np.abs(live - run.ref_logits).max())
            if not drift <= run.config.gates.fp32_max_abs_logit_diff:
                reference_row.fail(f"checkpoint's eager logits differ from reference.npz by {drift:.2e}")
            reference_row.size_bytes = eager.size_bytes
        except ToolkitError as exc:
            reference_row.fail(str(exc))
    _fill_accuracy(reference_row, run.labels, run.ref_logits, run.ref_logits)
    if run.outputs is not None:
        run.outputs[reference_row.id] = run.ref_logits.astype(np.float32)


def _parallel_children(run: _Run) -> int:
    """How many rows' untimed work (accuracy pass, consistency, not-a-digit) runs at once: the cores
    over the threads each uses, at most 2. Timing never overlaps anything: it has its own rounds. Rows
    run in this process (isolate.IN_PROCESS, for tests) run one at a time: a runtime's native-output
    capture swaps this process's file descriptors, which two threads must not do at once."""
    if isolate.IN_PROCESS:
        return 1
    return max(1, min(2, (os.cpu_count() or 1) // resolve_threads(run.config.threads)))


def _measure_rows(run: _Run, plan: list, log: Callable[[str], None]) -> list[Row]:
    """Step 5: every planned row that can run, measured in its own bounded child process (toolkit.isolate),
    up to _parallel_children of them at once; a changed or missing file (or support file) fails its row
    without running it."""
    from concurrent.futures import ThreadPoolExecutor

    support_faults = _support_faults(run.manifest, run.bad_files)
    jobs: list = []
    first_of: dict = {}
    for row, spec, a in plan:
        if row.status != "ok":
            continue
        if row.file in run.bad_files:
            row.fail(f"{row.file}: SHA-256 {run.bad_files[row.file]} since export: the file is not the one exported"
                     if run.bad_files[row.file] != "missing" else f"{row.file}: file missing")
            continue
        for fault in support_faults.get(row.file, ()):
            row.fail(fault)
        if row.status == "FAIL":
            continue
        # the same bytes on the same runtime with the same settings: loaded and checked (a Triton model's
        # configuration is checked as it loads), but run and timed once
        same = (spec.id, row.arithmetic, a["sha256"])
        first = first_of.setdefault(same, row)
        if first is not row:
            row.measured_with = first.id
        jobs.append((row, spec, a, first if first is not row else None))

    def child(job):
        row, spec, a, first = job
        log(f"verifying {row.name} on {row.runtime}")
        try:
            return _row_child(run, row, spec, a, load_only=first is not None), None
        except ToolkitError as exc:
            return None, exc

    measured: dict = {}  # row id -> its child's measurements, for the rows measured with it
    with ThreadPoolExecutor(_parallel_children(run), thread_name_prefix="mnisttk-row") as pool:
        for (row, spec, a, first), (m, exc) in zip(jobs, pool.map(child, jobs), strict=True):  # results in the plan's order
            if isinstance(exc, RuntimeUnavailable):
                row.reasons.append(str(exc))
                row.status = "FAIL" if run.config.require_cuda or not spec.gpu else "skipped"
            elif exc is not None:
                row.fail(first_line(exc, 300))
            elif first is not None:
                _measure_copy(run, row, a, first, measured.get(first.id), m)
            else:
                measured[row.id] = m
                try:
                    _measure_row(run, row, a, dict(m))
                except ToolkitError as err:
                    row.fail(first_line(err, 300))
    return [row for row, _, _ in plan]


def _row_child(run: _Run, row: Row, spec, a: dict, *, load_only: bool = False) -> dict:
    """The row's measurements from a bounded child of its own, which keeps the model loaded for the
    timing rounds (closed at once if the measurement fails). `load_only`: the model is loaded and
    checked, not run (a row measured with another), and the child ends."""
    config = run.config
    worker = isolate.Worker(memory_mb=None if spec.gpu else config.row_memory_mb, what=f"{row.name} on {row.runtime}")
    try:
        m = _child_call(run, worker, measure_row, RUNTIMES.index(spec), str(run.folder), a, config.threads,
                        run.test_images[:0] if load_only else run.test_images,
                        None if load_only else run.ood and run.ood["non_digits"], arithmetic=row.arithmetic,
                        keep=None if load_only else row.id, load_only=load_only, timeout_s=config.row_timeout_s,
                        isa_cap=config.isa_cap)
    except BaseException:
        worker.close()
        raise
    if load_only:
        worker.close()
        return m
    with _ACCOUNTING:
        run.workers[row.id] = worker
    return m


def _measure_copy(run: _Run, copy: Row, a: dict, first: Row, m: dict | None, loaded: dict) -> None:
    """A row with the same bytes, runtime and settings as `first`, loaded and checked in its own child
    (`loaded`: its loaded bytes' hash and placement): first's measurements `m` (None where first did not
    measure: then the copy takes first's status and reasons)."""
    if m is None or first.status != "ok":
        copy.status = first.status
        copy.reasons += [f"as {first.name} on {first.runtime} (the same bytes): {r}" for r in first.reasons]
        return
    try:
        _measure_row(run, copy, a, {**m, **loaded})
    except ToolkitError as err:
        copy.fail(first_line(err, 300))


def _measure_row(run: _Run, row: Row, a: dict, m: dict) -> None:
    """One row from its child's measurements `m`: accuracy, agreement, saturation, the golden comparison
    and the not-a-digit agreement."""
    config = run.config
    logits = m.pop("logits").astype(np.float64)  # finite: the runtime template checked them
    limits = m.pop("output_limits", None)
    if run.outputs is not None:
        run.outputs[row.id] = logits.astype(np.float32)
    _fill_accuracy(row, run.labels, logits, run.ref_logits)
    if run.golden is not None:
        row.golden = _against_golden(row, logits, run.golden, a["sha256"], run.labels, config.gates)
    if row.precision == "int8":
        row.saturation = saturation(logits, limits)
        row.score_fidelity = score_fidelity(logits, run.ref_logits)
    run.rounds[row.id] = []
    nd_logits = m.pop("non_digit_logits", None)
    if run.ood is not None and nd_logits is not None:
        o = run.ood
        row.ood = _ood_agreement(ood.decide(o["rule"], run.test_images, logits, features=o["test_features"])["accepted"],
                                 ood.decide(o["rule"], o["non_digits"], nd_logits, features=o["nd_features"])["accepted"],
                                 *o["ref_accepts"])
    for key, value in m.items():
        setattr(row, key, value)
    row.size_bytes = deployed_bytes(run.manifest, a)  # an IR: its .xml and .bin


def _judge_rows(run: _Run, rows: list[Row], reference_row: Row) -> None:
    """Step 7 (after the timing rounds): each row's timing summarized over its rounds, its latency ratio
    to the reference, and the gates applied."""
    for row in rows:
        if row.measured_with and row.status == "ok":
            run.rounds[row.id] = run.rounds.get(row.measured_with, [])
        if run.rounds.get(row.id):
            for key, value in timing.summarize(run.rounds[row.id]).items():
                setattr(row, key, value)
    ref_p50 = (reference_row.latency_us or {}).get("p50")
    for row in rows:
        row.latency_ratio = latency_ratio((row.latency_us or {}).get("p50"), ref_p50)
        judge(row, run.config.gates, classes_of(run.manifest))


def _result(run: _Run, rows: list[Row], t_start: float, cpu_start=None) -> dict:
    """Step 8: the verdict (failed rows, no artifact checked at all, --expect targets this run did not
    check, a golden file nothing was judged against) and the report's JSON."""
    config, artifacts = run.config, run.manifest["artifacts"]
    failed = [f"{r.name} on {r.runtime}" for r in rows if r.status == "FAIL"]
    measured = sorted({target_of(a) for a in artifacts
                       if any(r.file == a["file"] and r.status != "skipped" and not r.is_reference for r in rows)})
    if not measured:  # a PASS over nothing would prove nothing
        why = sorted({reason for r in rows if r.status == "skipped" and not r.is_reference for reason in r.reasons})
        failed.append(f"no artifact was checked here ({'; '.join(why[:3]) or 'no row ran'})")
    for t in config.expect:  # --expect: the target must be in the export and checked by this run
        if t not in measured:
            why = sorted({reason for r in rows for reason in r.reasons if r.status == "skipped"
                          and any(r.file == a["file"] and target_of(a) == t for a in artifacts)})
            failed.append(f"expected {t} was not checked ({'; '.join(why) or 'no row ran it'})")
    golden_summary = None
    if run.golden is not None:
        compared = [r.id for r in rows if r.golden and r.golden["status"] != "absent"]
        golden_summary = {"file": run.golden.path, "label": run.golden.label(), "compared": compared,
                          "absent": [r.id for r in rows if r.golden and r.golden["status"] == "absent"]}
        if not compared:
            failed.append(f"--golden {run.golden.path}: no row of this run has golden outputs there to be judged against")
    row_dicts = [{"id": r.id, **asdict(r), "status": r.status.lower()} for r in rows]
    return {
        "schema_version": 1,
        "passed": not failed,
        "failed_rows": failed,
        "rows": row_dicts,
        "timing": {"rounds": config.rounds, "latency_iters": config.latency_iters, "machine_load": run.machine_load,
                   "noisy": timing.noise(run.machine_load, row_dicts),
                   "phases_s": {k: round(v, 3) for k, v in sorted(run.phases.items(), key=lambda kv: -kv[1])},
                   "cpu_s": _cpu_seconds(cpu_start, run.child_cpu_s)},
        "fastest": timing.fastest(row_dicts),
        "integrity": run.integrity,
        "targets": list(run.manifest["targets"]),
        "targets_checked": measured,
        "not_exported": list(run.manifest.get("not_exported", [])),  # a converter could not take the model
        "classes": list(classes_of(run.manifest)),
        "artifacts_listed": len(artifacts),
        "gates": asdict(config.gates),
        "threads": config.threads,
        "throughput_batch": config.throughput_batch,
        "n_test": int(len(run.labels)),
        "manifest": {"arch": run.manifest.get("arch"), "created": run.manifest.get("created"),
                     "calibration": run.manifest.get("calibration")},
        "machine": _machine(),
        "isa_cap": run.config.isa_cap,
        "golden": golden_summary,
        "seconds": time.perf_counter() - t_start,
    }


def _against_golden(row: Row, logits: np.ndarray, golden: Outputs, artifact_sha256: str, labels: np.ndarray,
                    gates: Gates) -> dict:
    """This row's logits against the golden run's for the same artifact on the same runtime (the row
    id names both); bytes that differ from the golden run's fail the row rather than compare."""
    saved = golden.rows.get(row.id)
    if saved is None or row.id not in golden.logits:
        why = "no such row there" if saved is None else f"that row has no outputs (status {saved.get('status')})"
        return {"status": "absent", "reasons": [why]}
    if saved.get("artifact_sha256") != artifact_sha256:
        return {"status": "fail", "failed_gates": ["bytes"], "reasons": [
            f"{golden.path} ran other bytes (SHA-256 {str(saved.get('artifact_sha256'))[:12]}…) than "
            f"{row.file} ({artifact_sha256[:12]}…)"]}
    theirs = golden.logits[row.id]
    if theirs.shape != logits.shape:
        return {"status": "fail", "failed_gates": ["classes"], "reasons": [
            f"{golden.path} holds {theirs.shape[-1]} logits per image for this row, this run {logits.shape[-1]}"]}
    return compare_pair(golden.logits[row.id].astype(np.float64), logits, labels,
                        judged_precision(row.precision, row.arithmetic, row.ran_precision), gates)


def _ood_agreement(mine: np.ndarray, nd_mine: np.ndarray, ref: np.ndarray, nd_ref_ok: np.ndarray) -> dict:
    """A row's not-a-digit decisions (accepted: bool per image) against the reference's: agreement on the
    test set and on the synthetic non-digits (each in %; the gate takes the lower), and how many each
    accepted/rejected."""
    test_pct = 100 * float((mine == ref).mean())
    nd_pct = 100 * float((nd_mine == nd_ref_ok).mean())
    return {"test_agreement_pct": test_pct, "non_digit_agreement_pct": nd_pct, "agreement_pct": min(test_pct, nd_pct),
            "test_accepted_pct": 100 * float(mine.mean()), "reference_test_accepted_pct": 100 * float(ref.mean()),
            "non_digits_rejected_pct": 100 * float(1 - nd_mine.mean()),
            "reference_non_digits_rejected_pct": 100 * float(1 - nd_ref_ok.mean()), "non_digits": int(len(nd_mine))}


# A row's loaded model in its child (isolate.Worker), by row id, from measure_row to the timing rounds
# (time_row); under isolate.IN_PROCESS, in this process until the run ends.
_LOADED: dict = {}


def measure_row(spec_index: int, folder: str, artifact: dict, threads: int, test_images: np.ndarray,
                non_digits: np.ndarray | None = None, *, arithmetic: str = Arithmetic.EXACT.value,
                keep: str | None = None, load_only: bool = False, isa_cap: str | None = None) -> dict:
    """One row's untimed measurements, in the child process that toolkit.isolate bounds: the artifact's
    test logits (float32), the loaded bytes' hash, placement, batch consistency, and the arithmetic asked
    for and run. `keep`: a key the loaded model is kept under for time_row (the timing rounds). `load_only`:
    the model loaded (every check its runtime makes as it loads) and its placement, nothing run."""
    rss_start = _proc_status_mb("VmRSS")
    phases: dict = {}
    clock = _Clock(phases)
    if isa_cap and RUNTIMES[spec_index].int8_kernels == "onednn":  # read by oneDNN at its first compile, here
        os.environ["ONEDNN_MAX_CPU_ISA"] = isa_cap.upper()
    with clock("load"):
        cand = build_candidate(RUNTIMES[spec_index], Path(folder), artifact, threads, arithmetic=Arithmetic(arithmetic))
    if load_only:
        with cand.scope():
            placement = cand.placement()
        return {"loaded_sha256": cand.loaded_sha256, "placement": placement.to_json() if placement else None,
                "phases_s": phases, "cpu_s": time.process_time()}
    with cand.scope():
        with clock("accuracy_pass"):
            logits = np.asarray(cand.logits(test_images), dtype=np.float32)
        with clock("placement"):
            placement, limits = cand.placement(), cand.output_limits()
        with clock("consistency"):
            idx = consistency_sample(logits)
            consistent = cand.consistency(test_images[idx], logits.argmax(1)[idx])
        out = {"logits": logits, "loaded_sha256": cand.loaded_sha256,
               "placement": placement.to_json() if placement else None, "ran_precision": cand.ran_precision,
               "arithmetic": cand.arithmetic.value, "precision_settings": dict(cand.precision_settings),
               "output_limits": limits, "batch_consistent": consistent,
               "consistency_batches": list(cand.consistency_batches) or None, "consistency_images": int(len(idx))}
        if non_digits is not None:
            with clock("not_a_digit"):
                out["non_digit_logits"] = np.asarray(cand.logits(non_digits), dtype=np.float32)
    out["phases_s"], out["cpu_s"] = phases, time.process_time()  # a forked child's CPU time starts at 0
    peak = _proc_status_mb("VmHWM")
    out["peak_rss_mb"] = peak
    out["rss_growth_mb"] = None if peak is None or rss_start is None else round(max(0.0, peak - rss_start), 1)
    if keep is not None:
        _LOADED[keep] = cand
        _release_freed_memory()  # the child lives on through the rounds: the test set's buffers are done with
    return out


def _release_freed_memory() -> None:
    """Give the memory this process has freed back to the system (glibc keeps freed buffers of tens of MB
    for reuse: 17 children each holding the test set's would be ~1 GB more); nothing where there is no glibc."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


CONSISTENCY_CLOSEST = 500  # the test images nearest a decision (smallest top-2 logit margin) ...
CONSISTENCY_RANDOM = 500  # ... and a seeded sample of the rest: the images each other batch size re-runs


def consistency_sample(logits: np.ndarray) -> np.ndarray:
    """The test images the other batch sizes re-run (sorted indices): those whose top two logits are
    closest — where a batch-dependent kernel's rounding would flip a prediction first — and a seeded
    sample of the rest. The full set runs once, at the evaluation batch, in the accuracy pass; re-running
    all of it at batch 1, 2, 7 and 64 was most of verify's time (19 of 53 s for 14 artifacts here)."""
    n = len(logits)
    if n <= CONSISTENCY_CLOSEST + CONSISTENCY_RANDOM:
        return np.arange(n)
    top2 = np.sort(np.asarray(logits, dtype=np.float64), axis=1)[:, -2:]
    closest = np.argsort(top2[:, 1] - top2[:, 0], kind="stable")[:CONSISTENCY_CLOSEST]
    rest = np.setdiff1d(np.arange(n), closest)
    sample = np.random.default_rng(0).choice(rest, CONSISTENCY_RANDOM, replace=False)
    return np.sort(np.concatenate([closest, sample]))


def time_row(key: str, test_images: np.ndarray, throughput_batch: int, latency_iters: int) -> dict:
    """One more timing round of a row, on the model its measure_row kept under `key`."""
    cpu0 = time.process_time()
    cand = _LOADED.get(key)
    if cand is None:
        raise ToolkitError(f"{key}: no model loaded for its timing round")
    phases: dict = {}
    with cand.scope(), _Clock(phases)("timing_rounds"):
        out = timing.one_round(cand, test_images, throughput_batch, latency_iters)
    return {**out, "phases_s": phases, "cpu_s": time.process_time() - cpu0}


class _Clock:
    """`with clock(name):` adds the block's wall seconds to phases[name]."""

    def __init__(self, phases: dict):
        self.phases = phases

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0


def _timing_rounds(run: _Run, plan: list, eager, reference_row: Row, log) -> None:
    """Step 6, rounds 1…N: every row that measured cleanly (and the live reference) timed once per round,
    one at a time, the rows interleaved (the order rotated each round, so no row always runs first or
    after the same neighbour); each round's machine load recorded."""
    config, rounds = run.config, run.rounds
    timed = [(row, spec, a) for row, spec, a in plan if row.id in rounds and row.status == "ok" and not row.measured_with]
    jobs = ([("ref", None, None)] if reference_row.id in rounds else []) + timed
    for k in range(config.rounds):
        if not jobs:
            break
        log(f"timing round {k + 1} of {config.rounds}")
        start = timing.cpu_snapshot()
        for row, _spec, _a in timing.rotated(jobs, k):
            if row == "ref":
                try:
                    with eager.scope(), _Clock(run.phases)("timing_rounds"):
                        rounds[reference_row.id].append(timing.one_round(eager, run.test_images, config.throughput_batch,
                                                                         config.latency_iters))
                except ToolkitError as exc:
                    reference_row.fail(f"timing round {k + 1}: {first_line(exc, 300)}")
                continue
            if row.status != "ok":
                continue
            try:
                rounds[row.id].append(_child_call(  # the images a round times, not the whole test set
                    run, run.workers[row.id], time_row, row.id, run.test_images[:max(1, config.throughput_batch)],
                    config.throughput_batch, config.latency_iters, timeout_s=config.row_timeout_s))
            except ToolkitError as exc:
                row.fail(f"timing round {k + 1}: {first_line(exc, 300)}")
                for copy in (c for c, _, _ in plan if c.measured_with == row.id):
                    copy.fail(f"as {row.name} on {row.runtime} (the same bytes): timing round {k + 1}: "
                              f"{first_line(exc, 300)}")
        run.machine_load.append(timing.load_between(start, timing.cpu_snapshot(), resolve_threads(config.threads)))


def _cpu_seconds(start, children: float) -> float | None:
    """CPU seconds since `start` (os.times()) of this process, and `children`'s (the rows' children, forked
    from the forkserver: not this process's children, so each reports its own)."""
    if start is None:
        return None
    now = os.times()
    return round(sum(now[i] - start[i] for i in range(2)) + children, 2)


def _proc_status_mb(key: str) -> float | None:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: its peak), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _support_faults(manifest: dict, bad_files: dict) -> dict:
    """artifact file -> why its support files fail it: a Triton model's config.pbtxt, an .ort model's
    required_operators.config, a LiteRT model's batch files, an OpenVINO IR's weights, each changed or
    missing since export (a Triton configuration the manifest does not list, unhashed, fails too)."""
    faults: dict = {}
    listed = {f["file"] for f in manifest.get("support_files", [])}
    for a in manifest["artifacts"]:
        mine = [v["file"] for v in a.get("batch_files", [])]
        if a["format"] in with_support("weights"):
            mine.append(a["weights"]["file"])
        if a["format"] in with_support("model_config"):
            config = a["file"].rsplit("/", 2)[0] + "/config.pbtxt"
            mine.append(config)
            if config not in listed:
                faults.setdefault(a["file"], []).append(f"{config} is not listed (hashed) in the manifest")
        if a["format"] in with_support("required_operators"):
            mine += [f for f in bad_files if f.endswith("required_operators.config")]
        for f in mine:
            if f in bad_files:
                faults.setdefault(a["file"], []).append(f"support file {f}: {bad_files[f]} since export")
    return faults


def _machine() -> dict:
    import os
    import platform

    import onnxruntime

    from toolkit.machine import cpu_flags

    info = {"cpu": cpu_flags(), "arch": platform.machine(), "onnxruntime": onnxruntime.__version__,
            "providers": available_providers()}
    if os.environ.get("MNISTTK_MACHINE_NOTE"):  # e.g. "emulated (qemu-user)": said beside every figure
        info["note"] = os.environ["MNISTTK_MACHINE_NOTE"][:200]
    return info
