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


@click.command(short_help='Digits from image files or folders (torch-free).')
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("exported/cnn_int8.onnx"), show_default=True,
              help="ONNX or ORT-format model (int8 or fp32), or a batch-1 LiteRT .tflite (needs mnisttk[litert]).")
@click.option("--device", "provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider; cuda fails (never silently runs on the CPU) if it cannot start.")
@click.option("--as-is", is_flag=True,
              help="Feed inputs of the model's own size as they are (no crop, scale or centring).")
@click.option("--preprocess", "preprocessing", type=click.Choice(["digit", "plain", "resize"]), default=None,
              help="digit: MNIST's ink crop and centring; plain: the whole picture resized to 28×28; resize: the "
                   "picture as it is, resized to the model's input. Default: what the export recorded (digit where "
                   "it recorded nothing; resize for a model not of 28×28 grey input).")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=None,
              help="Mark predictions whose probability is below this (text and JSON); default off.")
@click.option("--recursive", "-r", is_flag=True, help="Folders: take the images in sub-folders too.")
@click.option("--save-preprocessed", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the images the model was fed (PNG, at its input size) into this folder.")
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
    from toolkit import predict as run

    check_outputs([("--json", json_out, "json")], [model_path, *images])
    options = run.PredictOptions(provider=provider, as_is=as_is, preprocessing=preprocessing,
                                 min_confidence=min_confidence, recursive=recursive, save_dir=save_preprocessed,
                                 timeout_s=timeout, accept_all=accept_all)
    doc = run.predict([str(p) for p in images], model_path, options=options, log=log)
    emit_json(doc, json_out)
    for r in doc["results"]:
        if "error" in r:
            click.echo(f"Error: {printable(run.describe(r))}", err=True)
        elif not json_to_stdout(json_out):
            click.echo(printable(run.describe(r)))
    sys.exit(run.exit_code(doc["results"]))
