"""`mnisttk export`: TorchScript and ONNX artifacts, int8 variants, reference and manifest.

Everything is written into a staging folder first and moved into place at the end,
the manifest last: a failed or interrupted export leaves the previous artifacts as
they were.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from toolkit import __version__, ood
from toolkit.checkpoint import load_checkpoint, model_from_checkpoint
from toolkit.config import FORMATS, ExportConfig, Gates  # noqa: F401  (ExportConfig: this module's API)
from toolkit.gates import Measurement, evaluate
from toolkit.targets import BY_NAME
from toolkit.contract import EVAL_BATCH, batched
from toolkit.data import MNIST, to_model_input
from toolkit.env import library_versions
from toolkit.errors import ExportError, first_line
from toolkit.exporters import Sources, exporter, missing_dependency
from toolkit.exporters import onnx as onnx_exporter
from toolkit.exporters import torchscript as ts_exporter
from toolkit.fsutil import check_writable_dir, sha256_file
from toolkit.manifest import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    REFERENCE_NAME,
    artifact_entry,
    machine_info,
    targets_for,
    write_manifest,
)
from toolkit.metrics import classification_metrics
from toolkit.publish import FolderBusy, Stage, lock_folder, publish, recover
from toolkit.quantize import calibration_indices, indices_sha256

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


def _artifact_logits(fmt: str, precision: str, path: Path, images_u8: np.ndarray, test_x: np.ndarray,
                     extra: dict | None = None) -> np.ndarray:
    """An artifact's test logits, from the runtime it ships to (ONNX Runtime for .onnx/.ort, LiteRT,
    ExecuTorch; verify's own candidates)."""
    if fmt == "torchscript":
        return _eager_logits(ts_exporter.load(path), test_x, path.name)
    if fmt in ("tflite", "executorch"):
        from toolkit.runtimes import RUNTIMES, build

        spec = next(s for s in RUNTIMES if fmt in s.formats)
        artifact = {"file": path.name, "format": fmt, "precision": precision, "sha256": None, **(extra or {})}
        logits = build(spec, path.parent, artifact, 0).logits(images_u8)
    else:
        from toolkit.runtime import Model

        logits = Model(path, "cpu").logits(images_u8)
    _check_finite(path.name, logits)
    return logits


def run_export(config: ExportConfig, data: MNIST, log: Callable[[str], None] = lambda s: None) -> dict:
    ckpt = load_checkpoint(config.checkpoint)
    model = model_from_checkpoint(ckpt, str(config.checkpoint))
    arch = ckpt["arch"]
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


