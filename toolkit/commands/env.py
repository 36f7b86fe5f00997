"""`mnisttk env`."""

from __future__ import annotations

import click

from toolkit.clikit import (
    check_outputs,
    emit_json,
    json_option,
    json_to_stdout,
    quiet_option,
    toolkit_errors,
)


@click.command(short_help='What this machine offers: versions, providers, CPU flags, GPUs.')
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
