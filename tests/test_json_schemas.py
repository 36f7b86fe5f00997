"""Every JSON output validates against its published schema in docs/schemas/ (docs/json.md)."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import LOOSE, run

jsonschema = pytest.importorskip("jsonschema")
SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def check(name: str, doc: dict) -> None:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)


def test_every_output_has_a_schema_and_json_md_names_it():
    text = (SCHEMAS.parent / "json.md").read_text()
    for name in ("data", "env", "train", "export", "verify", "compare", "outputs", "predict", "inspect", "fleet"):
        json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        assert f"schemas/{name}.schema.json" in text, name


def test_outputs_validate(onnx_family_export, tiny_export, tmp_path):
    folder, data = onnx_family_export, tiny_export["data"]
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", "--json", tmp_path / "v.json", "--save-outputs",
            tmp_path / "o.json", *LOOSE)
    assert r.exit_code == 0, r.output
    check("verify", json.loads((tmp_path / "v.json").read_text()))
    check("outputs", json.loads((tmp_path / "o.json").read_text()))
    check("export", json.loads((folder / "manifest.json").read_text()))
    # a failing run validates too (FAIL rows, failed_gates), and so does its comparison
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", "--json", tmp_path / "f.json", "--fp32-atol", "0",
            "--golden", tmp_path / "o.json")
    assert r.exit_code == 1
    check("verify", json.loads((tmp_path / "f.json").read_text()))
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", "--save-outputs", tmp_path / "o2.json", *LOOSE)
    assert r.exit_code == 0, r.output
    assert run("compare", tmp_path / "o.json", tmp_path / "o2.json", "--json", tmp_path / "c.json").exit_code == 0
    check("compare", json.loads((tmp_path / "c.json").read_text()))
    for verb, extra in (("data", ["--data-dir", data]), ("env", []),
                        ("inspect", ["--dir", folder, "--data-dir", data, "--repeats", "2"])):
        r = run(verb, *extra, "--json")
        assert r.exit_code == 0, r.output
        check(verb, json.loads(r.stdout))
    np.save(tmp_path / "d.npy", (np.arange(28 * 28).reshape(28, 28) % 9 == 0).astype(np.uint8) * 255)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    r = run("predict", tmp_path / "d.npy", tmp_path / "bad.png", "--model", folder / "cnn_int8.onnx", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    check("predict", doc)
    assert {"error"} <= set(doc["results"][1]) and "digit" in doc["results"][0]


def test_train_json_validates(tiny_dir, tmp_path):
    r = run("train", "--data-dir", tiny_dir, "--epochs", 1, "--batch-size", 20, "--checkpoint", tmp_path / "m.pt",
            "--device", "cpu", "-q", "--json")
    assert r.exit_code == 0, r.output
    check("train", json.loads(r.stdout))


def test_a_schema_rejects_what_breaks_its_contract(onnx_family_export, tiny_export, tmp_path):
    r = run("verify", "--dir", onnx_family_export, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE, "--json")
    doc = json.loads(r.stdout)
    for broken in ({k: v for k, v in doc.items() if k != "passed"},
                   {**doc, "schema_version": 2},
                   {**doc, "rows": [{**doc["rows"][1], "status": "FAIL"}]}):
        with pytest.raises(jsonschema.ValidationError):
            check("verify", broken)
