"""The thin click layer: options map onto library calls; ToolkitError becomes one line.

Torch-side modules are imported inside the commands that need them, so that
`mnisttk verify` and `mnisttk predict` run where only onnxruntime and numpy exist.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

# torch's C++ side warns (e.g. that quantized tensors are deprecated) on stderr at every
# TorchScript int8 load; users can do nothing about it. Must be set before torch loads.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import click

from toolkit import __version__
from toolkit.config import ARCH_NAMES, METHODS, ExportConfig, Gates, QuantConfig, TrainConfig, VerifyConfig
from toolkit.errors import ToolkitError
from toolkit.fsutil import json_safe
from toolkit.runtimes import RUNTIMES
from toolkit.targets import KNOWN_TARGETS, TARGETS

TRAIN, EXPORT, QUANT = TrainConfig(), ExportConfig(), QuantConfig()  # the option defaults: one source


GATES, VERIFY = Gates(), VerifyConfig()


TRAIN_STACK = {"torch", "torchvision", "onnx", "onnxscript", "tqdm"}  # the [train] extra


_QUIET = False  # -q/--quiet on any verb: no logs (errors and results still shown)


def log(message: str) -> None:
    """Logs and progress go to stderr; results go to stdout."""
    if not _QUIET:
        click.echo(message, err=True)


def quiet_option(func):
    def set_quiet(ctx, param, value):
        global _QUIET
        _QUIET = bool(value)
        return value

    return click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True, callback=set_quiet,
                        help="No logs or progress bars on stderr (errors and results still shown).")(func)


def old_spelling(old: str, dest: str, **kwargs):
    """An option's previous name, kept hidden for one release: it sets `dest` like the new one."""
    return click.option(old, f"{dest}__old", hidden=True, default=None, **kwargs)


