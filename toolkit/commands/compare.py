"""`mnisttk compare`."""

from __future__ import annotations

from pathlib import Path

import click

from toolkit.clikit import (
    check_outputs,
    emit_json,
    gate_options,
    json_option,
    json_to_stdout,
    quiet_option,
    toolkit_errors,
)
from toolkit.config import Gates
from toolkit.errors import ToolkitError


@click.command(short_help="Two or more saved verify runs, image by image: flips, drift, McNemar, gates.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@gate_options(clipped=False)
@json_option("The comparison")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The table as Markdown, into FILE (- for stdout; the text table then goes to stderr).")
@click.option("--allow-missing", "allow_missing", multiple=True, metavar="ROW",
              help="Accept a row (an id or a pattern: 'torchscript-*') that has outputs in one run only because "
                   "it was not run (skipped, or absent) on the other; without it such a row fails the comparison. "
                   "Repeatable.")
@click.option("--allow-failed", "allow_failed", multiple=True, metavar="ROW",
              help="Accept a row that ran and FAILED on one machine (--allow-missing does not excuse a failure). "
                   "The verdict names every excused row. Repeatable.")
@quiet_option
@click.pass_context
@toolkit_errors
def compare(ctx, files, fp32_atol, int8_max_drop, int8_min_agreement, json_out, md_path, allow_missing,
            allow_failed):
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
    result = cmp.compare_runs([load(f) for f in files], gates, tuple(allow_missing), tuple(allow_failed))
    from toolkit.safetext import shown_tree

    view = shown_tree(result)  # what a person sees: every string from a file escaped (toolkit.safetext)
    click.echo(cmp.format_table(view), err=json_to_stdout(json_out) or md_to_stdout)
    emit_json(result, json_out)
    if md_to_stdout:
        click.echo(cmp.format_markdown(view), nl=False)
    elif md_path:
        from toolkit.fsutil import atomic_write_bytes

        try:
            atomic_write_bytes(md_path, cmp.format_markdown(view).encode())
        except OSError as exc:
            raise ToolkitError(f"cannot write {md_path}: {exc.strerror or exc}") from None
    ctx.exit(0 if result["passed"] else 1)
