"""`mnisttk export`."""

from __future__ import annotations

from pathlib import Path

import click

from toolkit.clikit import (
    EXPORT,
    GATES,
    QUANT,
    _parse_targets,
    check_outputs,
    data_dir_option,
    emit_json,
    gate_options,
    json_option,
    json_to_stdout,
    log,
    merge_old_spellings,
    old_spelling,
    quiet_option,
    toolkit_errors,
)
from toolkit.config import METHODS, Gates
from toolkit.targets import TARGETS


@click.command(short_help='TorchScript, ONNX and other targets (fp32; int8 with --quantize), reference, manifest.')
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=EXPORT.checkpoint,
              show_default=True, help="Checkpoint from `mnisttk train`.")
@click.option("--dir", "out", type=click.Path(file_okay=False, path_type=Path), default=EXPORT.out, show_default=True,
              help="Folder the artifacts, reference and manifest are published into.")
@click.option("--quantize", is_flag=True, help="Also write a static int8 model of every target asked for.")
@click.option("--calibration-size", type=click.IntRange(min=1), default=None,
              help=f"Training images used to calibrate (never test images). Default: {QUANT.calibration_size:,}, or the "
                   "whole training set where it is smaller.")
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
@click.option("--int8-for", "int8_isa", type=click.Choice(["portable", "vnni"]), default=QUANT.int8_isa,
              show_default=True,
              help="CPUs the int8 files must be exact on: portable (every kind: AVX2-only x86, VNNI, AMX, aarch64; "
                   "7-bit weights where a u8×s8 kernel could saturate) or vnni (full-range weights: exact only on CPUs "
                   "with dot-product instructions). The manifest records each int8 file's CPU kinds.")
@click.option("--reduce-range/--full-range", default=None,
              help="Override --int8-for for ONNX Runtime and TorchScript: 7-bit or full-range int8 weights.")
@click.option("--int8-fallback/--no-int8-fallback", "int8_fallback", default=True, show_default=True,
              help="When the default int8 ONNX model fails verify's gates on the test set, keep its costliest layers "
                   "in fp32 (each ranked by the agreement it buys) until they hold; the manifest records every step.")
@click.option("--calibration-seed", "seed", type=int, default=QUANT.seed, show_default=True,
              help="Which training images calibrate.")
@click.option("--targets", "targets", default=",".join(EXPORT.formats), show_default=True, callback=_parse_targets,
              help="Comma list of formats: " + ", ".join(f"{t.name} ({t.label}" + (f"; mnisttk[{t.extra}])" if t.extra else ")")
                                                         for t in TARGETS) + ", or all. onnx is always written.")
@click.option("--search", is_flag=True,
              help="With --quantize: try every per-layer precision (first conv fp32/im2col/int8, each later layer "
                   "int8/fp32), score each on the test set under verify's gates, time it, keep the fastest that passes.")
@click.option("--cluster", default=None, metavar="ADDRESS",
              help="With --search: score and time the candidates on a node of a Ray cluster (HOST:PORT, auto, local), "
                   "the kind you ship to; needs mnisttk[cluster].")
