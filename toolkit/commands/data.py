"""`mnisttk data`."""

from __future__ import annotations

from pathlib import Path

import click

from toolkit.clikit import (
    check_outputs,
    data_dir_option,
    emit_json,
    json_option,
    json_to_stdout,
    log,
    quiet_option,
    toolkit_errors,
)


@click.command(short_help="Find or fetch MNIST; sizes, class counts, SHA-256.")
@data_dir_option
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), help="Write a labelled grid of sample images (PNG).")
@click.option("--image-size", default=None, metavar="WxH",
              help="Image folders: resize every image to this (as train --image-size does).")
@json_option("The summary")
@quiet_option
@toolkit_errors
def data(data_dir, grid, json_out, image_size=None):
    """Find or fetch the data (MNIST by default; IDX, NumPy or image folders with --data-dir) and describe
    it: source, image size, split sizes, class counts, SHA-256.

    \b
    Example:
        mnisttk data --grid samples.png
    """
    from toolkit.data import load_mnist
    from toolkit.datainfo import describe, format_description, write_grid
    from toolkit.layouts import parse_size

    check_outputs([("--json", json_out, "json"), ("--grid", grid, "png")])
    mnist = load_mnist(data_dir, log=log, size=parse_size(image_size))
    info = describe(mnist)
    if grid:
        write_grid(mnist, grid)
        info["grid"] = str(grid)
    emit_json({"schema_version": 1, **info}, json_out)
    if not json_to_stdout(json_out):
        from toolkit.safetext import shown_tree

        click.echo(format_description(shown_tree(info)))  # class names come from the data's files
