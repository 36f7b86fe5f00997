"""The thin click layer: `mnisttk` and its verbs, one module each in toolkit.commands (options, one library
call, rendering); toolkit.clikit holds what they share. ToolkitError becomes one line at this edge.

Torch-side modules are imported inside the commands that need them, so that
`mnisttk verify` and `mnisttk predict` run where only onnxruntime and numpy exist.
"""

from __future__ import annotations

import sys

import click

from toolkit import __version__
from toolkit.clikit import log, printable  # noqa: F401  (the CLI's logging and escaping, for scripts)
from toolkit.commands.compare import compare
from toolkit.commands.data import data
from toolkit.commands.env import env
from toolkit.commands.export import export
from toolkit.commands.inspect import inspect
from toolkit.commands.pipeline import pipeline
from toolkit.commands.predict import predict
from toolkit.commands.train import train
from toolkit.commands.verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mnisttk")
def main():
    """mnisttk: train the MNIST CNN, quantize and export it, and prove the deployed
    artifact still matches the float model.

    \b
    Example:
        mnisttk pipeline        # train -> export --quantize -> verify
    """


for _command in (data, train, export, verify, compare, predict, pipeline, inspect, env):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