@click.option("--nodes", "node_selector", default=None, metavar="SELECTOR",
              help="With --search --cluster: the node kind to time on (arch=…, flag=…, label:KEY=VALUE, node=ID; one kind).")
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
@click.option("--preprocess", "preprocessing", type=click.Choice(["digit", "plain", "resize"]), default=None,
              help="How predict turns a picture into the input, recorded in the export: digit (MNIST's ink crop and "
                   "centring), plain (the whole picture, light on dark, resized to 28×28) or resize (the picture as "
                   "it is, resized to the model's input). Default: digit for 0-9 data, plain for other 28×28 grey "
                   "data, resize for any other input.")
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
           activation_type, float_input, first_conv, int8_isa, reduce_range, int8_fallback, seed, data_dir, json_out,
           allow_other_test_set=False,
           targets=None, search=False, keep_fp32="", percentile=QUANT.percentile, fp32_atol=GATES.fp32_max_abs_logit_diff,
           int8_max_drop=GATES.int8_max_drop_points, int8_min_agreement=GATES.int8_min_agreement_pct,
           int8_max_clipped=GATES.int8_max_clipped_top_pct, int8_min_ood_agreement=GATES.int8_min_ood_agreement_pct,
           keep=EXPORT.not_a_digit_keep, arch_spec=None, arch_args="", require_all=None, preprocessing=None,
           cluster=None, node_selector=None):
    """Export a checkpoint to TorchScript and ONNX (fp32; int8 with --quantize), with a
    reference and a manifest, checking fp32 parity on the full test set.

    \b
    Example:
        mnisttk export --quantize
        mnisttk export --quantize --search --targets all
    """
    from toolkit.errors import CheckpointError
    from toolkit.fsutil import regular_file

    # the cheap checks first, before torch is imported (seconds on a loaded machine): the checkpoint is there
    # and is a file, and no output would overwrite it; its contents are checked once torch is loaded
    regular_file(checkpoint, CheckpointError, "an mnisttk checkpoint", 2**40,
                 missing="no such checkpoint (run `mnisttk train` first)")
    check_outputs([("--json", json_out, "json")], [checkpoint])
    from toolkit.data import load_mnist
    from toolkit.export import ExportConfig, run_export
    from toolkit.exporters.quantize import QuantConfig

    quant = QuantConfig(calibration_size=calibration_size or QUANT.calibration_size, method=calibration_method, per_channel=per_channel,
                        quant_format=quant_format, activation_type=activation_type, uint8_input=not float_input,
                        first_conv=first_conv, int8_isa=int8_isa, reduce_range=reduce_range, seed=seed, percentile=percentile,
                        keep_fp32=tuple(n.strip() for n in keep_fp32.split(",") if n.strip()))
    config = ExportConfig(checkpoint=checkpoint, out=out, quantize=quantize, quant=quant,
                          allow_other_test_set=allow_other_test_set, formats=targets or EXPORT.formats, search=search,
                          int8_fallback=int8_fallback,
                          gates=Gates(fp32_max_abs_logit_diff=fp32_atol, int8_max_drop_points=int8_max_drop,
                                      int8_min_agreement_pct=int8_min_agreement,
                                      int8_max_clipped_top_pct=int8_max_clipped,
                                      int8_min_ood_agreement_pct=int8_min_ood_agreement),
                          not_a_digit_keep=keep, arch=arch_spec, arch_args=arch_args, require_all=require_all,
                          preprocessing=preprocessing, cluster=cluster, nodes=node_selector)
    if (cluster or node_selector) and not search:
        raise click.UsageError("--cluster and --nodes go with --search (verify --cluster proves a fleet)")
    from toolkit.checkpoint import checkpoint_spec, load_checkpoint

    spec = checkpoint_spec(load_checkpoint(checkpoint))  # a bad checkpoint fails before the data is even loaded
    mnist = load_mnist(data_dir, log=log, size=(spec.height, spec.width))  # image folders: resized to the model's
    if calibration_size is None:  # the default: 1,000 training images, or all of a smaller training set
        from dataclasses import replace

        quant = replace(quant, calibration_size=min(QUANT.calibration_size, len(mnist.train_images)))
        config = replace(config, quant=quant)
    manifest = run_export(config, mnist, log=log)
    emit_json(manifest, json_out)  # the manifest carries its own schema_version
    if not json_to_stdout(json_out):
        from toolkit.safetext import shown_tree

        click.echo(format_export(shown_tree(manifest), out))  # converters' messages, class names


def format_export(manifest: dict, out: Path) -> str:
    from toolkit.manifest import deployed_bytes

    wide = max([28, *(len(a["file"]) for a in manifest["artifacts"])])  # a long model name keeps the columns
    lines = [f"{'artifact':<{wide}} {'format':<12} {'precision':<9} {'bytes':>8} {'test accuracy':>14}"]
    for a in manifest["artifacts"]:
        lines.append(f"{a['file']:<{wide}} {a['format']:<12} {a['precision']:<9} {deployed_bytes(manifest, a):>8,} "
                     f"{a['test_accuracy']:>14.4f}")
    ref = manifest["reference"]
    lines.append(f"PyTorch eager fp32 (reference): {ref['pytorch_fp32_test_accuracy']:.4f}")
    for c in manifest["fp32_parity"]:
        lines.append(f"parity {c['artifact']}: max |Δlogit| {c['max_abs_logit_diff']:.2e}, {c['flipped']} flipped")
    for e in manifest.get("not_exported", []):
        head = f"{e['target']}: not exportable: "  # one line of at most 120 columns; the whole reason in the manifest
        lines.append(head + (e["reason"] if len(head) + len(e["reason"]) <= 120
                             else e["reason"][: 120 - len(head) - 1] + "…"))
    lines.append(f"manifest: {out / 'manifest.json'}")
    from toolkit.width import fit

    return fit("\n".join(lines))