def _export_locked(config: ExportConfig, data: MNIST, model, ckpt: dict, arch: str, indices, out: Path,
                   log: Callable[[str], None]) -> dict:
    test_x = to_model_input(data.test_images)
    labels = data.test_labels.astype(np.int64)
    ref_logits = _eager_logits(model, test_x)
    ckpt_sha = sha256_file(config.checkpoint)
    test_acc = ckpt.get("metrics", {}).get("test", {}).get("accuracy")
    metadata = {"arch": arch, "checkpoint_test_accuracy": test_acc, "mnisttk_version": __version__,
                "checkpoint_sha256": ckpt_sha}
    # "not a digit": the rule calibrated on training digits only, in the manifest and in each ONNX
    # file's metadata (mnisttk_ood), so an integrator applies the same rule; the reference keeps the
    # float model's logits on the synthetic non-digits, for verify's int8 accept/reject agreement
    ood_rule = _calibrate_ood(model, data.train_images)
    metadata["mnisttk_ood"] = json.dumps(ood_rule, separators=(",", ":"))
    non_digit_logits = _eager_logits(model, to_model_input(ood.non_digit_images()))

    stage_obj = Stage(out)
    stage = stage_obj.new
    formats = config.formats
    try:
        t0 = time.perf_counter()
        # fp32 first: (format, precision, path relative to the stage, quant params) each
        artifacts = ts_exporter.export_fp32(model, stage, arch, torch.from_numpy(test_x[:2])) if "torchscript" in formats else []
        artifacts += onnx_exporter.export_fp32(model, stage, arch, metadata)  # always: the source of the rest
        test_logits = {rel: _artifact_logits(fmt, p, stage / rel, data.test_images, test_x) for fmt, p, rel, _ in artifacts}
        checks = [_compare(rel, test_logits[rel], ref_logits) for _, _, rel, _ in artifacts]
        log(f"fp32 exported and checked against PyTorch eager on {len(labels)} test images ({time.perf_counter() - t0:.1f} s)")
        for c in checks:
            _check_parity(c, config.gates)

        quant_info, calib, quant, search = None, None, config.quant, None
        onnx_files = {"fp32": stage / f"{arch}_fp32.onnx"}
        if config.quantize:
            t0 = time.perf_counter()
            calib = to_model_input(data.train_images[indices])
            if config.search:
                from toolkit.search import format_search, run_search

                search = run_search(stage / f"{arch}_fp32.onnx", calib, quant, data.test_images, labels, ref_logits,
                                    gates=config.gates, log=log)
                quant = search.pop("chosen")
                log("search (ONNX Runtime CPU, 1 thread; each candidate on the full test set):\n" + format_search(search))
            artifacts += onnx_exporter.export_int8(stage, arch, calib, quant, metadata)
            onnx_files["int8"] = stage / f"{arch}_int8.onnx"
            if "torchscript" in formats:
                artifacts += ts_exporter.export_int8(model, stage, arch, calib, config.quant)
            quant_info = {**quant.to_dict(), "split": "train", "calibration_indices_sha256": indices_sha256(indices)}
            log(f"int8 quantized, calibrated on {len(indices)} training images ({time.perf_counter() - t0:.1f} s)")

        # The other targets, one exporter each (from the staged ONNX models or the PyTorch model).
        support, extras = [], {}
        sources = Sources(stage, arch, onnx_files, model, calib if config.quantize else None)
        for fmt in (f for f in FORMATS if f in formats and BY_NAME[f].exporter is not None):
            t0 = time.perf_counter()
            written = exporter(fmt)(sources)
            extras.update(written.extra)
            for wfmt, precision, rel, source in written.models:
                artifacts.append((wfmt, precision, rel, next((q for _, _, r, q in artifacts if r == source), None)))
                if wfmt == "triton" and source in test_logits:  # the very bytes of the ONNX model
                    test_logits[rel] = test_logits[source]
                if precision == "fp32" and wfmt in ("tflite", "executorch"):  # converted from PyTorch: same parity bar
                    test_logits[rel] = _artifact_logits(wfmt, precision, stage / rel, data.test_images, test_x,
                                                       written.extra.get(rel))
                    checks.append(_compare(rel, test_logits[rel], ref_logits))
                    _check_parity(checks[-1], config.gates)
            support += written.support
            log(f"{fmt}: {', '.join(m[2] for m in written.models)} ({time.perf_counter() - t0:.1f} s)")

        # Test-set accuracy of every artifact, recorded in the manifest.
        accuracy = {}
        for fmt, precision, rel, _ in artifacts:
            if rel not in test_logits:
                test_logits[rel] = _artifact_logits(fmt, precision, stage / rel, data.test_images, test_x,
                                                    extras.get(rel))
            accuracy[rel] = classification_metrics(labels, test_logits[rel].argmax(1))["accuracy"]

        np.savez_compressed(stage / REFERENCE_NAME, logits=ref_logits.astype(np.float32), labels=labels,
                            test_sha256=np.array(data.sha256["test"]), arch=np.array(arch),
                            non_digit_logits=non_digit_logits.astype(np.float32))
        targets = targets_for(formats, config.quantize)
        for fmt, precision, rel, _ in artifacts:  # how each int8 artifact was calibrated, in the manifest
            if precision == "int8" and "calibration_method" not in extras.get(rel, {}):
                extras.setdefault(rel, {})["calibration_method"] = _calibration_method(fmt, quant)
        manifest = {
            "schema_version": MANIFEST_VERSION,
            "mnisttk_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "arch": arch,
            "checkpoint": {"path": str(config.checkpoint), "sha256": ckpt_sha, "test_accuracy": test_acc},
            "reference": {"file": REFERENCE_NAME, "sha256": sha256_file(stage / REFERENCE_NAME),
                          "pytorch_fp32_test_accuracy": classification_metrics(labels, ref_logits.argmax(1))["accuracy"],
                          "test_sha256": data.sha256["test"]},
            "artifacts": [artifact_entry(stage / rel, fmt, precision, qparams, OPSET if fmt != "torchscript" else None,
                                         accuracy[rel], config.quant.uint8_input and fmt != "torchscript" and precision == "int8",
                                         file=rel, extra=extras.get(rel))
                          for fmt, precision, rel, qparams in artifacts],
            "support_files": [{"file": rel, "sha256": sha256_file(stage / rel), "size_bytes": (stage / rel).stat().st_size,
                               "role": role} for rel, role in support],
            "targets": targets,  # what this export was asked for: verify fails if any is missing
            "fp32_parity": checks,
            "calibration": quant_info,
            "search": search,  # export --search: every candidate measured, the chosen one marked
            "ood": ood_rule,  # predict's not-a-digit rule (toolkit.ood), calibrated on training digits
            "versions": library_versions(),
            "machine": machine_info(torch.cuda.get_device_name() if torch.cuda.is_available() else None),
        }
        write_manifest(stage / MANIFEST_NAME, manifest)
        names = sorted(p.name for p in stage.iterdir() if p.name != MANIFEST_NAME) + [MANIFEST_NAME]
        # what an earlier export may have left that this manifest does not list
        stale = [n for n in _possible_names(arch) if n not in names]
        try:
            removed = publish(stage_obj, names, stale)
        except OSError as exc:
            raise ExportError(f"cannot publish into {out} ({exc.strerror or exc}"
                              f"{': ' + Path(exc.filename).name if exc.filename else ''}); "
                              "previous artifacts left as they were") from None
        if removed:  # the manifest no longer lists them: say so rather than delete silently
            log(f"removed the previous export's {', '.join(removed)} (not part of this export's targets)")
        return manifest
    except ExportError:
        raise
    except KeyboardInterrupt:
        if stage_obj.published:  # Ctrl-C is held back while publishing: it landed after the switch
            raise ExportError(f"interrupted after publishing: the new export in {out} is complete") from None
        raise ExportError(f"interrupted before publishing: the previous export in {out} was left as it was "
                          "(nothing was changed)") from None
    except OSError as exc:  # a full disk, a read-only folder: one line
        raise ExportError(f"export failed, previous artifacts left as they were: {exc.strerror or exc}") from None
    except Exception as exc:  # exporter/quantizer internals: one line, nothing half-written
        raise ExportError(f"export failed, previous artifacts left as they were: {type(exc).__name__}: "
                          f"{first_line(exc, 200)}") from None
    finally:
        stage_obj.close()


