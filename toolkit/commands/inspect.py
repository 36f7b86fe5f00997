"""`mnisttk inspect`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from toolkit.clikit import (
    EXPORT,
    VERIFY,
    check_outputs,
    data_dir_option,
    emit_json,
    export_files,
    json_option,
    json_to_stdout,
    log,
    quiet_option,
    toolkit_errors,
)
from toolkit.errors import ToolkitError

INSPECT_TIMEOUT_S = 900.0  # the full 10,000-image inspect takes about a minute here; a hung model stops here


@click.command(short_help="Why the int8 model is what it is: per-layer error and per-node time.")
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
@click.option("--row-timeout", type=click.FloatRange(min=0, min_open=True), default=INSPECT_TIMEOUT_S,
              show_default=True, help="Seconds the runtime work (a child process) may take; a hung model stops there.")
@click.option("--row-memory", type=click.IntRange(min=64), default=VERIFY.row_memory_mb, show_default=True,
              help="MiB the runtime work may allocate beyond its imports (as verify's rows).")
@json_option("Every layer and node of both models, the flips and the confusion matrix")
@quiet_option
@toolkit_errors
def inspect(folder, data_dir, n_images, batch, threads, repeats, top, json_out, md_path=None, plot_path=None,
            row_timeout=INSPECT_TIMEOUT_S, row_memory=VERIFY.row_memory_mb):
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
                  export_files(folder, manifest))
    from toolkit.manifest import manifest_spec

    spec = manifest_spec(manifest)
    mnist = load_mnist(data_dir, log=log, size=(spec.height, spec.width))  # image folders: the models' size
    spec.check_images(mnist.test_images, "the test set loaded")
    from toolkit import isolate

    # the models are a supplier's: their runtime work runs in a child with verify's bounds, scaled to the work
    result = isolate.call(run_inspect, folder, mnist.test_images, mnist.test_labels, batch=batch, threads=threads,
                          repeats=repeats, n_images=n_images, timeout_s=row_timeout,
                          memory_mb=row_memory, what="inspect's runtime work")
    emit_json(result, json_out)
    from toolkit.safetext import shown_tree

    view = shown_tree(result)  # node names and file names come from the supplier's files
    click.echo(format_inspect(view, top=top), err=json_to_stdout(json_out) or md_to_stdout)
    from toolkit.fsutil import atomic_write_bytes
    from toolkit.inspect.report import format_markdown, write_plot

    try:
        if md_to_stdout:
            click.echo(format_markdown(view), nl=False)
        elif md_path:
            atomic_write_bytes(md_path, format_markdown(view).encode())
        if plot_path:
            write_plot(view, mnist.test_images, plot_path)
    except OSError as exc:
        raise ToolkitError(f"cannot write {exc.filename or 'the output'}: {exc.strerror or exc}") from None
