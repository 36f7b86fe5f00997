"""The README and docs/ stay true to the CLI: every documented command line uses verbs and options that
exist, the README stays a five-minute read, and the gate table names verify's real options."""

import re
import shlex
from pathlib import Path

import click
import pytest

from toolkit.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_lines(text: str):
    """Each `mnisttk VERB …` line inside a ```sh block (comments dropped)."""
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith("mnisttk "):
                yield line


def options_of(cmd: click.Command) -> set:
    return {o for p in cmd.params if isinstance(p, click.Option) and not p.hidden for o in p.opts + p.secondary_opts}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_command_uses_real_verbs_and_options(doc):
    lines = list(command_lines(doc.read_text()))
    for line in lines:
        words = shlex.split(line)
        verb = words[1]
        if verb.startswith("-"):  # mnisttk --version
            continue
        assert verb in main.commands, f"{doc.name}: {line}"
        known = options_of(main.commands[verb]) | {"-h", "--help"}
        for word in words[2:]:
            if word.startswith("-") and word != "-":
                assert word.split("=")[0] in known, f"{doc.name}: {word} is not an option of `mnisttk {verb}`"
    if doc.name == "README.md":
        documented = {shlex.split(line)[1] for line in lines}
        assert set(main.commands) <= documented, set(main.commands) - documented


def test_readme_is_short_and_its_gate_table_names_verify_options():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    verify = options_of(main.commands["verify"])
    table = text.split("| gate | default | option |")[1].split("\n\n")[0]
    named = re.findall(r"`(--[a-z0-9-]+)`", table)
    assert len(named) >= 6 and set(named) <= verify, set(named) - verify
    for link in re.findall(r"\]\((docs/[^)#]+)\)", text):
        assert (ROOT / link).is_file(), link


def test_the_readmes_data_output_is_the_tools(real_mnist):
    """The README's `mnisttk data` block had a header the tool no longer printed."""
    from toolkit.datainfo import describe, format_description

    text = (ROOT / "README.md").read_text()
    block = text.split("### `mnisttk data`")[1].split("```\n```\n")[1].split("```")[0]
    printed = format_description(describe(real_mnist)).splitlines()
    assert block.splitlines()[2:] == printed[2:]  # the header and the rows (the first two name the machine's folder)
