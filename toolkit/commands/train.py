"""`mnisttk train`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from toolkit.clikit import (
    TRAIN,
    check_outputs,
    data_dir_option,
    emit_json,
    is_quiet,
    json_option,
    json_to_stdout,
    log,
    merge_old_spellings,
    old_spelling,
    quiet_option,
    toolkit_errors,
)
from toolkit.errors import ToolkitError

ARCH_HELP = ("cnn (the built-in CNN), mlp (a feed-forward net), or your own: FILE.py:NAME or package.module:NAME, "
             "a class or factory returning an nn.Module that maps N×C×H×W floats in [0, 1] (the data's images; N×1×28×28 "
             "on MNIST) to N×K logits (docs/your-model.md).")


def norm_values(text: str | None, option: str) -> tuple | None:
    """--mean / --std: comma-separated numbers."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text[:40]!r} is not comma-separated numbers", param_hint=option) from None


@click.command(short_help="Train the CNN, the MLP or your own model; test-set metrics.")
@click.option("--arch", default=TRAIN.arch, show_default=True, metavar="ARCH", help=ARCH_HELP)
@click.option("--arch-args", default="", metavar="JSON", help="Keyword arguments for your model, a JSON object.")
@click.option("--classes", default=None, metavar="NAMES",
              help="Comma list of class names, label k is the k-th (default: classes.txt beside the data, else 0..C-1).")
@click.option("--image-size", default=None, metavar="WxH",
              help="Image folders: resize every image to this (e.g. 32x32); needed when their sizes differ.")
@click.option("--mean", default=None, metavar="M[,M…]",
              help="Normalise inputs by (x - mean) / std inside the model, one value per channel or one for all "
                   "(e.g. 0.49,0.48,0.45); the artifacts still take pixel/255. Needs --std.")
@click.option("--std", default=None, metavar="S[,S…]", help="The normalisation's standard deviation(s); with --mean.")
@click.option("--epochs", type=click.IntRange(min=1), default=TRAIN.epochs, show_default=True, help="Passes over the training set.")
@click.option("--batch-size", type=click.IntRange(min=1), default=TRAIN.batch_size, show_default=True,
              help="Training batch.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=TRAIN.lr, show_default=True,
              help="Adam learning rate.")
@click.option("--seed", type=int, default=TRAIN.seed, show_default=True,
              help="Weight initialisation and shuffling (same seed and --threads on the CPU: identical weights).")
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
          threads=None, arch_args="", classes=None, image_size=None, mean=None, std=None):
    """Train a model (Adam 1e-3, batch 60, 10 epochs by default) and save a checkpoint.

    \b
    Example:
        mnisttk train --epochs 1 --device cpu
    """
    from toolkit.arch import parse

    # the cheap checks first, before torch is imported: the model reference (file there, parses, defines the
    # name; --arch-args plain JSON) and where the checkpoint goes
    ref = parse(arch, arch_args)
    out = out or Path("exported") / f"{ref.stem}.pt"
    check_outputs([("--json", json_out, "json")], [out])
    from toolkit.data import load_mnist
    from toolkit.fsutil import check_writable_dir

    try:
        check_writable_dir(out.parent)
    except OSError as exc:
        raise ToolkitError(f"cannot write to {out.parent}: {exc.strerror or exc}") from None
    from toolkit.layouts import parse_size

    mnist = load_mnist(data_dir, log=log, classes=classes, size=parse_size(image_size))  # before torch is loaded
    spec = mnist.spec
    log(f"data: {mnist.source}, {mnist.num_classes} classes, {spec.colour} {spec.width}×{spec.height} images")
    from toolkit.checkpoint import save_checkpoint
    from toolkit.train import TrainConfig, checkpoint_payload, select_device
    from toolkit.train import train as run_training

    config = TrainConfig(arch=arch, arch_args=arch_args, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         mean=norm_values(mean, "--mean"), std=norm_values(std, "--std"))
    from toolkit.train import input_spec

    input_spec(config, mnist)  # a normalisation that does not fit the data: one line, before training
    dev = select_device(device)
    log(f"training {arch} on {dev} ({'GPU' if dev.type == 'cuda' else 'CPU'}): {epochs} epochs, batch {batch_size}, "
        f"Adam lr {lr}, seed {seed}")
    if progress is None:
        progress = sys.stderr.isatty()  # carriage-return frames have no place in a log file
    model, result = run_training(config, mnist, dev, log=log, progress=progress and not is_quiet(), cuda_graph=cuda_graph,
                                 threads=threads)
    save_checkpoint(out, checkpoint_payload(model, result))
    result["checkpoint"] = str(out)
    emit_json({"schema_version": 1, **result}, json_out)
    if not json_to_stdout(json_out):
        from toolkit.safetext import shown_tree

        click.echo(format_train_result(shown_tree(result)))  # class names come from the data's files


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
