"""`mnisttk export`: TorchScript and ONNX artifacts, int8 variants, reference and manifest.

Everything is written into a staging folder first and moved into place at the end,
the manifest last: a failed or interrupted export leaves the previous artifacts as
they were.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit import __version__, ood
from toolkit.checkpoint import checkpoint_spec, load_checkpoint, model_from_checkpoint
from toolkit.config import ExportConfig, Gates  # noqa: F401  (ExportConfig: this module's API)
from toolkit.contract import EVAL_BATCH, MNIST_INPUT, InputSpec, batched
from toolkit.data import MNIST, to_model_input
from toolkit.env import library_versions
from toolkit.errors import ExportError, PrecisionNotExportable, ToolkitError, first_line
from toolkit.exporters import Artifact, Sources, Written, exporter, missing_dependency
from toolkit.exporters import onnx as onnx_exporter
from toolkit.exporters.quantize import calibration_indices, indices_sha256
from toolkit.fsutil import check_writable_dir, sha256_file
from toolkit.gates import Measurement, evaluate
from toolkit.machine import machine_info
from toolkit.manifest import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    REFERENCE_NAME,
    artifact_entry,
    targets_for,
    write_manifest,
)
from toolkit.metrics import classification_metrics
from toolkit.publish import FolderBusy, Stage, lock_folder, publish, recover
from toolkit.targets import BY_NAME, SOURCE, TARGETS, possible_names

OPSET = onnx_exporter.OPSET


def _eager_logits(model: torch.nn.Module, x: np.ndarray, name: str = "PyTorch eager") -> np.ndarray:
    with torch.no_grad():
        logits = batched(lambda b: model(torch.from_numpy(b)).numpy(), x, EVAL_BATCH)
    _check_finite(name, logits)
    return logits


def _check_finite(name: str, logits: np.ndarray) -> None:
    if not np.isfinite(logits).all():
        bad = int((~np.isfinite(logits)).any(1).sum())
        raise ExportError(f"{name}: NaN or infinite logits on {bad} test images; nothing was written")


def _check_parity(c: dict, gates: Gates) -> None:
    """An fp32 artifact against PyTorch eager, under verify's fp32 gates (toolkit.gates)."""
    reasons = evaluate(Measurement("fp32", flipped=c["flipped"], max_abs_logit_diff=c["max_abs_logit_diff"]), gates)
    if reasons:
        raise ExportError(f"{c['artifact']}: differs from PyTorch eager ({'; '.join(r.text() for r in reasons)}); "
                          "nothing was written")


def _compare(name: str, logits: np.ndarray, ref: np.ndarray) -> dict:
    diff = float(np.abs(logits - ref).max())
    flips = int((logits.argmax(1) != ref.argmax(1)).sum())
    return {"artifact": name, "max_abs_logit_diff": diff, "flipped": flips}


def _artifact_logits(art: Artifact, stage: Path, images_u8: np.ndarray, num_classes: int = 10,
                     input_spec: InputSpec = MNIST_INPUT) -> tuple[np.ndarray, dict]:
    """An artifact's test logits, on the runtime verify runs it on (the registry's CPU runtime for its
    format: toolkit.runtimes.RUNTIMES), through the same template and checks, with the arithmetic asked
    for and run. An fp32 file always asks for exact fp32 arithmetic (never a runtime's reduced default on
    this CPU, such as OpenVINO's bf16): the runtime refuses if it cannot give it."""
    from toolkit.runtimes import build, cpu_runtime
    from toolkit.runtimes.candidate import Arithmetic

    spec = cpu_runtime(art.fmt)
    if spec is None:
        raise ExportError(f"{art.file}: no CPU runtime runs {art.fmt} files, so export cannot check it")
    artifact = {"file": art.file, "format": art.fmt, "precision": art.precision, "sha256": None,
                "inputs": [{"shape": ["batch", *input_spec.chw]}], **art.fields, "outputs": [{"shape": ["batch", num_classes]}]}
    try:
        cand = build(spec, stage, artifact, 0, arithmetic=Arithmetic.EXACT)
        with cand.scope():
            logits = cand.logits(images_u8)
        ran = {"runtime": spec.label, "arithmetic": cand.arithmetic.value,
               "ran_precision": cand.ran_precision or art.precision, "precision_settings": dict(cand.precision_settings),
               "input_dtype": cand.input_dtype()}
        return logits, ran
    except ExportError:
        raise
    except ToolkitError as exc:
        raise ExportError(f"{exc}; nothing was written") from None