OOD_CALIBRATION_IMAGES = 5000  # training digits the not-a-digit rule is calibrated on (seeded choice)


def _calibrate_ood(model, train_images: np.ndarray) -> dict:
    """The not-a-digit rule from training digits only (never the test set, never non-digits)."""
    n = min(OOD_CALIBRATION_IMAGES, len(train_images))
    idx = np.sort(np.random.default_rng(0).choice(len(train_images), n, replace=False))
    images = train_images[idx]
    return ood.calibrate(images, _eager_logits(model, to_model_input(images)))


def _calibration_method(fmt: str, quant) -> str:
    """The words the manifest records for an int8 artifact that export writes itself (ONNX and the
    targets made from it, TorchScript); the other exporters state their own."""
    if fmt == "torchscript":
        return "minmax: torch.ao's MinMaxObserver on every activation over all the calibration images"
    return {"minmax": "minmax: ONNX Runtime's MinMax calibration (each tensor's min and max over all the "
                      "calibration images)",
            "entropy": "entropy: ONNX Runtime's Entropy calibration (KL-divergence thresholds: may clip outliers)",
            "percentile": f"percentile: ONNX Runtime's Percentile calibration ({quant.percentile:g}th percentile: "
                          "clips the tails)"}[quant.method]


def _possible_names(arch: str) -> list[str]:
    """Every top-level name an export of `arch` can write (for removing what a new export does not)."""
    from toolkit.exporters.ort import CONFIG_NAME
    from toolkit.exporters.tflite import BATCHES, file_name
    from toolkit.exporters.triton import REPOSITORY

    return [f"{arch}_{p}{suffix}" for p in ("fp32", "int8") for suffix in (".onnx", ".torchscript.pt", ".ort", ".pte")] + [
        file_name(arch, p, b) for p in ("fp32", "int8") for b in BATCHES] + [CONFIG_NAME, REPOSITORY]
