"""LiteRT (`.tflite`) models: the PyTorch model converted by litert-torch; with --quantize, static
int8 by ai-edge-quantizer's `static_wi8_ai8` recipe (int8 per-channel weights, int8 activations,
int8 input and output), calibrated on the same training images as every other int8 artifact.

litert-torch bakes the batch into the graph's reshapes (a dynamic-batch file converts but fails
to run, on XNNPACK and on the builtin kernels alike), so each precision gets one file per batch
size: `<arch>_<p>.tflite` at batch 1 (the artifact: latency, predict) and `<arch>_<p>.b256.tflite`
at batch 256 (throughput and bulk runs). Both int8 files share one calibration."""

from __future__ import annotations

from pathlib import Path

from toolkit.exporters import Artifact, Sources, Written
from toolkit.quietfd import native_output_captured

BATCHES = (1, 256)  # verify's latency batch and its throughput batch


def file_name(arch: str, precision: str, batch: int) -> str:
    return f"{arch}_{precision}.tflite" if batch == 1 else f"{arch}_{precision}.b{batch}.tflite"


def convert(model, example, path: Path) -> None:
    import litert_torch

    litert_torch.convert(model, (example,)).export(str(path))


CALIBRATION = ("minmax: every tensor's min and max over all the calibration images (ai-edge-quantizer, "
               "one calibration per chunk of the largest batch file, the ranges merged)")


def calibrate(float_paths: dict, calib) -> dict:
    """{tensor: {'min', 'max', 'num_samples'}} covering every calibration image. ai-edge-quantizer keeps a
    moving average (0.95) of each sample's min/max across samples, which converges to typical per-sample
    extremes, not the set's: one image a step left the int8 output able to hold logits in [-16.0, 10.3]
    where the test set's reach [-42.7, 22.8] (56% of top logits clipped). So each chunk of the largest
    batch file is calibrated on its own (one sample: its true min/max) and the chunks' ranges merged."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    batch = max(float_paths)
    path = float_paths[batch]
    signatures = Interpreter(model_path=str(path)).get_signature_list()
    (signature, spec), = signatures.items()
    (input_name,) = spec["inputs"]
    merged: dict = {}
    for start in range(0, len(calib), batch):
        # the last chunk is filled up with calibration images again: repeats move no min or max
        chunk = calib[(start + np.arange(batch)) % len(calib)] if start + batch > len(calib) else calib[start:start + batch]
        q = quantizer.Quantizer(str(path))
        q.load_quantization_recipe(recipe.static_wi8_ai8())
        for name, qsv in q.calibrate({signature: [{input_name: chunk}]}, num_threads=1).items():
            if name not in merged:
                merged[name] = dict(qsv)
            else:
                merged[name]["min"] = np.minimum(merged[name]["min"], qsv["min"])
                merged[name]["max"] = np.maximum(merged[name]["max"], qsv["max"])
    for qsv in merged.values():
        if "num_samples" in qsv:
            qsv["num_samples"] = np.asarray(len(calib))
    return merged


def quantize(float_paths: dict, out_paths: dict, calib) -> None:
    """float_paths/out_paths: batch -> path. One calibration (calibrate) shared by every batch file: the
    tensors have the same names in each."""
    from ai_edge_quantizer import quantizer, recipe

    calibration = calibrate(float_paths, calib)
    for batch, path in float_paths.items():
        q = quantizer.Quantizer(str(path))
        q.load_quantization_recipe(recipe.static_wi8_ai8())
        q.quantize(calibration, enable_progress_bar=False, enable_progress_report=False).export_model(
            str(out_paths[batch]), overwrite=True)


def export_tflite(src: Sources) -> Written:
    from toolkit.fsutil import sha256_file
    from toolkit.runtimes.litert import Program, delegation
    from toolkit.scoped import environ

    written = Written()
    paths = {p: {b: src.stage / file_name(src.arch, p, b) for b in BATCHES} for p in ("fp32", "int8")}
    with native_output_captured(), environ("LITERT_TORCH_SHOW_PROGRESS", "n"):
        for batch, path in paths["fp32"].items():  # int8 is quantized from the fp32 files
            convert(src.model, src.example(batch), path)
        if "int8" in src.precisions:
            quantize(paths["fp32"], paths["int8"], src.calib)
    for precision in src.precisions:
        files = paths[precision]
        rel = files[1].name
        variants = []
        for batch in BATCHES[1:]:
            variants.append({"batch": batch, "file": files[batch].name, "sha256": sha256_file(files[batch])})
            written.support.append((files[batch].name, f"{rel} at batch {batch} (LiteRT files have a static batch)"))
        program = Program(files[1].read_bytes(), 1, rel)
        inp = program.inp
        dtype = str(program.dtype)
        scale, zero = inp["quantization"]
        values = ("pixel/255 in [0, 1]" if dtype == "float32"
                  else f"round(pixel/255/{scale:.9g}) + {zero} (the model's input quantization)")
        written.top_level += [files[b].name for b in BATCHES]
        written.artifacts.append(Artifact("tflite", precision, rel, fields={
            "inputs": [{"name": str(inp["name"]), "dtype": dtype, "shape": [int(d) for d in inp["shape"]],
                        "values": values}],
            # the program's own output shape (its class count), never a constant: a 3-class model says [1, 3]
            "outputs": [{"name": "logits", "dtype": str(program.out["dtype"].__name__),
                         "shape": [int(d) for d in program.out["shape"]]}],
            "static_batch": 1, "batch_files": variants, "delegation": delegation(program.it),
            **({"calibration_method": CALIBRATION} if precision == "int8" else {})}))
    return written
