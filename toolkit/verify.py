"""`mnisttk verify`: does each deployed artifact do the same job as the float model?

One row per artifact × runtime, all on the full MNIST test set, each judged by gates.
Edge side: numpy and onnxruntime only at import; the PyTorch rows come from
`toolkit.torch_eval`, imported only when torch is installed.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from toolkit.errors import ManifestError, RuntimeUnavailable, ToolkitError
from toolkit.manifest import check_hashes, load_manifest
from toolkit.metrics import classification_metrics, paired_accuracy_diff
from toolkit.runtime import Model, SessionOptions, available_providers, latency_us, throughput

CONSISTENCY_BATCHES = (1, 2, 7, 64)


@dataclass(frozen=True)
class Gates:
    fp32_max_abs_logit_diff: float = 1e-4  # float32 reorderings give ~1e-5 on these logits; 10× headroom
    int8_max_accuracy_drop: float = 0.003  # 0.3 points = 30 of 10,000 images
    int8_min_agreement: float = 0.995  # at most 50 of 10,000 top-1 predictions may change
    max_latency_ratio: float | None = None  # batch-1 p50 over the reference row's, when set


@dataclass(frozen=True)
class VerifyConfig:
    folder: Path = Path("exported")
    runtimes: tuple = ("torch", "cpu", "cuda")  # which rows to try; cuda rows skip (with a reason) if absent
    require_cuda: bool = False
    threads: int = 1  # intra-op threads for every runtime: one core, the edge case, and stable timings
    throughput_batch: int = 256
    latency_iters: int = 500
    gates: Gates = field(default_factory=Gates)


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
    max_abs_logit_diff: float | None = None
    acc_diff: float | None = None
    acc_diff_ci95: list | None = None
    mcnemar_p: float | None = None
    latency_us: dict | None = None
    throughput: float | None = None
    size_bytes: int | None = None
    latency_ratio: float | None = None
    placement: dict | None = None
    batch_consistent: bool | None = None
    is_reference: bool = False


class Candidate:
    """Something that turns uint8 test images into logits, and can be timed."""

    name: str
    runtime: str
    precision: str
    file: str | None

    def logits(self, images_u8: np.ndarray) -> np.ndarray: ...
    def bench_input(self, images_u8: np.ndarray): ...
    def run(self, x) -> object: ...
    def placement(self) -> dict | None:
        return None

    def consistency(self, images_u8: np.ndarray, preds: np.ndarray) -> bool | None:
        """Whether other batch sizes give `preds` again; None where not checked."""
        return None


class OnnxCandidate(Candidate):
    def __init__(self, path: Path, precision: str, provider: str, threads: int):
        self.path, self.precision, self.file = path, precision, path.name
        self.provider = provider
        self.runtime = f"ORT {provider.upper()}"
        self.name = f"ONNX {precision}"
        self.model = Model(path, provider, SessionOptions(threads=threads))
        self.threads = threads
        if provider == "cuda" and "CUDAExecutionProvider" not in self.model.providers_used:
            # ORT falls back to the CPU silently when the CUDA provider cannot start (no GPU, no CUDA libs)
            raise RuntimeUnavailable("the CUDA provider could not start here (no GPU or CUDA libraries); ORT fell back to the CPU")

    def logits(self, images_u8):
        return self.model.logits(images_u8, batch=len(images_u8))  # the full set: one of the consistency batches

    def bench_input(self, images_u8):
        return self.model.prepare(images_u8)

    def run(self, x):
        return self.model.run(x)

    def placement(self):
        profiled = Model(self.path, self.provider, SessionOptions(threads=self.threads, profile=True))
        profiled.logits(np.zeros((4, 28, 28), np.uint8), batch=4)
        return profiled.node_placement()

    def consistency(self, images_u8, preds):
        return all(np.array_equal(self.model.logits(images_u8, batch=b).argmax(1), preds) for b in CONSISTENCY_BATCHES)


def _fill_accuracy(row: Row, labels: np.ndarray, logits: np.ndarray, ref_logits: np.ndarray) -> None:
    preds, ref_preds = logits.argmax(1), ref_logits.argmax(1)
    m = classification_metrics(labels, preds)
    row.accuracy, row.macro_precision, row.macro_recall = m["accuracy"], m["macro_precision"], m["macro_recall"]
    row.agreement = float((preds == ref_preds).mean())
    row.flipped = int((preds != ref_preds).sum())
    row.max_abs_logit_diff = float(np.abs(logits.astype(np.float64) - ref_logits).max())
    d = paired_accuracy_diff(labels, preds, ref_preds)
    row.acc_diff, row.acc_diff_ci95, row.mcnemar_p = d["diff"], d["ci95"], d["mcnemar_p"]


def judge(row: Row, gates: Gates) -> None:
    """Apply the gates to a measured row, appending each failed reason."""
    if row.status == "skipped" or row.is_reference:
        return
    if row.precision == "fp32":
        if row.flipped:
            row.reasons.append(f"{row.flipped} predictions differ from the reference")
        if row.max_abs_logit_diff is not None and row.max_abs_logit_diff > gates.fp32_max_abs_logit_diff:
            row.reasons.append(f"max |Δlogit| {row.max_abs_logit_diff:.2e} > {gates.fp32_max_abs_logit_diff:g}")
    else:
        if row.acc_diff is not None and -row.acc_diff > gates.int8_max_accuracy_drop:
            row.reasons.append(f"accuracy drop {-row.acc_diff * 100:.2f} points > {gates.int8_max_accuracy_drop * 100:.2f}")
        if row.agreement is not None and row.agreement < gates.int8_min_agreement:
            row.reasons.append(f"agreement {row.agreement:.2%} < {gates.int8_min_agreement:.1%}")
    if row.batch_consistent is False:
        row.reasons.append("predictions change with the batch size")
    if gates.max_latency_ratio is not None and row.latency_ratio is not None and row.latency_ratio > gates.max_latency_ratio:
        row.reasons.append(f"latency ratio {row.latency_ratio:.2f} > {gates.max_latency_ratio:g}")
    if row.reasons:
        row.status = "FAIL"


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def run_verify(config: VerifyConfig, test_images: np.ndarray, test_labels: np.ndarray, test_sha256: str,
               log: Callable[[str], None] = lambda s: None) -> dict:
    t_start = time.perf_counter()
    folder = Path(config.folder)
    manifest = load_manifest(folder)
    integrity = check_hashes(folder, manifest)
    bad_files = {r["file"]: r["status"] for r in integrity if r["status"] != "ok"}
    ref_info = manifest["reference"]
    if ref_info["file"] in bad_files:
        raise ManifestError(f"{folder / ref_info['file']}: {bad_files[ref_info['file']]} since export; re-run `mnisttk export`")
    ref = np.load(folder / ref_info["file"])
    if str(ref["test_sha256"]) != test_sha256:
        raise ManifestError("the loaded MNIST test set is not the one the reference was made on (SHA-256 differs)")
    ref_logits = ref["logits"].astype(np.float64)
    labels = test_labels.astype(np.int64)
    if not np.array_equal(ref["labels"], labels):
        raise ManifestError("reference labels do not match the test labels")

    candidates: list[Candidate | Row] = []
    have_torch = "torch" in config.runtimes and torch_available()
    reference_row: Row
    if have_torch:
        from toolkit.torch_eval import eager_candidate, torchscript_candidate

        eager = eager_candidate(manifest, folder, config.threads)
        reference_row = Row("PyTorch fp32", "PyTorch eager", "fp32", eager.file, is_reference=True)
        candidates_torch = [
            Row(f"TorchScript {a['precision']}", "TorchScript", a["precision"], a["file"], status="FAIL", reasons=["file missing"])
            if bad_files.get(a["file"]) == "missing" else torchscript_candidate(folder / a["file"], a["precision"], config.threads)
            for a in manifest["artifacts"] if a["format"] == "torchscript"
        ]
    else:
        eager = None
        reference_row = Row("PyTorch fp32", "reference.npz", "fp32", ref_info["file"], is_reference=True)
        reason = "torch not installed" if "torch" in config.runtimes else "not asked for (--no-torch or --runtime)"
        candidates_torch = [Row(f"TorchScript {a['precision']}", "TorchScript", a["precision"], a["file"],
                                status="skipped", reasons=[reason])
                            for a in manifest["artifacts"] if a["format"] == "torchscript"]
    candidates.extend(candidates_torch)

    onnx_artifacts = [a for a in manifest["artifacts"] if a["format"] == "onnx"]
    for provider in ("cpu", "cuda"):
        for a in onnx_artifacts:
            label = (f"ONNX {a['precision']}", f"ORT {provider.upper()}", a["precision"], a["file"])
            if provider not in config.runtimes:
                candidates.append(Row(*label, status="skipped", reasons=["not asked for (--runtime)"]))
            elif a["file"] in bad_files and bad_files[a["file"]] == "missing":
                candidates.append(Row(*label, status="FAIL", reasons=["file missing"]))
            elif provider == "cuda" and "CUDAExecutionProvider" not in available_providers():
                why = "no CUDAExecutionProvider in this onnxruntime (pip install 'mnisttk[gpu]' on a CUDA machine)"
                candidates.append(Row(*label, status="FAIL" if config.require_cuda else "skipped", reasons=[why]))
            else:
                try:
                    candidates.append(OnnxCandidate(folder / a["file"], a["precision"], provider, config.threads))
                except RuntimeUnavailable as exc:
                    candidates.append(Row(*label, status="FAIL" if config.require_cuda else "skipped", reasons=[str(exc)]))
                except ToolkitError as exc:
                    candidates.append(Row(*label, status="FAIL", reasons=[str(exc)]))

    sizes = {a["file"]: a["size_bytes"] for a in manifest["artifacts"]}
    rows = [reference_row]
    # The reference row: live PyTorch eager when torch is here (and agrees with reference.npz), else the npz.
    if eager is not None:
        live = eager.logits(test_images).astype(np.float64)
        drift = float(np.abs(live - ref_logits).max())
        if drift > config.gates.fp32_max_abs_logit_diff:
            reference_row.reasons.append(f"checkpoint's eager logits differ from reference.npz by {drift:.2e}")
            reference_row.status = "FAIL"
        _time(reference_row, eager, test_images, config)
        reference_row.size_bytes = eager.size_bytes
    _fill_accuracy(reference_row, labels, ref_logits, ref_logits)
    for cand in candidates:
        if isinstance(cand, Row):
            rows.append(cand)
            continue
        row = Row(cand.name, cand.runtime, cand.precision, cand.file)
        log(f"verifying {row.name} on {row.runtime}")
        logits = cand.logits(test_images)
        _fill_accuracy(row, labels, logits.astype(np.float64), ref_logits)
        _time(row, cand, test_images, config)
        row.size_bytes = sizes.get(cand.file)
        row.placement = cand.placement()
        row.batch_consistent = cand.consistency(test_images, logits.argmax(1))
        rows.append(row)

    ref_p50 = (reference_row.latency_us or {}).get("p50")
    for row in rows:
        if row.file in bad_files and row.status != "skipped":
            row.reasons.insert(0, f"SHA-256 {bad_files[row.file]} since export: the file is not the one exported")
            row.status = "FAIL"
        if row.latency_us and ref_p50:
            row.latency_ratio = row.latency_us["p50"] / ref_p50
        judge(row, config.gates)

    failed = [f"{r.name} on {r.runtime}" for r in rows if r.status == "FAIL"]
    return {
        "passed": not failed,
        "failed_rows": failed,
        "rows": [asdict(r) for r in rows],
        "integrity": integrity,
        "gates": asdict(config.gates),
        "threads": config.threads,
        "throughput_batch": config.throughput_batch,
        "n_test": int(len(labels)),
        "manifest": {"arch": manifest.get("arch"), "created": manifest.get("created"),
                     "calibration": manifest.get("calibration")},
        "machine": _machine(),
        "seconds": time.perf_counter() - t_start,
    }


def _time(row: Row, cand: Candidate, images_u8: np.ndarray, config: VerifyConfig) -> None:
    x1 = cand.bench_input(images_u8[:1])
    row.latency_us = latency_us(cand, x1, iters=config.latency_iters)
    row.throughput = throughput(cand, cand.bench_input(images_u8[: config.throughput_batch]))


def _machine() -> dict:
    import onnxruntime

    from toolkit.manifest import cpu_flags

    return {"cpu": cpu_flags(), "onnxruntime": onnxruntime.__version__, "providers": available_providers()}