def run_export(config: ExportConfig, data: MNIST, log: Callable[[str], None] = lambda s: None) -> dict:
    from dataclasses import replace

    from toolkit import arch as arch_mod
    from toolkit.checkpoint import checkpoint_classes

    ckpt = load_checkpoint(config.checkpoint)
    spec = checkpoint_spec(ckpt)
    if not data.spec.same_input(spec):
        raise ExportError(f"the data's images are {data.spec.text} ({data.spec.colour}), the checkpoint's model takes "
                          f"{spec.text} ({spec.colour}); export with the data it was trained on")
    given = arch_mod.parse(config.arch, config.arch_args) if config.arch else None
    model = model_from_checkpoint(ckpt, str(config.checkpoint), given)
    arch = ckpt["arch"]
    classes = checkpoint_classes(ckpt)
    top = max(int(data.train_labels.max(initial=0)), int(data.test_labels.max(initial=0)))
    if top >= len(classes):
        raise ExportError(f"the data has label {top}, but the checkpoint's model has {len(classes)} classes; "
                          "export with the data it was trained on")
    data = replace(data, classes=classes)
    if ckpt.get("data_sha256", {}).get("test") not in (None, data.sha256["test"]) and not config.allow_other_test_set:
        raise ExportError("the checkpoint was trained and scored on another MNIST test set than the one loaded "
                          "(SHA-256 differs); pass --allow-other-test-set to export against this one anyway")
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for name in config.quant.keep_fp32:  # before the fp32 export, not after it
        if name not in layers[1:]:
            raise ExportError(f"--keep-fp32 {name!r} is not a later layer of this {arch} (choose from "
                              f"{', '.join(layers[1:])}; the first layer has --first-conv); nothing was written")
    indices = calibration_indices(len(data.train_images), config.quant) if config.quantize else None
    for fmt in config.formats:  # before anything is written: a missing extra is one line
        reason = missing_dependency(fmt)
        if reason:
            raise ExportError(reason)
    try:
        out = check_writable_dir(config.out)
    except OSError as exc:
        raise ExportError(f"cannot write to {config.out}: {exc.strerror or exc}") from None
    try:
        folder_lock = lock_folder(out)  # two exports into one folder: the second stops here
    except FolderBusy as exc:
        raise ExportError(f"{exc.strerror}; wait for it to finish (nothing was written)") from None
    except OSError as exc:
        raise ExportError(f"cannot lock {out}: {exc.strerror or exc}") from None
    try:
        recover(out, log)  # an earlier export of ours killed mid-way: roll it back, remove its staging folder
        return _export_locked(config, data, model, ckpt, arch, indices, out, log)
    finally:
        folder_lock.close()


@dataclass
class _Export:
    """What the steps of one export share and fill in."""

    config: ExportConfig
    data: MNIST
    model: torch.nn.Module
    arch: str
    stage: Path
    labels: np.ndarray
    ref_logits: np.ndarray
    metadata: dict
    artifacts: list = field(default_factory=list)  # toolkit.exporters.Artifact, in the order written
    support: list = field(default_factory=list)  # (relative path, role)
    test_logits: dict = field(default_factory=dict)  # artifact file -> its test logits
    checks: list = field(default_factory=list)  # fp32 parity, one per fp32 artifact checked
    quant: Any = None  # the int8 recipe (--search may change it)
    quant_info: dict | None = None
    search: dict | None = None
    int8_fallback: dict | None = None  # toolkit.search.fallback's evidence, where the default recipe failed
    pair_bounds: dict = field(default_factory=dict)  # int8 ONNX file -> its u8×s8 pair-sum bound (toolkit.int8cpu)
    calib: np.ndarray | None = None
    not_exported: list = field(default_factory=list)  # {"target", "reason"}: what a converter could not take
    input_dtypes: dict = field(default_factory=dict)  # artifact file -> the input dtype its runtime reported
    checkpoint_file: str | None = None  # the checkpoint's name in the export folder, where it is there
    arch_ref: dict | None = None  # the model's reference (toolkit.arch), as the checkpoint recorded it
    input_spec: InputSpec = MNIST_INPUT  # what the model takes, as the checkpoint records it (its normalisation too)

    @property
    def require_all(self) -> bool:
        """Whether a target a converter cannot take fails the export (ExportConfig.require_all)."""
        if self.config.require_all is not None:
            return self.config.require_all
        return (self.arch_ref or {}).get("kind", "builtin") == "builtin"

    def add(self, written: Written) -> None:
        self.artifacts += written.artifacts
        self.support += written.support

    def sources(self, precisions: tuple) -> Sources:
        onnx = {a.precision: self.stage / a.file for a in self.artifacts if a.fmt == SOURCE}
        return Sources(self.stage, self.arch, precisions, self.model, onnx, self.calib, self.quant, self.metadata,
                       spec=self.data.spec)