def merge_old_spellings(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        for key in [k for k in kwargs if k.endswith("__old")]:
            value = kwargs.pop(key)
            if value not in (None, ()):
                kwargs[key[: -len("__old")]] = value
        return func(*args, **kwargs)

    return wrapper


def toolkit_errors(func):
    """Turn library errors into `Error: …` (exit 1) at the edge."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ToolkitError, ModuleNotFoundError, KeyboardInterrupt, OSError) as exc:
            _debug_traceback(exc)
            return _one_line(exc)

    return wrapper


def _debug_traceback(exc: BaseException) -> None:
    """MNISTTK_DEBUG=1: the whole chain behind an `Error:` line (what `from None` hides included) on
    stderr, for a bug report; the one line follows as always."""
    if os.environ.get("MNISTTK_DEBUG") != "1":
        return
    import traceback

    seen: set = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # the context `from None` suppressed, shown again
        seen.add(id(e))
        e.__suppress_context__ = False
        e = e.__cause__ or e.__context__
    click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)


def _one_line(exc: BaseException):
    """A caught error as click's one `Error:` line (exit 1)."""
    if isinstance(exc, ToolkitError):
        raise click.ClickException(printable(str(exc))) from None
    if isinstance(exc, ModuleNotFoundError):  # an edge install (no [train] extra) asked to train or export
        if (exc.name or "").split(".")[0] not in TRAIN_STACK:
            raise exc
        raise click.ClickException(
            f"`mnisttk {click.get_current_context().info_name}` needs the training stack ({exc.name} is not "
            "installed): pip install 'mnisttk[train]' (`mnisttk env` shows what is here)") from None
    if isinstance(exc, KeyboardInterrupt):
        raise click.ClickException("interrupted; existing files were left as they were") from None
    assert isinstance(exc, OSError)  # a name too long, a folder gone mid-run: one line, never a traceback
    where = f"{exc.filename}: " if exc.filename else ""
    raise click.ClickException(printable(f"{where}{exc.strerror or exc}")) from None


def printable(text: str) -> str:
    """Control characters shown as escapes: a file name holding a newline or ESC[2K cannot forge a
    line of output or erase one on a terminal."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


# What an output option must never overwrite: an input by its kind (an image, a model, an array).
INPUT_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".npy", ".npz",
                  ".onnx", ".ort", ".tflite", ".pte", ".pt", ".pth"}
MAX_REPORT_BYTES = 64 * 1024 * 1024  # an existing --json file larger than this is not a report of ours


def check_outputs(outputs: list, protected: tuple | list = ()) -> None:
    """Before any work: each (option, path, kind) output is a file that can be written, and never an
    input. `protected`: paths the verb reads (images, a model, an export's listed files). kind: "json",
    "markdown" or "png". A path in a folder that does not exist is refused (no folder tree is made)."""
    resolved = set()
    for p in protected:
        try:
            resolved.add(Path(p).resolve())
        except (OSError, RuntimeError):
            pass
    for option, path, kind in outputs:
        if path is None or str(path) == "-":
            continue
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in INPUT_SUFFIXES and suffix != f".{kind}":  # a .png plot may replace a .png plot
            raise click.UsageError(f"{option} {path}: names an input file (a {suffix} file), not a {kind} report "
                                   f"to write; write {option}=FILE, or put {option} after the inputs")
        try:
            if path.resolve() in resolved:
                raise click.UsageError(f"{option} {path}: is one of this command's inputs; it will not be overwritten")
        except (OSError, RuntimeError):
            pass
        if kind == "json" and path.is_file():
            try:
                with open(path, "rb") as f:
                    json.loads(f.read(MAX_REPORT_BYTES + 1)[:MAX_REPORT_BYTES])
            except (ValueError, OSError, RecursionError):  # deeply nested JSON: not a report of ours either
                raise ToolkitError(f"{option} {path}: exists and is not a JSON file; refusing to overwrite it "
                                   "(remove it, or choose another name)") from None
        _check_output_path(path)


def gate_options(func=None, *, clipped: bool = True):
    """verify's gates, one set of options wherever they apply (verify; export: fp32 parity and --search;
    compare, which has no int8 output to inspect: clipped=False)."""
    if func is None:
        return functools.partial(gate_options, clipped=clipped)
    options = (
        click.option("--fp32-atol", type=click.FloatRange(min=0), default=GATES.fp32_max_abs_logit_diff,
                     show_default=True, help="fp32 max |Δlogit| against the reference."),
        click.option("--int8-max-drop", type=click.FloatRange(min=0), default=GATES.int8_max_drop_points,
                     show_default=True, help="int8 accuracy loss allowed, in points."),
        click.option("--int8-min-agreement", type=click.FloatRange(0, 100), default=GATES.int8_min_agreement_pct,
                     show_default=True, help="int8 top-1 agreement with the reference required, in %."),
        click.option("--int8-max-clipped", type=click.FloatRange(0, 100), default=GATES.int8_max_clipped_top_pct,
                     show_default=True, help="int8 rows with a quantized output: % of images whose top logit may sit "
                                             "at the output's int8 limit (a clipped score)."),
        click.option("--int8-min-ood-agreement", type=click.FloatRange(0, 100),
                     default=GATES.int8_min_ood_agreement_pct, show_default=True,
                     help="int8 rows: % of test images, and of synthetic non-digits, on which the \"not a digit\" "
                          "decision must match the float reference's."),
    )
    for option in reversed(options if clipped else options[:3]):
        func = option(func)
    return func


def data_dir_option(func):
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder with the four MNIST IDX files (default: $MNISTTK_DATA or ~/.cache/mnisttk).",
    )(func)


def _parse_targets(ctx, param, value):
    """--targets: a comma list of formats, or all; anything else is a usage error naming the valid ones."""
    from toolkit.config import FORMATS

    items = [t.strip() for t in (value or "").split(",") if t.strip()]
    if items == ["all"]:
        return FORMATS
    bad = [t for t in items if t not in FORMATS]
    if not items or bad:
        what = f"{bad[0]!r} is not a target" if bad else "no target given"
        raise click.BadParameter(f"{what}; choose from {', '.join(FORMATS)} or all")
    return tuple(f for f in FORMATS if f in items)


def json_option(what: str):
    """One convention for every verb: `--json` (or `--json -`) prints JSON to stdout, `--json FILE`
    writes it (atomically); with JSON on stdout the text report goes to stderr."""
    return click.option("--json", "json_out", is_flag=False, flag_value="-", default=None, metavar="[FILE|-]",
                        help=f"{what} as JSON: to stdout (bare --json, or -) or into FILE.")


def emit_json(obj, dest) -> None:
    text = json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) + "\n"
    if dest is None:
        return
    if str(dest) == "-":
        click.echo(text, nl=False)
        return
    from toolkit.fsutil import atomic_write_bytes

    try:
        atomic_write_bytes(Path(dest), text.encode())
    except OSError as exc:
        raise ToolkitError(f"cannot write {dest}: {exc.strerror or exc}") from None


def json_to_stdout(dest) -> bool:
    return dest is not None and str(dest) == "-"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mnisttk")
def main():
    """mnisttk: train the MNIST CNN, quantize and export it, and prove the deployed
    artifact still matches the float model.

    \b
    Example:
        mnisttk pipeline        # train -> export --quantize -> verify
    """


@main.command(short_help="Find or fetch MNIST; sizes, class counts, SHA-256.")
@data_dir_option
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), help="Write a labelled grid of sample images (PNG).")
@json_option("The summary")
@quiet_option
@toolkit_errors
def data(data_dir, grid, json_out):
    """Find or fetch MNIST and describe it: source, split sizes, class counts, SHA-256.

    \b
    Example:
        mnisttk data --grid samples.png
    """
    from toolkit.data import load_mnist
    from toolkit.datainfo import describe, format_description, write_grid

    check_outputs([("--json", json_out, "json"), ("--grid", grid, "png")])
    mnist = load_mnist(data_dir, log=log)
    info = describe(mnist)
    if grid:
        write_grid(mnist, grid)
        info["grid"] = str(grid)
    emit_json({"schema_version": 1, **info}, json_out)
    if not json_to_stdout(json_out):
        click.echo(format_description(info))


ARCH_HELP = ("cnn (the built-in CNN), mlp (a feed-forward net), or your own: FILE.py:NAME or package.module:NAME, "
             "a class or factory returning an nn.Module that maps N×1×28×28 floats to N×C logits (docs/your-model.md).")


@main.command(short_help="Train the CNN, the MLP or your own model; test-set metrics.")
@click.option("--arch", default=TRAIN.arch, show_default=True, metavar="ARCH", help=ARCH_HELP)
@click.option("--arch-args", default="", metavar="JSON", help="Keyword arguments for your model, a JSON object.")
@click.option("--classes", default=None, metavar="NAMES",
              help="Comma list of class names, label k is the k-th (default: classes.txt beside the data, else 0..C-1).")
@click.option("--epochs", type=click.IntRange(min=1), default=TRAIN.epochs, show_default=True, help="Passes over the training set.")
@click.option("--batch-size", type=click.IntRange(min=1), default=TRAIN.batch_size, show_default=True,
              help="Training batch (the seed's 60).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=TRAIN.lr, show_default=True,
              help="Adam learning rate.")
@click.option("--seed", type=int, default=TRAIN.seed, show_default=True,
              help="Weight initialisation and shuffling (same seed on the CPU: identical weights).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train; auto takes the GPU when torch sees one.")
@data_dir_option
@click.option("--checkpoint", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint path (default: exported/<arch>.pt).")
@json_option("The result")
@quiet_option
@old_spelling("--out", "out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--progress/--no-progress", default=None,
              help="Progress bars (default: only when stderr is a terminal; the per-epoch lines always).")
@click.option("--cuda-graph/--no-cuda-graph", default=True, show_default=True,
              help="On a GPU, capture the training step as a CUDA graph (same math, fewer launches).")
@click.option("--threads", type=click.IntRange(0, os.cpu_count() or 1), default=None,
              help="torch's CPU threads (0: every core). Default: the cores other processes leave idle at start.")
@toolkit_errors
@merge_old_spellings
def train(arch, epochs, batch_size, lr, seed, device, data_dir, out, json_out, cuda_graph, progress=None,
          threads=None, arch_args="", classes=None):
    """Train a model with the seed's recipe (Adam 1e-3, batch 60, 10 epochs) and save a checkpoint.

    \b
    Example:
        mnisttk train --epochs 1 --device cpu
    """
    from toolkit.checkpoint import save_checkpoint
    from toolkit.data import load_mnist
    from toolkit.train import TrainConfig, checkpoint_payload, select_device
    from toolkit.train import train as run_training

    from toolkit.arch import parse

    config = TrainConfig(arch=arch, arch_args=arch_args, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    dev = select_device(device)
    out = out or Path("exported") / f"{parse(arch, arch_args).stem}.pt"
    from toolkit.fsutil import check_writable_dir

    try:
        check_writable_dir(out.parent)
    except OSError as exc:
        raise ToolkitError(f"cannot write to {out.parent}: {exc.strerror or exc}") from None
    check_outputs([("--json", json_out, "json")], [out])
    mnist = load_mnist(data_dir, log=log, classes=classes)
    log(f"data: {mnist.source}, {mnist.num_classes} classes")
    log(f"training {arch} on {dev} ({'GPU' if dev.type == 'cuda' else 'CPU'}): {epochs} epochs, batch {batch_size}, "
        f"Adam lr {lr}, seed {seed}")
    if progress is None:
        progress = sys.stderr.isatty()  # carriage-return frames have no place in a log file
    model, result = run_training(config, mnist, dev, log=log, progress=progress and not _QUIET, cuda_graph=cuda_graph,
                                 threads=threads)
    save_checkpoint(out, checkpoint_payload(model, result))
    result["checkpoint"] = str(out)
    emit_json({"schema_version": 1, **result}, json_out)
    if not json_to_stdout(json_out):
        click.echo(format_train_result(result))


def format_train_result(result: dict) -> str:
    tr, te = result["metrics"]["train"], result["metrics"]["test"]
    epochs = result["recipe"]["epochs"]
    lines = [
        f"{result['arch']}: {result['parameters']:,} parameters, trained on {result['device']} "
        f"in {result['train_seconds']:.1f} s ({result['train_seconds'] / epochs:.1f} s/epoch)",
        f"{'split':<6} {'accuracy':>9} {'macro precision':>16} {'macro recall':>13}",
        f"{'train':<6} {tr['accuracy']:>9.4f} {tr['macro_precision']:>16.4f} {tr['macro_recall']:>13.4f}",
        f"{'TEST':<6} {te['accuracy']:>9.4f} {te['macro_precision']:>16.4f} {te['macro_recall']:>13.4f}",
        "test confusion matrix (rows: true class, columns: predicted):",
    ]
    lines += ["  " + " ".join(f"{v:>5}" for v in row) for row in te["confusion_matrix"]]
    lines.append(f"checkpoint: {result['checkpoint']}")
    return "\n".join(lines)


@main.command(short_help='TorchScript, ONNX and other targets (fp32; int8 with --quantize), reference, manifest.')
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=EXPORT.checkpoint,
              show_default=True, help="Checkpoint from `mnisttk train`.")
@click.option("--dir", "out", type=click.Path(file_okay=False, path_type=Path), default=EXPORT.out, show_default=True,
              help="Folder the artifacts, reference and manifest are published into.")
@click.option("--quantize", is_flag=True, help="Also write a static int8 model of every target asked for.")
@click.option("--calibration-size", type=click.IntRange(min=1), default=QUANT.calibration_size, show_default=True,
              help="Training images used to calibrate (never test images).")
@click.option("--calibration-method", type=click.Choice(METHODS), default=QUANT.method, show_default=True,
              help="How activation ranges are set from the calibration images.")
@click.option("--calibration-percentile", "percentile", type=click.FloatRange(0, 100, min_open=True),
              default=QUANT.percentile, show_default=True,
              help="With --calibration-method percentile: the percentile of |activation| each range keeps.")
@click.option("--per-channel/--per-tensor", default=QUANT.per_channel, show_default=True,
              help="Weight scales per output channel or per tensor.")
@click.option("--format", "quant_format", type=click.Choice(["qdq", "qoperator"]), default=QUANT.quant_format,
              show_default=True, help="ONNX int8 graph format.")
@click.option("--activation-type", type=click.Choice(["uint8", "int8"]), default=QUANT.activation_type, show_default=True,
              help="int8 ONNX activations: uint8 (U8S8 kernels, fastest on x86) or int8.")
@click.option("--float-input", is_flag=True, help="Int8 ONNX takes float32 pixel/255 like fp32 (default: raw uint8 pixels).")
@click.option("--first-conv", type=click.Choice(["fp32", "im2col", "int8"]), default=QUANT.first_conv, show_default=True,
              help="How the int8 ONNX runs the 1-channel first conv: left in fp32 (fastest), im2col (qdq only), int8.")
@click.option("--reduce-range/--full-range", default=None,
              help="7-bit int8 weights (for AVX2-only CPUs without VNNI). Default: only when this CPU lacks VNNI.")
@click.option("--calibration-seed", "seed", type=int, default=QUANT.seed, show_default=True,
              help="Which training images calibrate.")
@click.option("--targets", "targets", default=",".join(EXPORT.formats), show_default=True, callback=_parse_targets,
              help="Comma list of formats: " + ", ".join(f"{t.name} ({t.label}" + (f"; mnisttk[{t.extra}])" if t.extra else ")")
                                                         for t in TARGETS) + ", or all. onnx is always written.")
@click.option("--search", is_flag=True,
              help="With --quantize: try every per-layer precision (first conv fp32/im2col/int8, each later layer "
                   "int8/fp32), score each on the test set under verify's gates, time it, keep the fastest that passes.")
@click.option("--keep-fp32", "keep_fp32", default="", metavar="LAYERS",
              help="Comma list of later layers (e.g. conv2,fc1) the int8 ONNX model leaves in fp32.")
@click.option("--not-a-digit-keep", "keep", type=click.FloatRange(0.5, 1, max_open=True), default=EXPORT.not_a_digit_keep,
              show_default=True, help="Share of the calibration digits predict's not-a-digit rule accepts: lower "
                                      "rejects more non-digits and more digits (trade-off measured in docs/predict.md).")
@gate_options
@click.option("--allow-other-test-set", is_flag=True,
              help="Export even though the loaded MNIST test set is not the one the checkpoint was scored on.")
@click.option("--arch", "arch_spec", default=None, metavar="ARCH",
              help="Your model's source named again (FILE.py:NAME): needed when the file changed since training.")
@click.option("--arch-args", default="", metavar="JSON", help="With --arch: its keyword arguments (default: the recorded ones).")
@click.option("--preprocess", "preprocessing", type=click.Choice(["digit", "plain"]), default=None,
              help="How predict turns a picture into the input, recorded in the export: digit (MNIST's ink crop and "
                   "centring) or plain (the whole picture resized). Default: digit for 0-9 data, plain otherwise.")
@click.option("--require-all/--allow-not-exportable", "require_all", default=None,
              help="A target a converter cannot take fails the export, or is listed as not exportable and the "
                   "others written. Default: fail for cnn/mlp (tested on every target), list for your own model.")
@data_dir_option
@json_option("The manifest")
@quiet_option
@old_spelling("--out", "out", type=click.Path(file_okay=False, path_type=Path))
@old_spelling("--seed", "seed", type=int)
@toolkit_errors
@merge_old_spellings
def export(checkpoint, out, quantize, calibration_size, calibration_method, per_channel, quant_format,
           activation_type, float_input, first_conv, reduce_range, seed, data_dir, json_out, allow_other_test_set=False,
           targets=None, search=False, keep_fp32="", percentile=QUANT.percentile, fp32_atol=GATES.fp32_max_abs_logit_diff,
           int8_max_drop=GATES.int8_max_drop_points, int8_min_agreement=GATES.int8_min_agreement_pct,
           int8_max_clipped=GATES.int8_max_clipped_top_pct, int8_min_ood_agreement=GATES.int8_min_ood_agreement_pct,
           keep=EXPORT.not_a_digit_keep, arch_spec=None, arch_args="", require_all=None, preprocessing=None):
    """Export a checkpoint to TorchScript and ONNX (fp32; int8 with --quantize), with a
    reference and a manifest, checking fp32 parity on the full test set.

    \b
    Example:
        mnisttk export --quantize
        mnisttk export --quantize --search --targets all
    """
    from toolkit.data import load_mnist
    from toolkit.export import ExportConfig, run_export
    from toolkit.exporters.quantize import QuantConfig

    quant = QuantConfig(calibration_size=calibration_size, method=calibration_method, per_channel=per_channel,
                        quant_format=quant_format, activation_type=activation_type, uint8_input=not float_input,
                        first_conv=first_conv, reduce_range=reduce_range, seed=seed, percentile=percentile,
                        keep_fp32=tuple(n.strip() for n in keep_fp32.split(",") if n.strip()))
    config = ExportConfig(checkpoint=checkpoint, out=out, quantize=quantize, quant=quant,
                          allow_other_test_set=allow_other_test_set, formats=targets or EXPORT.formats, search=search,
                          gates=Gates(fp32_max_abs_logit_diff=fp32_atol, int8_max_drop_points=int8_max_drop,
                                      int8_min_agreement_pct=int8_min_agreement,
                                      int8_max_clipped_top_pct=int8_max_clipped,
                                      int8_min_ood_agreement_pct=int8_min_ood_agreement),
                          not_a_digit_keep=keep, arch=arch_spec, arch_args=arch_args, require_all=require_all,
                          preprocessing=preprocessing)
    from toolkit.checkpoint import load_checkpoint

    load_checkpoint(checkpoint)  # a bad checkpoint fails before the data is even loaded
    check_outputs([("--json", json_out, "json")], [checkpoint])
    mnist = load_mnist(data_dir, log=log)
    manifest = run_export(config, mnist, log=log)
    emit_json(manifest, json_out)  # the manifest carries its own schema_version
    if not json_to_stdout(json_out):
        click.echo(format_export(manifest, out))


def format_export(manifest: dict, out: Path) -> str:
    from toolkit.manifest import deployed_bytes

    lines = [f"{'artifact':<28} {'format':<12} {'precision':<9} {'bytes':>8} {'test accuracy':>14}"]
    for a in manifest["artifacts"]:
        lines.append(f"{a['file']:<28} {a['format']:<12} {a['precision']:<9} {deployed_bytes(manifest, a):>8,} "
                     f"{a['test_accuracy']:>14.4f}")
    ref = manifest["reference"]
    lines.append(f"PyTorch eager fp32 (reference): {ref['pytorch_fp32_test_accuracy']:.4f}")
    for c in manifest["fp32_parity"]:
        lines.append(f"parity {c['artifact']}: max |Δlogit| {c['max_abs_logit_diff']:.2e}, {c['flipped']} flipped")
    for e in manifest.get("not_exported", []):
        lines.append(f"{e['target']}: not exportable: {e['reason']}")  # wrapped to 120 columns by fit
    lines.append(f"manifest: {out / 'manifest.json'}")
    from toolkit.width import fit

    return fit("\n".join(lines))


@main.command(short_help='Prove every artifact matches the float model: gates, evidence, exit code.')
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("exported"),
              show_default=True, help="Folder with manifest.json and the artifacts.")
@data_dir_option
@click.option("--device", "devices", multiple=True, type=click.Choice(["cpu", "cuda"]),
              help="ONNX Runtime rows to run (repeatable; default both: cpu, cuda — cuda rows skip without a GPU).")
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch rows; the reference comes from reference.npz.")
@click.option("--skip-runtime", "skip_runtimes", multiple=True, type=click.Choice([s.id for s in RUNTIMES]),
              envvar="MNISTTK_SKIP_RUNTIME", show_envvar=True,
              help="Leave this runtime's rows out (repeatable), e.g. openvino: they are listed as skipped. "
                   "From the environment: space-separated ids.")
@click.option("--require-cuda", is_flag=True, help="Fail when the CUDA rows cannot run.")
@click.option("--threads", type=click.IntRange(0, os.cpu_count() or 1), default=VERIFY.threads, show_default=True,
              help="CPU threads for every runtime (0: all cores; at most this machine's cores); ONNX Runtime runs a "
                   "batch as one single-threaded session per thread.")
@click.option("--expect", "expect", multiple=True, type=click.Choice(KNOWN_TARGETS), metavar="TARGET",
              help="A target the export must hold and this run must check (repeatable), e.g. --expect onnx-int8: "
                   f"fail if it is missing or its row was skipped. One of: {', '.join(KNOWN_TARGETS)}.")
@click.option("--row-timeout", type=click.FloatRange(min=0, min_open=True), default=VERIFY.row_timeout_s,
              show_default=True, help="Seconds one row may take; a row over it (a hung runtime) is a FAIL row.")
@click.option("--row-memory", type=click.IntRange(min=64), default=VERIFY.row_memory_mb, show_default=True,
              help="MB one CPU row may allocate; a row over it is a FAIL row.")
@click.option("--throughput-batch", "batch_size", type=click.IntRange(1, 10_000), default=VERIFY.throughput_batch,
              show_default=True, help="Batch for the throughput measurement.")
@click.option("--max-latency-ratio", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Fail rows whose batch-1 p50 exceeds this multiple of the reference row's.")
@click.option("--rounds", type=click.IntRange(1, 50), default=VERIFY.rounds, show_default=True,
              help="Timing rounds: every row timed once per round, rows interleaved; latency and throughput are "
                   "medians over the rounds, with their min-max spread (more rounds: steadier figures, longer run).")
@gate_options
@json_option("The full report")
@click.option("--wide", is_flag=True, help="Every column and unwrapped notes (default: fits 120 columns).")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The table as Markdown, into FILE (- for stdout; the text table then goes to stderr).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The report as one self-contained page: verdict, table, plot, notes, the changed test images.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG of accuracy vs batch-1 latency (needs matplotlib).")
@click.option("--save-outputs", "outputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Every row's per-image logits, with the artifact and test-set SHA-256, into FILE (JSON, about "
                   "0.4 MB a row): for `mnisttk compare` or another machine's `verify --golden`.")
@click.option("--golden", "golden_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also judge each row against the same artifact's outputs saved by another run (`--save-outputs` "
                   "on the host): flips and logit drift image by image, with the same gates.")
@quiet_option
@old_spelling("--batch-size", "batch_size", type=click.IntRange(1, 10_000))
@old_spelling("--runtime", "runtimes", multiple=True, type=click.Choice(["torch", "cpu", "cuda"]))
@click.pass_context
@toolkit_errors
@merge_old_spellings
def verify(ctx, folder, data_dir, devices, no_torch, skip_runtimes, require_cuda, threads, batch_size, max_latency_ratio, fp32_atol,
           int8_max_drop, int8_min_agreement, json_out, md_path, plot_path, expect=(), wide=False, runtimes=(),
           row_timeout=VERIFY.row_timeout_s, row_memory=VERIFY.row_memory_mb,
           int8_max_clipped=GATES.int8_max_clipped_top_pct, outputs_path=None, golden_path=None, rounds=VERIFY.rounds,
           int8_min_ood_agreement=GATES.int8_min_ood_agreement_pct, html_path=None):
    """Check every exported artifact against the float model on the full test set:
    accuracy, agreement, logit drift, latency, throughput, providers used. Exit 0 when
    every gate holds, 1 when any fails (the rows named), 2 on usage errors.

    \b
    Example:
        mnisttk verify --markdown report.md --plot report.png
        mnisttk verify --no-torch --golden host-outputs.json --save-outputs device-outputs.json
    """
    from toolkit.data import load_mnist
    from toolkit.report import format_markdown, format_table, write_plot
    from toolkit.verify import run_verify

    runtimes = tuple(runtimes) or ("torch", *(devices or ("cpu", "cuda")))
    if no_torch:
        runtimes = tuple(r for r in runtimes if r != "torch")
    if require_cuda and "cuda" not in runtimes:
        raise click.UsageError("--require-cuda needs the cuda runtime")
    gates = Gates(fp32_max_abs_logit_diff=fp32_atol, int8_max_drop_points=int8_max_drop,
                  int8_min_agreement_pct=int8_min_agreement, max_latency_ratio=max_latency_ratio,
                  int8_max_clipped_top_pct=int8_max_clipped, int8_min_ood_agreement_pct=int8_min_ood_agreement)
    config = VerifyConfig(folder=folder, runtimes=runtimes, skip_runtimes=tuple(skip_runtimes), require_cuda=require_cuda,
                          threads=threads,
                          throughput_batch=batch_size, gates=gates, expect=tuple(expect), row_timeout_s=row_timeout,
                          row_memory_mb=row_memory, rounds=rounds)
    from toolkit.manifest import load_manifest

    manifest = load_manifest(folder)  # no or bad manifest: say so before loading any data
    if require_cuda:
        from toolkit.runtimes.ort_session import available_providers

        if "CUDAExecutionProvider" not in available_providers():
            raise ToolkitError("--require-cuda: this onnxruntime has no CUDAExecutionProvider (`make gpu` on a CUDA "
                               "machine; `mnisttk env` shows what is here); nothing was run")
    if plot_path:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ToolkitError("--plot needs matplotlib (pip install 'mnisttk[plot]'); nothing was run")
    md_to_stdout = md_path is not None and str(md_path) == "-"
    if md_to_stdout and json_to_stdout(json_out):
        raise click.UsageError("--json and --markdown cannot both go to stdout")
    # an unwritable report path, or one that would overwrite what is verified, fails before the run
    check_outputs([("--json", json_out, "json"), ("--markdown", md_path, "markdown"), ("--plot", plot_path, "png"),
                   ("--save-outputs", outputs_path, "json"), ("--html", html_path, "html")],
                  _export_files(folder, manifest) + ([golden_path] if golden_path else []))
    from toolkit import outputs as saved_outputs

    golden = saved_outputs.load(golden_path) if golden_path else None
    mnist = load_mnist(data_dir, log=log)
    logits = {} if outputs_path else None
    result = run_verify(config, mnist.test_images, mnist.test_labels, mnist.sha256["test"], log=log, golden=golden,
                        outputs=logits)
    click.echo(format_table(result, wide=wide), err=json_to_stdout(json_out) or md_to_stdout)
    from toolkit.fsutil import atomic_write_bytes

    try:
        emit_json(result, json_out)
        if outputs_path:
            shas = {a["file"]: a["sha256"] for a in manifest["artifacts"]}
            shas[manifest["reference"]["file"]] = manifest["reference"]["sha256"]
            doc = saved_outputs.build(result, logits, mnist.test_labels, mnist.sha256["test"], shas)
            atomic_write_bytes(outputs_path, saved_outputs.dumps(doc))
            log(f"outputs of {len(logits)} rows: {outputs_path} ({outputs_path.stat().st_size:,} bytes)")
        if md_to_stdout:
            click.echo(format_markdown(result), nl=False)
        elif md_path:
            atomic_write_bytes(md_path, format_markdown(result).encode())
    except OSError as exc:
        raise ToolkitError(f"cannot write report: {exc}") from None
    if plot_path:
        try:
            write_plot(result, plot_path)
        except OSError as exc:
            raise ToolkitError(f"cannot write plot {plot_path}: {exc.strerror or exc}") from None
    if html_path:
        from toolkit.html_report import write_html
        from toolkit.manifest import classes_of, confined_path
        from toolkit.reference import read_reference

        ref = read_reference(confined_path(folder, manifest["reference"]["file"]), len(mnist.test_labels),
                             len(classes_of(manifest)))
        try:
            write_html(result, mnist.test_images, mnist.test_labels, ref["logits"].argmax(1), html_path)
        except OSError as exc:
            raise ToolkitError(f"cannot write {html_path}: {exc.strerror or exc}") from None
    ctx.exit(0 if result["passed"] else 1)


def _export_files(folder: Path, manifest: dict) -> list[Path]:
    """The files of an export that a report must never overwrite."""
    names = [a["file"] for a in manifest["artifacts"]] + [manifest["reference"]["file"], "manifest.json"]
    names += [f["file"] for f in manifest.get("support_files", [])]
    return [folder / n for n in names]


def _check_output_path(path) -> None:
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ToolkitError(f"{path}: is a folder, not a file to write")
    if not parent.is_dir():
        raise ToolkitError(f"{path}: folder {parent} does not exist; nothing was run")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ToolkitError(f"{path}: not writable; nothing was run")


@main.command(short_help="Two or more saved verify runs, image by image: flips, drift, McNemar, gates.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@gate_options(clipped=False)
@json_option("The comparison")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The table as Markdown, into FILE (- for stdout; the text table then goes to stderr).")
@click.option("--allow-missing", "allow_missing", multiple=True, metavar="ROW",
              help="Accept a row (an id or a pattern: 'torchscript-*') that has outputs in one run only; "
                   "without it such a row fails the comparison. Repeatable.")
@quiet_option
@click.pass_context
@toolkit_errors
def compare(ctx, files, fp32_atol, int8_max_drop, int8_min_agreement, json_out, md_path, allow_missing):
    """Compare saved verify outputs (`verify --save-outputs`) of the same artifacts: two machines,
    two versions or two runs. Every run after the first is judged against the first, per artifact
    and runtime: agreement, the flipped test images, max |Δlogit|, accuracy with an exact McNemar
    test, latency and throughput as ratios (shown, never gated). Outputs from different test sets or
    of different artifact bytes, outputs without their artifact's hash and a run compared with itself
    are refused. A row with outputs in one run only (it failed or was skipped on the other) fails
    unless --allow-missing names it. Exit 0 when every artifact compared is within the gates, 1 when
    one is not (or an input is refused), 2 on usage errors. Needs no torch.

    \b
    Example:
        mnisttk compare host.json device.json
        mnisttk compare host.json pi4.json phone.json --markdown fleet.md
        mnisttk compare host.json edge.json --allow-missing 'torchscript-*' --allow-missing 'executorch-*'
    """
    from toolkit import compare as cmp
    from toolkit.outputs import load

    if len(files) < 2:
        raise click.UsageError("compare needs at least two outputs files (from `mnisttk verify --save-outputs`)")
    md_to_stdout = md_path is not None and str(md_path) == "-"
    if md_to_stdout and json_to_stdout(json_out):
        raise click.UsageError("--json and --markdown cannot both go to stdout")
    check_outputs([("--json", json_out, "json"), ("--markdown", md_path, "markdown")], list(files))
    gates = Gates(fp32_max_abs_logit_diff=fp32_atol, int8_max_drop_points=int8_max_drop,
                  int8_min_agreement_pct=int8_min_agreement)
    result = cmp.compare_runs([load(f) for f in files], gates, tuple(allow_missing))
    click.echo(cmp.format_table(result), err=json_to_stdout(json_out) or md_to_stdout)
    emit_json(result, json_out)
    if md_to_stdout:
        click.echo(cmp.format_markdown(result), nl=False)
    elif md_path:
        from toolkit.fsutil import atomic_write_bytes

        try:
            atomic_write_bytes(md_path, cmp.format_markdown(result).encode())
        except OSError as exc:
            raise ToolkitError(f"cannot write {md_path}: {exc.strerror or exc}") from None
    ctx.exit(0 if result["passed"] else 1)


@main.command(short_help='Digits from image files or folders (torch-free).')
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


@main.command(short_help='train -> export --quantize -> verify, report beside the artifacts.')
@click.option("--arch", type=click.Choice(ARCH_NAMES), default=TRAIN.arch, show_default=True, help="Model to train.")
@click.option("--epochs", type=click.IntRange(min=1), default=TRAIN.epochs, show_default=True, help="Training epochs.")
@click.option("--seed", type=int, default=TRAIN.seed, show_default=True, help="Training seed (weights, shuffling).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train.")
@data_dir_option
@click.option("--dir", "out", type=click.Path(file_okay=False, path_type=Path), default=EXPORT.out, show_default=True,
              help="Folder for the checkpoint, the artifacts and the report.")
@click.option("--calibration-size", type=click.IntRange(min=1), default=QUANT.calibration_size, show_default=True,
              help="Training images that calibrate int8.")
@click.option("--threads", type=click.IntRange(0, os.cpu_count() or 1), default=VERIFY.threads, show_default=True,
              help="verify's CPU threads (0: all cores).")
@click.option("--int8-max-drop", type=click.FloatRange(min=0), default=GATES.int8_max_drop_points, show_default=True,
              help="verify's int8 accuracy loss allowed, in points.")
@click.option("--int8-min-agreement", type=click.FloatRange(0, 100), default=GATES.int8_min_agreement_pct,
              show_default=True, help="verify's int8 top-1 agreement required, in %.")
@click.option("--int8-min-ood-agreement", type=click.FloatRange(0, 100), default=GATES.int8_min_ood_agreement_pct,
              show_default=True, help="int8 rows: % of images on which the \"not a digit\" decision matches the reference's.")
@click.option("--targets", "targets", default=None, callback=lambda ctx, p, v: None if v is None else _parse_targets(ctx, p, v),
              help="Comma list of formats to export (as `export --targets`). Default: every target this install "
                   "can write (one whose extra is missing is named and left out).")
@quiet_option
@old_spelling("--out", "out", type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
@toolkit_errors
@merge_old_spellings
def pipeline(ctx, arch, epochs, seed, device, data_dir, out, calibration_size, threads, int8_max_drop,
             int8_min_agreement, targets=None, int8_min_ood_agreement=GATES.int8_min_ood_agreement_pct):
    """Train -> export --quantize -> verify; writes the report beside the artifacts (report.md,
    report.json, and report.png when matplotlib is installed). Exit 1 if any step or gate fails.

    \b
    Example:
        mnisttk pipeline --epochs 10
    """
    import importlib.util

    # ctx.invoke fills every option not given here with that command's own default.
    ctx.invoke(train, arch=arch, epochs=epochs, seed=seed, device=device, data_dir=data_dir,
               out=out / f"{arch}.pt")
    from toolkit.config import FORMATS
    from toolkit.exporters import missing_dependency

    if targets is None:  # every target this install can write; one whose extra is missing is named, not an error
        reasons = {fmt: missing_dependency(fmt) for fmt in FORMATS}
        for reason in filter(None, reasons.values()):
            log(f"pipeline: skipping {reason}")
        targets = tuple(f for f in FORMATS if reasons[f] is None)
    ctx.invoke(export, checkpoint=out / f"{arch}.pt", out=out, quantize=True, data_dir=data_dir,
               calibration_size=calibration_size, targets=targets)
    plot = out / "report.png" if importlib.util.find_spec("matplotlib") else None
    ctx.invoke(verify, folder=out, data_dir=data_dir, json_out=out / "report.json", md_path=out / "report.md",
               plot_path=plot, threads=threads, int8_max_drop=int8_max_drop, int8_min_agreement=int8_min_agreement,
               int8_min_ood_agreement=int8_min_ood_agreement)


INSPECT_TIMEOUT_S = 900.0  # the full 10,000-image inspect takes about a minute here; a hung model stops here


@main.command(short_help="Why the int8 model is what it is: per-layer error and per-node time.")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=EXPORT.out,
              show_default=True, help="Folder with manifest.json and the artifacts (an int8 ONNX model among them).")
@data_dir_option
@click.option("--images", "n_images", type=click.IntRange(1, 10_000), default=1000, show_default=True,
              help="Test images the per-layer error is measured on.")
@click.option("--throughput-batch", "batch", type=click.IntRange(1, 10_000), default=VERIFY.throughput_batch,
              show_default=True, help="Batch each profiled run takes (verify's throughput batch).")
@click.option("--threads", type=click.IntRange(0, os.cpu_count() or 1), default=VERIFY.threads, show_default=True,
              help="Intra-op threads for the profiles (0: all cores).")
@click.option("--repeats", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Profiled runs per model; each node's time is their median.")
@click.option("--top", type=click.IntRange(1, 1000), default=12, show_default=True, help="Nodes shown per model.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the tables as Markdown into this file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw per-layer SQNR, per-node time, the flipped images and the confusion matrix (PNG).")
@json_option("Every layer and node of both models, the flips and the confusion matrix")
@quiet_option
@toolkit_errors
def inspect(folder, data_dir, n_images, batch, threads, repeats, top, json_out, md_path=None, plot_path=None):
    """Explain the int8 ONNX model against the fp32 one, torch-free: per layer (conv1, conv2, fc1 …)
    its output error — SQNR, cosine, max |Δ| — in the int8 graph and with only that layer quantized,
    its weight error, scales and zero points, whether an int8 kernel ran it; per node, the time ONNX
    Runtime's profiler measured (layers, layout reorders, (de)quantize nodes); the test images whose
    prediction int8 changed, and its confusion matrix.

    \b
    Example:
        mnisttk inspect --json inspect.json --markdown inspect.md --plot inspect.png
    """
    from toolkit.data import load_mnist
    from toolkit.inspect.profile import format_inspect, run_inspect
    from toolkit.manifest import load_manifest

    manifest = load_manifest(folder)  # no or bad manifest: say so before loading any data
    import importlib.util

    if plot_path and importlib.util.find_spec("matplotlib") is None:
        raise ToolkitError("--plot needs matplotlib (pip install 'mnisttk[plot]'); nothing was run")
    md_to_stdout = md_path is not None and str(md_path) == "-"  # as in verify: - is stdout
    if md_to_stdout and json_to_stdout(json_out):
        raise click.UsageError("--json and --markdown cannot both go to stdout")
    check_outputs([("--json", json_out, "json"), ("--markdown", md_path, "markdown"), ("--plot", plot_path, "png")],
                  _export_files(folder, manifest))
    mnist = load_mnist(data_dir, log=log)
    from toolkit import isolate

    # the models are a supplier's: their runtime work runs in a child with verify's bounds, scaled to the work
    result = isolate.call(run_inspect, folder, mnist.test_images, mnist.test_labels, batch=batch, threads=threads,
                          repeats=repeats, n_images=n_images, timeout_s=INSPECT_TIMEOUT_S,
                          memory_mb=isolate.DEFAULT_MEMORY_MB, what="inspect's runtime work")
    emit_json(result, json_out)
    click.echo(format_inspect(result, top=top), err=json_to_stdout(json_out) or md_to_stdout)
    from toolkit.fsutil import atomic_write_bytes
    from toolkit.inspect.report import format_markdown, write_plot

    try:
        if md_to_stdout:
            click.echo(format_markdown(result), nl=False)
        elif md_path:
            atomic_write_bytes(md_path, format_markdown(result).encode())
        if plot_path:
            write_plot(result, mnist.test_images, plot_path)
    except OSError as exc:
        raise ToolkitError(f"cannot write {exc.filename or 'the output'}: {exc.strerror or exc}") from None


@main.command(short_help='What this machine offers: versions, providers, CPU flags, GPUs.')
@json_option("The environment")
@quiet_option
@toolkit_errors
def env(json_out):
    """Show what this machine offers: mnisttk, Python, torch, onnxruntime (and which build, or a mixed
    install), execution providers, every runtime and converter, CPU flags, GPUs. Torch-free.

    \b
    Example:
        mnisttk env --json
    """
    from toolkit.env import environment, format_environment

    check_outputs([("--json", json_out, "json")])
    info = environment()
    emit_json(info, json_out)
    if not json_to_stdout(json_out):
        click.echo(format_environment(info))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
