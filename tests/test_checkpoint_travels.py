"""The checkpoint travels with the export: `export --checkpoint elsewhere/cnn.pt --dir out` then
`verify --dir out` ends in PASS whatever the layout; a checkpoint that is not in the folder makes the
reference reference.npz, never a FAIL of the verdict."""

import json
import shutil

from helpers import LOOSE, run


def test_a_checkpoint_outside_the_export_folder_is_copied_in_and_verify_passes(tiny_export, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tiny_export["out"] / "cnn.pt", elsewhere / "cnn.pt")
    out = tmp_path / "out"
    r = run("export", "--checkpoint", elsewhere / "cnn.pt", "--dir", out, "--data-dir", tiny_export["data"],
            "--targets", "onnx")
    assert r.exit_code == 0, r.output
    assert (out / "cnn.pt").read_bytes() == (elsewhere / "cnn.pt").read_bytes()
    assert json.loads((out / "manifest.json").read_text())["checkpoint"]["file"] == "cnn.pt"
    r = run("verify", "--dir", out, "--data-dir", tiny_export["data"], "--json", "-", *LOOSE)
    assert r.exit_code == 0, r.output
    ref = json.loads(r.stdout)["rows"][0]
    assert ref["id"] == "eager-fp32@torch" and ref["status"] == "ok"


def test_a_missing_checkpoint_makes_the_reference_the_saved_logits_not_a_fail(tiny_export, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_export["out"], out)
    (out / "cnn.pt").unlink()
    r = run("verify", "--dir", out, "--data-dir", tiny_export["data"], "--json", "-", *LOOSE)
    assert r.exit_code == 0, r.output
    ref = json.loads(r.stdout)["rows"][0]
    assert ref["id"] == "eager-fp32@npz" and ref["status"] == "ok"
    assert "checkpoint cnn.pt not in" in ref["reasons"][0]


def test_the_users_own_file_of_that_name_is_never_overwritten(tiny_export, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cnn.pt").write_bytes(b"the user's own file")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tiny_export["out"] / "cnn.pt", elsewhere / "cnn.pt")
    r = run("export", "--checkpoint", elsewhere / "cnn.pt", "--dir", out, "--data-dir", tiny_export["data"],
            "--targets", "onnx")
    assert r.exit_code == 0, r.output
    assert (out / "cnn.pt").read_bytes() == b"the user's own file" and "checkpoint not copied" in r.stderr
    assert json.loads((out / "manifest.json").read_text())["checkpoint"]["file"] is None