def _export_locked(config: ExportConfig, data: MNIST, model, ckpt: dict, arch: str, indices, out: Path,
                   log: Callable[[str], None]) -> dict:
    """The export's steps, in a staging folder published only when all of them passed."""
    ref_logits = _eager_logits(model, to_model_input(data.test_images))
    ckpt_sha = sha256_file(config.checkpoint)
    test_acc = ckpt.get("metrics", {}).get("test", {}).get("accuracy")
    # "not a digit": the rule calibrated on training digits only, in the manifest and in each ONNX
    # file's metadata (mnisttk_ood), so an integrator applies the same rule; the reference keeps the
    # float model's logits on the synthetic non-digits, for verify's int8 accept/reject agreement
    from toolkit.predict import default_preprocessing

    preprocessing = config.preprocessing or default_preprocessing(data.classes, data.spec)
    if preprocessing != "resize" and not data.spec.is_mnist:
        raise ExportError(f"--preprocess {preprocessing} makes MNIST-style 28×28 grey inputs; this model takes "
                          f"{data.spec.text} ({data.spec.colour}): use resize (the default for it)")
    ood_rule = _calibrate_ood(model, data.train_images, config.not_a_digit_keep, data.classes, preprocessing)
    metadata = {"arch": arch, "checkpoint_test_accuracy": test_acc, "mnisttk_version": __version__,
                "checkpoint_sha256": ckpt_sha, "mnisttk_ood": json.dumps(ood_rule, separators=(",", ":")),
                "class_labels": ",".join(c.replace(",", " ") for c in data.classes)}  # names in full: mnisttk_ood
    try:
        stage_obj = Stage(out)
    except OSError as exc:  # the journal key refused (JournalKeyError), or the folder not writable
        raise ExportError(f"{exc.strerror or exc}; nothing was written") from None
    try:
        ex = _Export(config, data, model, arch, stage_obj.new, data.test_labels.astype(np.int64), ref_logits, metadata,
                     quant=config.quant, arch_ref=ckpt.get("arch_ref"), input_spec=checkpoint_spec(ckpt))
        _write_fp32(ex, log)
        if config.quantize:
            _write_int8(ex, indices, log)
        _write_other_targets(ex, log)
        accuracy = _score(ex)
        ex.checkpoint_file = _checkpoint_copy(config.checkpoint, ckpt_sha, out, ex.stage, log)
        manifest = _manifest(ex, accuracy, ckpt_sha, test_acc, ood_rule)
        return _publish(stage_obj, ex, manifest, out, log)
    except ExportError:
        raise
    except KeyboardInterrupt:
        if stage_obj.published:  # Ctrl-C is held back while publishing: it landed after the switch
            raise ExportError(f"interrupted after publishing: the new export in {out} is complete") from None
        raise ExportError(f"interrupted before publishing: the previous export in {out} was left as it was "
                          "(nothing was changed)") from None
    except OSError as exc:  # a full disk, a read-only folder: one line
        raise ExportError(f"export failed, previous artifacts left as they were: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - exporter/quantizer internals: one line, nothing half-written
        raise ExportError(f"export failed, previous artifacts left as they were: {type(exc).__name__}: "
                          f"{first_line(exc, 200)}") from None
    finally:
        stage_obj.close()


def _primary_formats(config: ExportConfig) -> list[str]:
    """The primary targets asked for (toolkit.targets.Target.primary), ONNX always among them."""
    return [t.name for t in TARGETS if t.primary and (t.name in config.formats or t.source)]


def _write_fp32(ex: _Export, log) -> None:
    """Step 1: the primary targets' fp32 files, each checked against PyTorch eager on the whole test set
    under verify's fp32 gates (nothing is written if one differs)."""
    t0 = time.perf_counter()
    for fmt in _primary_formats(ex.config):
        _try_target(ex, fmt, ("fp32",), log, required=BY_NAME[fmt].source)
    log(f"fp32 exported and checked against PyTorch eager on {len(ex.labels)} test images "
        f"({time.perf_counter() - t0:.1f} s)")


def _check_fp32(ex: _Export, art: Artifact) -> None:
    ex.test_logits[art.file], ran = _artifact_logits(art, ex.stage, ex.data.test_images, ex.data.num_classes,
                                                     ex.data.spec)
    ex.input_dtypes[art.file] = ran.pop("input_dtype")
    if ran["arithmetic"] != "exact" or ran["ran_precision"] not in ("fp32", "f32"):  # never called exact otherwise
        raise ExportError(f"{art.file}: {ran['runtime']} ran it in {ran['ran_precision']} ({ran['arithmetic']}), not "
                          "exact fp32; its parity cannot be checked; nothing was written")
    ex.checks.append({**_compare(art.file, ex.test_logits[art.file], ex.ref_logits), **ran})
    _check_parity(ex.checks[-1], ex.config.gates)


def _write_int8(ex: _Export, indices, log) -> None:
    """Step 2 (--quantize): calibration images from the training split, the --search over per-layer
    precisions if asked, then the primary targets' int8 files."""
    t0 = time.perf_counter()
    ex.calib = to_model_input(ex.data.train_images[indices])
    if ex.config.search:
        from toolkit.search import format_search, run_search

        evaluator = None
        if ex.config.cluster:  # the candidates scored and timed on the node kind the user ships to
            from toolkit.cluster import search_evaluator

            evaluator = search_evaluator(ex.config.cluster, ex.config.nodes, log)
        ex.search = run_search(ex.stage / f"{ex.arch}_fp32.onnx", ex.calib, ex.quant, ex.data.test_images, ex.labels,
                               ex.ref_logits, gates=ex.config.gates, log=log, evaluator=evaluator)
        ex.quant = ex.search.pop("chosen")
        log("search (ONNX Runtime CPU, 1 thread; each candidate on the full test set):\n" + format_search(ex.search))
    elif ex.config.int8_fallback and not ex.quant.keep_fp32:  # the user's own --keep-fp32 is kept as given
        from toolkit.search import fallback

        ex.quant, ex.int8_fallback = fallback(ex.stage / f"{ex.arch}_fp32.onnx", ex.calib, ex.quant,
                                              ex.data.test_images, ex.labels, ex.ref_logits, gates=ex.config.gates,
                                              log=log)
    for fmt in _primary_formats(ex.config):
        _try_target(ex, fmt, ("int8",), log)
    ex.quant_info = {**ex.quant.to_dict(), "split": "train", "calibration_indices_sha256": indices_sha256(indices)}
    log(f"int8 quantized, calibrated on {len(indices)} training images ({time.perf_counter() - t0:.1f} s)")


def _write_other_targets(ex: _Export, log) -> None:
    """Step 3: every other target asked for, one exporter each, in the registry's order; an fp32 file
    converted from PyTorch (not copied from the checked ONNX bytes) meets the same parity bar."""
    precisions = ("fp32", "int8") if ex.config.quantize else ("fp32",)
    for fmt in (t.name for t in TARGETS if not t.primary and t.name in ex.config.formats):
        t0 = time.perf_counter()
        written = _try_target(ex, fmt, precisions, log)
        if written.artifacts:
            log(f"{fmt}: {', '.join(a.file for a in written.artifacts)} ({time.perf_counter() - t0:.1f} s)")


def _try_target(ex: _Export, fmt: str, precisions: tuple, log, required: bool = False, quiet: bool = False,
                failure: list | None = None) -> Written:
    """One exporter for `precisions`, its fp32 files checked against PyTorch eager. Where the converter
    cannot take this model (an operator it lacks, a shape it cannot trace) or its fp32 file differs from
    PyTorch, the target is "not exportable" with the converter's own reason, what it wrote is removed
    from the stage, and the export goes on with the others; unless it is ONNX (every other target and
    verify's reference build on it) or --require-all was given."""
    if len(precisions) > 1 and not (quiet or required or ex.require_all):
        failed: list = []
        written = _try_target(ex, fmt, precisions, log, quiet=True, failure=failed)
        if written.artifacts:
            return written
        # One precision failed: each alone, so that the other is still written. A precision the converter
        # named as the one it cannot take is not converted a second time to fail the same way.
        named = next((exc.precision for exc, _ in failed if isinstance(exc, PrecisionNotExportable)), None)
        merged = Written()
        for p in precisions:
            if p == named:
                _not_exportable(ex, fmt, (p,), failed[0][1], log)
                continue
            one = _try_target(ex, fmt, (p,), log)
            merged.artifacts += one.artifacts
            merged.support += one.support
        return merged
    before = {p.name for p in ex.stage.iterdir()}
    try:
        written = exporter(fmt)(ex.sources(precisions))
        for art in written.artifacts:
            if art.precision == "fp32" and art.source is None:
                _check_fp32(ex, art)
            elif art.file not in ex.test_logits and not art.copy:  # an int8 file its runtime cannot run: here
                ex.test_logits[art.file], ran = _artifact_logits(art, ex.stage, ex.data.test_images,
                                                                 ex.data.num_classes, ex.data.spec)
                ex.input_dtypes[art.file] = ran["input_dtype"]
    except (KeyboardInterrupt, OSError):
        raise
    except Exception as exc:
        whole = first_line(exc, 10_000).removesuffix("; nothing was written")
        if not isinstance(exc, ToolkitError):
            whole = f"{type(exc).__name__}: {whole}"
        if required or ex.require_all:
            raise ExportError(f"{fmt}: not exportable: {whole}; nothing was written") from exc
        reason = whole[:300]  # the manifest's and the log's line
        import shutil

        for name in {p.name for p in ex.stage.iterdir()} - before:
            target = ex.stage / name
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        ex.checks = [c for c in ex.checks if c["artifact"] in {a.file for a in ex.artifacts}]
        if failure is not None:
            failure.append((exc, reason))
        if not quiet:
            _not_exportable(ex, fmt, precisions, reason, log)
        return Written()
    ex.add(written)
    return written


def _not_exportable(ex: _Export, fmt: str, precisions: tuple, reason: str, log) -> None:
    ex.not_exported += [{"target": f"{fmt}-{p}", "reason": reason} for p in precisions]
    head = f"{fmt} ({', '.join(precisions)}): not exportable: "
    short = reason if len(head) + len(reason) <= 120 else reason[: 120 - len(head) - 1] + "…"
    log(head + short + ("" if short == reason else "\n    (the converter's whole message: the manifest's not_exported)"))


def _check_io(entry: dict, seen: str | None, num_classes: int) -> None:
    """The manifest's input entry must be what the written file takes, as its runtime read it back, and
    its output as wide as the model's classes (a converter's own output shape, never a constant)."""
    said = entry["inputs"][0]["dtype"]
    if seen is None or said != seen:
        raise ExportError(f"{entry['file']}: the manifest would say it takes {said}, but its runtime reads an input "
                          f"of {seen or 'unknown type'}; nothing was written")
    shape = (entry.get("outputs") or [{}])[0].get("shape") or []
    if shape and isinstance(shape[-1], int) and shape[-1] != num_classes:
        raise ExportError(f"{entry['file']}: its output is {shape[-1]} wide, the model has {num_classes} classes; "
                          "nothing was written")


def _score(ex: _Export) -> dict:
    """Step 4: every artifact's test-set accuracy, on its own runtime (recorded in the manifest)."""
    accuracy = {}
    for art in ex.artifacts:
        if art.copy and art.source in ex.test_logits:  # the very bytes of a file already scored
            ex.test_logits[art.file] = ex.test_logits[art.source]
        if art.file not in ex.test_logits:
            ex.test_logits[art.file], ran = _artifact_logits(art, ex.stage, ex.data.test_images, ex.data.num_classes,
                                                             ex.data.spec)
            ex.input_dtypes[art.file] = ran["input_dtype"]
        accuracy[art.file] = classification_metrics(ex.labels, ex.test_logits[art.file].argmax(1),
                                                    ex.data.num_classes)["accuracy"]
    return accuracy


def _manifest(ex: _Export, accuracy: dict, ckpt_sha: str, test_acc, ood_rule: dict) -> dict:
    """Step 5: the reference (the float model's test and non-digit logits) and the manifest, in the stage."""
    config, stage, labels = ex.config, ex.stage, ex.labels
    non_digit_logits = _eager_logits(ex.model, to_model_input(ood.non_digit_images(ex.data.spec.image_shape)))
    np.savez_compressed(stage / REFERENCE_NAME, logits=ex.ref_logits.astype(np.float32), labels=labels,
                        test_sha256=np.array(ex.data.sha256["test"]), arch=np.array(ex.arch),
                        non_digit_logits=non_digit_logits.astype(np.float32))
    sources = {a.file: a for a in ex.artifacts}
    entries = []
    for art in ex.artifacts:
        fields = dict(art.fields)
        if art.precision == "int8" and "calibration_method" not in fields:  # how it was calibrated
            fields["calibration_method"] = _calibration_method(art.fmt, ex.quant)
        if art.precision == "int8":
            fields.update(_int8_cpu_fields(ex, art, sources))
        qparams = art.quant_params if art.source is None else sources[art.source].quant_params
        entries.append(artifact_entry(stage / art.file, art.fmt, art.precision, qparams,
                                      OPSET if BY_NAME[art.fmt].onnx_opset else None, accuracy[art.file],
                                      config.quant.uint8_input and BY_NAME[art.fmt].uint8_input and art.precision == "int8",
                                      file=art.file, extra=fields, num_classes=ex.data.num_classes,
                                      spec=ex.data.spec))
        _check_io(entries[-1], ex.input_dtypes.get(art.file) or ex.input_dtypes.get(art.source), ex.data.num_classes)
    return {
        "schema_version": MANIFEST_VERSION,
        "mnisttk_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arch": ex.arch,
        "arch_ref": ex.arch_ref,
        "classes": list(ex.data.classes),
        "input": ex.input_spec.to_dict(),  # what every artifact takes (toolkit.contract.InputSpec)
        "preprocessing": ood_rule.get("preprocessing", "digit"),  # predict's picture -> input (toolkit.predict)
        "checkpoint": {"path": str(config.checkpoint), "file": ex.checkpoint_file, "sha256": ckpt_sha,
                       "test_accuracy": test_acc},
        "reference": {"file": REFERENCE_NAME, "sha256": sha256_file(stage / REFERENCE_NAME),
                      "pytorch_fp32_test_accuracy": classification_metrics(labels, ex.ref_logits.argmax(1),
                                                                           ex.data.num_classes)["accuracy"],
                      "test_sha256": ex.data.sha256["test"]},
        "artifacts": entries,
        "support_files": [{"file": rel, "sha256": sha256_file(stage / rel), "size_bytes": (stage / rel).stat().st_size,
                           "role": role} for rel, role in ex.support],
        # what was exported (verify fails if any is missing) and what a converter could not take, with its reason
        "targets": [t for t in targets_for(config.formats, config.quantize)
                    if t not in {e["target"] for e in ex.not_exported}],
        "not_exported": ex.not_exported,
        "fp32_parity": ex.checks,
        "calibration": ex.quant_info,
        "search": ex.search,  # export --search: every candidate measured, the chosen one marked
        "int8_fallback": ex.int8_fallback,  # the default int8 recipe failed: the layers kept in fp32, and why
        "ood": ood_rule,  # predict's not-a-digit rule (toolkit.ood), calibrated on training digits
        "versions": library_versions(),
        "machine": machine_info(torch.cuda.get_device_name() if torch.cuda.is_available() else None),
    }


def _int8_cpu_fields(ex: _Export, art, sources: dict) -> dict:
    """Which CPU kinds an int8 file computes exactly on (toolkit.int8cpu), and the evidence: the worst
    u8×s8 pair sum its own weights can form (ONNX family, OpenVINO IR), or the recipe that bounds it
    (TorchScript: 7-bit weights), or kernels that never pair in int16 (XNNPACK)."""
    from toolkit import int8cpu
    from toolkit.exporters.quantize import onnx_int8_weights

    target = BY_NAME[art.fmt]
    kernels = target.int8_kernels
    bound = None
    if target.onnx_opset:  # the ONNX family: the int8 ONNX model's weights (.ort and Triton's are its own)
        onnx_file = ex.stage / f"{ex.arch}_int8.onnx"
        if onnx_file not in ex.pair_bounds and onnx_file.is_file():  # read once for the three files
            ex.pair_bounds[onnx_file] = int8cpu.pair_sum_bound(onnx_int8_weights(onnx_file))
        bound = ex.pair_bounds.get(onnx_file)
    elif kernels == "onednn":  # an OpenVINO IR: its own int8 constants
        from toolkit.exporters.openvino_ir import ir_int8_weights

        bound = int8cpu.pair_sum_bound(ir_int8_weights(ex.stage / art.file))
    if kernels == "fbgemm":
        bounded = ex.quant.resolved_reduce_range()  # 7-bit weights: two products ≤ 2·255·64
    else:
        bounded = bound is not None and bound <= int8cpu.INT16_MAX
    fields = {"int8_for": ex.quant.int8_isa, "int8_exact_on": int8cpu.exact_on(kernels, bounded)}
    if bound is not None:
        fields["int8_pair_sum_bound"] = bound
    return fields


def _publish(stage_obj: Stage, ex: _Export, manifest: dict, out: Path, log) -> dict:
    """Step 6: the manifest written last, and the stage published into the folder in one switch; what
    the previous export wrote (its manifest lists it, with the same bytes) that this one does not list
    is removed, and said; anything else in the folder stays, and what could be an export's file but is
    not the previous export's is named."""
    write_manifest(ex.stage / MANIFEST_NAME, manifest)
    _uniform_modes(ex.stage)
    names = sorted(p.name for p in ex.stage.iterdir() if p.name != MANIFEST_NAME) + [MANIFEST_NAME]
    stale, foreign = stale_names(out, [n for n in possible_names(ex.arch) if n not in names])
    if foreign:
        log(f"left {len(foreign)} file(s) that no mnisttk export listed with these bytes: {', '.join(foreign)}")
    try:
        removed = publish(stage_obj, names, stale)
    except OSError as exc:
        raise ExportError(f"cannot publish into {out} ({exc.strerror or exc}"
                          f"{': ' + Path(exc.filename).name if exc.filename else ''}); "
                          "previous artifacts left as they were") from None
    if removed:  # the manifest no longer lists them: say so rather than delete silently
        log(f"removed the previous export's {', '.join(removed)} (not part of this export's targets)")
    return manifest


def _uniform_modes(stage: Path) -> None:
    """Every file the export writes gets the mode a new file gets here (0666 less the umask): one converter
    (ai-edge-quantizer's int8 .tflite) wrote 0755, an executable bit on a model file. Links are left alone."""
    mask = os.umask(0)
    os.umask(mask)
    for root, _dirs, files in os.walk(stage):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def _checkpoint_copy(checkpoint: Path, sha: str, out: Path, stage: Path, log) -> str | None:
    """The checkpoint travels with the export: its name in the folder, copied into the stage when it
    lives elsewhere (verify's PyTorch eager row reads it from the folder). Never over another file of
    that name the user has there: then it stays out, and verify's reference is reference.npz."""
    import shutil

    name = Path(checkpoint).name
    here = out / name
    try:
        if here.resolve() == Path(checkpoint).resolve():
            return name  # already in the folder
    except (OSError, RuntimeError):
        pass
    from toolkit.config import ARCH_NAMES

    if name in (MANIFEST_NAME, REFERENCE_NAME) or any(name in possible_names(a) for a in ARCH_NAMES) or \
            name.startswith("."):
        log(f"checkpoint {name}: its name is one an export writes; not copied into {out}")
        return None
    if os.path.lexists(here) and not (here.is_file() and not here.is_symlink() and sha256_file(here) == sha):
        log(f"checkpoint not copied: {here} is another file (left as it was); verify's reference will be "
            "reference.npz")
        return None
    shutil.copyfile(checkpoint, stage / name)
    return name


def stale_names(out: Path, candidates: list[str]) -> tuple[list[str], list[str]]:
    """(names to remove, names to leave) among `candidates` present in `out`: a name is removed only when
    the folder's previous manifest lists it and every file under it still has the size and SHA-256 that
    manifest recorded (a folder: every file in it listed, no link anywhere). The user's own files with an
    export's names, and files changed since, are left."""
    present = [n for n in candidates if os.path.lexists(out / n)]
    if not present:
        return [], []
    listed = _previous_files(out)
    remove: list[str] = []
    leave: list[str] = []
    for name in present:
        path = out / name
        if path.is_symlink():
            leave.append(name)
        elif path.is_dir():
            files = [p for p in path.rglob("*")]
            rels = [p.relative_to(out).as_posix() for p in files if not p.is_dir() or p.is_symlink()]
            ok = bool(rels) and not any(p.is_symlink() for p in files) and all(_unchanged(out, r, listed) for r in rels)
            (remove if ok else leave).append(name)
        else:
            (remove if _unchanged(out, name, listed) else leave).append(name)
    return remove, leave


def _previous_files(out: Path) -> dict:
    """relative path -> (size, SHA-256) of every file the folder's current manifest lists (artifacts and
    support files); empty where there is no readable manifest of ours."""
    from toolkit.manifest import MAX_MANIFEST_BYTES

    path = out / MANIFEST_NAME
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_MANIFEST_BYTES:
            return {}
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    out_files = {}
    for group in ("artifacts", "support_files"):
        entries = doc.get(group)
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("sha256"), str) and \
                    isinstance(e.get("size_bytes"), int):
                out_files[e["file"]] = (e["size_bytes"], e["sha256"])
    return out_files


