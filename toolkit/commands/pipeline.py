"""`mnisttk pipeline`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from toolkit.clikit import (
    EXPORT,
    GATES,
    QUANT,
    TRAIN,
    VERIFY,
    _parse_targets,
    data_dir_option,
    log,
    merge_old_spellings,
    old_spelling,
    quiet_option,
    toolkit_errors,
)
from toolkit.commands.export import export
from toolkit.commands.train import train
from toolkit.commands.verify import verify
from toolkit.config import ARCH_NAMES


@click.command(short_help='train -> export --quantize -> verify, report beside the artifacts.')
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
