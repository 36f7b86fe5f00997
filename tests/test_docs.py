"""The docs agree with the code: counts of targets and artifacts, row ids, gate names, options named in
prose, and links are checked against the registry and the CLI, so a doc cannot drift from the tool."""

import re
from pathlib import Path

import click
import pytest

from toolkit.cli import main
from toolkit.gates import Gate
from toolkit.runtimes import RUNTIMES
from toolkit.targets import FORMATS, KNOWN_TARGETS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "exported" / "README.md"]


def _all_options() -> set:
    opts = {"--help", "--version"}
    for cmd in main.commands.values():
        opts |= {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
    return opts


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.parent.name + "/" + p.name)
def test_counts_ids_options_and_links_in_a_doc_are_the_codes(doc):
    text = doc.read_text()
    for n, what in re.findall(r"\b(\d+) (targets|formats)\b", text):
        assert int(n) in (len(FORMATS), len(KNOWN_TARGETS)), f"{doc.name}: '{n} {what}' (the registry has " \
            f"{len(FORMATS)} formats, {len(KNOWN_TARGETS)} targets)"
    for n in re.findall(r"all (\d+) artifacts", text):
        assert int(n) == len(KNOWN_TARGETS), f"{doc.name}: 'all {n} artifacts'"
    runtimes = {s.id for s in RUNTIMES} | {"torch", "npz"}
    for target, runtime in re.findall(r"`([a-z0-9]+-(?:fp32|int8))@([a-z0-9-]+)`", text):
        assert target in KNOWN_TARGETS or target == "eager-fp32", f"{doc.name}: row id {target}@{runtime}"
        assert runtime in runtimes or any(runtime.startswith(r + "-") for r in runtimes), f"{doc.name}: @{runtime}"
    known = _all_options()
    for opt in re.findall(r"`(--[a-z][a-z0-9-]+)[` =\[]", text):
        assert opt in known, f"{doc.name}: `{opt}` is not an option of any verb"
    for link in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text):
        assert (doc.parent / link).exists(), f"{doc.name}: link {link} does not resolve from {doc.parent.name}/"


def test_every_gate_a_verdict_can_name_is_documented():
    verify_md, json_md = (ROOT / "docs" / "verify.md").read_text(), (ROOT / "docs" / "json.md").read_text()
    for gate in Gate:
        assert gate.value in verify_md, f"docs/verify.md does not name the gate {gate.value}"
        assert gate.value in json_md, f"docs/json.md does not name the gate {gate.value}"


def test_every_verb_is_documented_with_its_options():
    """Each verb has its own doc or README section, and each of its visible options appears in the docs."""
    text = "\n".join(d.read_text() for d in DOCS)
    for name, _cmd in main.commands.items():
        assert f"mnisttk {name}" in text, f"`mnisttk {name}` appears in no doc"