def _unchanged(out: Path, rel: str, listed: dict) -> bool:
    """Whether `rel` is a regular file with the size and SHA-256 the previous manifest listed."""
    import stat

    if rel not in listed:
        return False
    size, sha = listed[rel]
    try:
        st = (out / rel).lstat()
        return stat.S_ISREG(st.st_mode) and st.st_size == size and sha256_file(out / rel, size) == sha
    except OSError:  # gone, unreadable, or grew while read: not provably the previous export's
        return False


OOD_CALIBRATION_IMAGES = 5000  # training digits the not-a-digit rule is calibrated on (seeded choice)


def _calibrate_ood(model, train_images: np.ndarray, keep: float, classes: tuple | None = None,
                   preprocessing: str | None = None) -> dict:
    """The not-a-digit rule from training digits only (never the test set, never non-digits)."""
    n = min(OOD_CALIBRATION_IMAGES, len(train_images))
    idx = np.sort(np.random.default_rng(0).choice(len(train_images), n, replace=False))
    images = train_images[idx]
    return ood.calibrate(images, _eager_logits(model, to_model_input(images)), keep=keep, classes=classes,
                         preprocessing=preprocessing)


def _calibration_method(fmt: str, quant) -> str:
    """The words the manifest records for an int8 artifact that export writes itself (ONNX and the
    targets made from it, TorchScript); the other exporters state their own."""
    if BY_NAME[fmt].calibration_by == "torch.ao":
        return "minmax: torch.ao's MinMaxObserver on every activation over all the calibration images"
    return {"minmax": "minmax: ONNX Runtime's MinMax calibration (each tensor's min and max over all the "
                      "calibration images)",
            "entropy": "entropy: ONNX Runtime's Entropy calibration (KL-divergence thresholds: may clip outliers)",
            "percentile": f"percentile: ONNX Runtime's Percentile calibration ({quant.percentile:g}th percentile: "
                          "clips the tails)"}[quant.method]
