"""`mnisttk predict`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from toolkit.clikit import (
    check_outputs,
    emit_json,
    json_option,
    json_to_stdout,
    log,
    merge_old_spellings,
    old_spelling,
    printable,
    quiet_option,
    toolkit_errors,
)
from toolkit.errors import ToolkitError


@click.command(short_help='Digits from image files or folders (torch-free).')
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("exported/cnn_int8.onnx"), show_default=True,
              help="ONNX or ORT-format model (int8 or fp32), or a batch-1 LiteRT .tflite (needs mnisttk[litert]).")
@click.option("--device", "provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider; cuda fails (never silently runs on the CPU) if it cannot start.")
@click.option("--as-is", is_flag=True,
              help="Feed 28×28 inputs as they are (no MNIST crop/scale/centring even when they are not MNIST-like).")
@click.option("--preprocess", "preprocessing", type=click.Choice(["digit", "plain"]), default=None,
              help="digit: MNIST's ink crop and centring; plain: the whole picture resized. Default: what the export "
                   "recorded (digit where it recorded nothing).")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=None,
              help="Mark predictions whose probability is below this (text and JSON); default off.")
@click.option("--recursive", "-r", is_flag=True, help="Folders: take the images in sub-folders too.")
@click.option("--save-preprocessed", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the 28×28 images the model was fed (PNG) into this folder.")
@click.option("--accept-all", is_flag=True,
              help="Give every image a digit: switch off the not-a-digit rule (exit 3 then never happens).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
              help="Seconds the model may take on all the images; a model over it (a hung runtime) is an error.")
@json_option("The results")
@quiet_option
@old_spelling("--provider", "provider", type=click.Choice(["cpu", "cuda"]))
@toolkit_errors
@merge_old_spellings
def predict(images, model_path, provider, json_out, as_is=False, min_confidence=None, recursive=False, preprocessing=None,
            save_preprocessed=None, timeout=120.0, accept_all=False):
    """Predict the digit in each image (PNG, JPEG, BMP, GIF, TIFF, WebP, PGM of any size and mode, or .npy;
    a folder means its images). Torch-free. "not a digit" is an answer: an image the export's rule
    (calibrated on MNIST digits) rejects is reported so, with the checks it failed. Exit 0 when every
    image got a digit, 3 when some were not digits, 1 when a file could not be read (the others are
    still predicted).

    \b
    Example:
        mnisttk predict digit.png scan.jpg sample.npy --json
        mnisttk predict scans/ --recursive --save-preprocessed seen/
    """
    from toolkit.predict import expand_inputs, predict_files, predictable_kind

    kind = predictable_kind(model_path)  # before any image is read: FIFOs, .pte, giants refused in one line
    if kind == "tflite" and provider != "cpu":
        raise ToolkitError(f"{model_path}: a LiteRT model runs on the CPU here; leave out --device {provider}")
    check_outputs([("--json", json_out, "json")], [model_path, *images])
    if provider == "cuda":
        from toolkit.runtimes.ort_session import select_provider

        select_provider("cuda")  # no CUDA here: one line now, not after reading the images
    if save_preprocessed is not None:
        from toolkit.fsutil import check_writable_dir

        try:
            check_writable_dir(save_preprocessed)
        except OSError as exc:
            raise ToolkitError(f"cannot write to {save_preprocessed}: {exc.strerror or exc}") from None
    files = expand_inputs([str(p) for p in images], recursive)
    # The model runs in a child process with a time and memory bound (toolkit.isolate): a hostile
    # model that hangs or aborts is one Error line, not a hung or crashed predict.
    from toolkit import isolate
    from toolkit.predict import model_logits

    def in_child(batch):
        return isolate.call(model_logits, str(model_path), kind, provider, batch, timeout_s=timeout,
                            memory_mb=None if provider == "cuda" else 4096, what=f"the model {model_path}")

    _, sha, metadata = in_child(None)  # a model that cannot load fails before any image is read
    loaded = {"sha256": sha}
    from toolkit.predict import find_rule

    found, source = find_rule(model_path, sha, metadata)
    classes = tuple(found["classes"]) if found and "classes" in found else None  # the dataset's class names
    rule, source = (None, "switched off (--accept-all)") if accept_all else (found, source)
    how = preprocessing or (found or {}).get("preprocessing", "digit")  # what the export recorded, by default
    if rule is None and not accept_all:
        log(f"predict: no not-a-digit rule ({source}): every readable image gets a digit")

    def logits(batch):
        out, loaded["sha256"] = in_child(batch)
        return out

    results = predict_files(files, logits, as_is=as_is, min_confidence=min_confidence, save_dir=save_preprocessed,
                            rule=rule, classes=classes,
                            preprocessing=how)
    emit_json({"schema_version": 1, "model": str(model_path), "model_sha256": loaded.get("sha256"),
               "provider": provider, "preprocessing": "as-is" if as_is else how,
               "not_a_digit_rule": source if rule is None else f"from {source}",
               "results": results}, json_out)
    for r in results:
        if "error" in r:
            click.echo(f"Error: {printable(r['error'])}", err=True)
        elif not json_to_stdout(json_out):
            low = ", low confidence" if r.get("low_confidence") else ""
            if r["status"] == "not_a_digit":
                def lim(v):
                    return f"[{v[0]:.3g}, {v[1]:.3g}]" if isinstance(v, list) else f"{v:.3g}"

                # one line per file: the first failed check with its value, the others by name (all: --json)
                failed = r["not_a_digit"]["failed"]
                why = "; ".join(f"{c['check']} {c['value']:.3g} not {c['rule']} {lim(c['limit'])}" for c in failed[:1])
                more = f"; also {', '.join(c['check'] for c in failed[1:])}" if len(failed) > 1 else ""
                n = len(r["probabilities"])
                what = "a digit" if r["label"] == str(r["digit"]) and n == 10 else f"one of the {n} classes"
                click.echo(f"{printable(r['file'])}: not {what} ({why}{more}; best guess {printable(r['label'])})")
            else:
                click.echo(f"{printable(r['file'])}: {printable(r['label'])} (p={r['probability']:.3f}{low})")
    errors = any("error" in r for r in results)
    sys.exit(1 if errors else 3 if any(r.get("status") == "not_a_digit" for r in results) else 0)
