"""Terminals that lie: every string that came from a file (an outputs file's machine note and row ids, a
manifest's not_exported reason, ONNX node names) reaches the terminal, Markdown, HTML and plots through
one escaping function (toolkit.safetext). Without it the screen showed a forged `PASS (all 14 artifacts
checked)` while the exit code was 1, or was cleared; `$\\foo{$` in a node name stopped `inspect --plot`
with a mathtext traceback."""

import json
import shutil

import pytest
from helpers import LOOSE, rehash, run, saved_run

# clear the screen, go back to the line's start, forge a verdict on a line of its own, and reverse the text
PAYLOAD = "\x1b[2J\x1b[H\rPASS (all 14 artifacts checked)\n\u202e\x07"
RAW = ("\x1b", "\r", "\x07", "\u202e")


def assert_escaped(text: str) -> None:
    for c in RAW:
        assert c not in text, repr(c)
    assert "PASS (all 14 artifacts checked)" not in text.splitlines()  # never a line of its own
    assert "\\x1b[2J" in text  # shown, escaped: the reader sees what the file holds


def test_shown_escapes_every_control_format_and_separator_character():
    from toolkit.safetext import shown, shown_tree

    assert shown("plain text, ünïcode, 数字 and tabs\tno") == "plain text, ünïcode, 数字 and tabs\\tno"
    assert shown("a\nb\rc\x1bd\x00e\u2028f\u202eg\x9bh") == "a\\nb\\rc\\x1bd\\x00e\\u2028f\\u202eg\\x9bh"
    tree = shown_tree({"k\x1b": ["v\n", ("t\r", 3)], "n": 1.5, "none": None})
    assert tree == {"k\\x1b": ["v\\n", ("t\\r", 3)], "n": 1.5, "none": None}


def test_compare_shows_a_forged_machine_note_and_row_id_escaped(onnx_family_export, tiny_export, tmp_path):
    from toolkit import outputs

    host = tmp_path / "host.json"
    doc = saved_run(onnx_family_export, tiny_export["data"], host)
    doc["machine"]["note"] = PAYLOAD
    row = next(x for x in doc["rows"] if x["id"] == "onnx-int8@ort-cpu")
    row["id"] = "onnx-int8@ort-cpu" + PAYLOAD
    doc["sha256"] = outputs.hashlib.sha256(outputs._canonical(doc)).hexdigest()
    device = tmp_path / "device.json"
    device.write_text(json.dumps(doc))
    r = run("compare", host, device, "--markdown", tmp_path / "c.md")
    assert r.exit_code == 1  # the renamed row has outputs in one run only
    assert_escaped(r.output)
    assert_escaped((tmp_path / "c.md").read_text())
    js = run("compare", host, device, "--json", "-")
    assert json.loads(js.stdout)["runs"][1]["machine"]["note"] == PAYLOAD  # JSON keeps the value, escaped by JSON


def test_verify_shows_a_forged_not_exported_reason_escaped(exported, tiny_export, tmp_path):
    manifest = json.loads((exported / "manifest.json").read_text())
    manifest.setdefault("not_exported", []).append({"target": "tflite-int8", "reason": PAYLOAD})
    (exported / "manifest.json").write_text(json.dumps(manifest))
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], *LOOSE,  # every artifact: the full PASS
            "--markdown", tmp_path / "v.md", "--html", tmp_path / "v.html")
    assert r.exit_code == 0, r.output
    assert_escaped(r.output)
    assert_escaped((tmp_path / "v.md").read_text())
    html = (tmp_path / "v.html").read_text()
    assert not any(c in html for c in ("\x1b", "\x07", "\u202e"))


@pytest.mark.parametrize("plot", [False, True])
def test_inspect_shows_hostile_node_names_escaped_and_plots_mathtext_as_text(onnx_family_export, tiny_export,
                                                                              tmp_path, plot):
    import onnx

    folder = tmp_path / "f"
    shutil.copytree(onnx_family_export, folder)
    for name in ("cnn_fp32.onnx", "cnn_int8.onnx"):
        m = onnx.load(str(folder / name))
        for node in m.graph.node:
            node.name = f"{node.name} $\\foo{{$ {PAYLOAD}"  # the same in both graphs: layers pair by name
        onnx.save(m, str(folder / name))
        rehash(folder, name)
    extra = ["--plot", tmp_path / "i.png"] if plot else []
    r = run("inspect", "--dir", folder, "--data-dir", tiny_export["data"], "--repeats", "1", "--images", "20",
            "--throughput-batch", "8", "--top", "40", *extra)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    if plot:
        assert (tmp_path / "i.png").stat().st_size > 1000
    else:
        assert "\\x1b[2J" in r.output and not any(c in r.output for c in RAW)
