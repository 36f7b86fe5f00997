"""The manifest's decisions on untrusted input, each at its bound and one step past it, on files built here
(fast: the mutation selection runs them): validation with the exact line it refuses with, names confined to
the folder, loading, and the hash check of every listed file."""

import copy
import json
import os
from pathlib import Path

import pytest
from helpers import valid_manifest

from toolkit import manifest as mf
from toolkit.errors import ManifestError
from toolkit.fsutil import TooLarge


def _refused(tmp_path, m, what):
    """validate_manifest refuses `m` with exactly the line that names the manifest file and `what`."""
    path = tmp_path / "manifest.json"
    with pytest.raises(ManifestError) as e:
        mf.validate_manifest(m, tmp_path)
    assert str(e.value) == f"{path}: not a valid mnisttk manifest: {what} (re-run `mnisttk export`)"


def _bent(change):
    m = valid_manifest()
    change(m)
    return m


def test_each_shape_fault_is_one_line_naming_the_manifest_and_the_fault(tmp_path):
    known_formats, known_precisions = ", ".join(mf.FORMATS), ", ".join(mf.PRECISIONS)
    cases = [
        (lambda m: m.clear(), None),  # replaced below: the top level itself
        (lambda m: m.update(artifacts={}), "'artifacts' is not a list"),
        (lambda m: m.update(artifacts=[]), "it lists no artifacts"),
        (lambda m: m["artifacts"].__setitem__(0, []), "artifacts[0] is list, not an object"),
        (lambda m: m["artifacts"][1].pop("sha256"), "artifacts[1] has no 'sha256'"),
        (lambda m: m["artifacts"][0].update(format=7), "artifacts[0].format is 7, not a str"),
        (lambda m: m["artifacts"][0].update(size_bytes="1" * 60), f"artifacts[0].size_bytes is \"{'1' * 39}, not a "
                                                                  "non-negative integer"),
        (lambda m: m["artifacts"][0].update(size_bytes=True), "artifacts[0].size_bytes is true, not a non-negative integer"),
        (lambda m: m["artifacts"][0].update(size_bytes=1.0), "artifacts[0].size_bytes is 1.0, not a non-negative integer"),
        (lambda m: m["artifacts"][0].update(sha256="AB" * 32), "artifacts[0].sha256 is not 64 lower-case hex digits"),
        (lambda m: m["artifacts"][0].update(sha256="ab" * 32 + "\n"), "artifacts[0].sha256 is not 64 lower-case hex digits"),
        (lambda m: m["artifacts"][0].update(format="coreml"),
         f"artifacts[0] has unknown format 'coreml' (known: {known_formats})"),
        (lambda m: m["artifacts"][0].update(precision="fp16"),
         f"artifacts[0] has unknown precision 'fp16' (known: {known_precisions})"),
        (lambda m: m.pop("reference"), "reference is NoneType, not an object"),
        (lambda m: m["checkpoint"].pop("path"), "checkpoint has no 'path'"),
        (lambda m: m.update(support_files={}), "'support_files' is not a list"),
        (lambda m: m["support_files"][0].pop("file"), "support_files[0] has no 'file'"),
        (lambda m: m["artifacts"][2].update(static_batch="x" * 50), f"artifacts[2].static_batch is \"{'x' * 39}, not 1 "
                                                                   "(an artifact runs at batch 1; larger batches are "
                                                                   "batch_files)"),
        (lambda m: m["artifacts"][2].update(batch_files={}), "artifacts[2].batch_files is not a list"),
        (lambda m: m["artifacts"][2]["batch_files"][0].pop("batch"), "artifacts[2].batch_files[0] has no 'batch'"),
        (lambda m: m["artifacts"][2]["batch_files"][0].update(batch=1),
         "artifacts[2].batch_files[0].batch 1 is not a new batch size from 2 to 65536 (the artifact itself is batch 1)"),
        (lambda m: m["artifacts"][2]["batch_files"][0].update(sha256="cd" * 32),
         "artifacts[2].batch_files[0] is not a listed support file with that SHA-256"),
        (lambda m: m["artifacts"][0].update(batch_files=[{"file": "x", "sha256": "ab" * 32, "batch": 4}]),
         "artifacts[0] is onnx, which has no batch files"),
        (lambda m: m["artifacts"][0].update(weights={"file": "x", "sha256": "ab" * 32}),
         "artifacts[0] is onnx, which has no weights file"),
        (lambda m: m["artifacts"][3].update(weights=[]), "artifacts[3].weights is list, not an object"),
        (lambda m: m["artifacts"][3]["weights"].update(sha256="cd" * 32),
         "artifacts[3].weights is not a listed support file with that SHA-256"),
        (lambda m: m["support_files"].append({"file": "reference.npz", "sha256": "ab" * 32}), "a file is listed twice"),
        (lambda m: m.pop("targets"), "'targets' is not a list of names"),
        (lambda m: m.update(targets="onnx-fp32"), "'targets' is not a list of names"),
        (lambda m: m["targets"].append(3), "'targets' is not a list of names"),
        (lambda m: m["targets"].append("coreml-fp32"),
         f"unknown target 'coreml-fp32' (known: {', '.join(mf.KNOWN_TARGETS)})"),
        (lambda m: m["targets"].remove("onnx-fp32"), "target onnx-fp32 missing: every export writes it"),
        (lambda m: m["targets"].append("ort-int8"), "target ort-int8 has 0 artifacts, expected exactly one"),
        (lambda m: m["targets"].remove("tflite-int8"), "artifact of target tflite-int8 was not asked for in 'targets'"),
        (lambda m: m.update(not_exported={}), "'not_exported' is not a list"),
        (lambda m: m.update(not_exported=[{"target": "ort-int8"}]), "not_exported[0] has no 'reason'"),
        (lambda m: m.update(not_exported=[{"target": "tflite-int8", "reason": "r"}]),
         "not_exported[0] is not a known target left out of 'targets' with a short reason"),
        (lambda m: m.update(classes="0123456789"), "'classes' is not a list of 2 to 1000 class names"),
        (lambda m: m.update(classes=["a", 2]), "'classes' is not a list of 2 to 1000 class names"),
        (lambda m: m.update(targets=["onnx-fp32"], artifacts=m["artifacts"][:1], support_files=[]),
         "it records a calibration but no int8 target"),
    ]
    with pytest.raises(ManifestError) as e:
        mf.validate_manifest([], tmp_path)
    assert str(e.value) == (f"{tmp_path / 'manifest.json'}: not a valid mnisttk manifest: the top level is not an "
                            "object (re-run `mnisttk export`)")
    for change, what in cases[1:]:
        _refused(tmp_path, _bent(change), what)
    # where it was read from, when the caller says
    with pytest.raises(ManifestError, match=r"^/elsewhere/m.json: not a valid mnisttk manifest: it lists no artifacts"):
        mf.validate_manifest(_bent(lambda m: m.update(artifacts=[])), tmp_path, Path("/elsewhere/m.json"))
    with pytest.raises(ManifestError, match=r"manifest version 1, this mnisttk reads 2 \(re-run `mnisttk export` with"):
        mf.validate_manifest(_bent(lambda m: m.update(schema_version=1)), tmp_path)
    # each at its own bound: valid
    def onnx_only(m):  # no support files, no class names: both optional
        del m["support_files"], m["classes"]
        m.update(artifacts=m["artifacts"][:2], targets=["onnx-fp32", "onnx-int8"])

    for change in (lambda m: m.update(classes=["a", "b"]), lambda m: m.update(classes=["x" * 64] * 256),
                   lambda m: m["artifacts"][0].update(size_bytes=0), onnx_only,
                   lambda m: m["artifacts"][2]["batch_files"][0].update(batch=65536),
                   lambda m: m.update(not_exported=[{"target": "ort-int8", "reason": "r" * 400}])):
        m = _bent(change)
        assert mf.validate_manifest(copy.deepcopy(m), tmp_path) == m


def test_a_name_is_a_plain_relative_path_that_resolves_inside_the_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a b.onnx").write_bytes(b"x")  # a space is a character like any other
    assert mf.confined_path(tmp_path, "a b.onnx") == tmp_path / "a b.onnx"
    assert mf.confined_path(tmp_path, "sub/m.xml", subpath=True) == tmp_path / "sub" / "m.xml"
    for bad in ("", None, 3, b"x.onnx"):
        with pytest.raises(ManifestError, match=f"^manifest: weights name {bad!r} is not a file name$".replace("(", r"\(")):
            mf.confined_path(tmp_path, bad, "weights")
    for bad in (str(tmp_path / "x"), "a\\b", "a\0b", "a\nb", "a\x1fb", ".", "..", "sub/m.xml"):
        with pytest.raises(ManifestError) as e:
            mf.confined_path(tmp_path, bad)
        assert str(e.value) == f"manifest: file {bad!r} is not a plain file name inside the folder; refused"
    for bad in ("sub//m.xml", "sub/./m.xml", "sub/../m.xml", "/sub/m.xml", "sub/"):
        with pytest.raises(ManifestError) as e:
            mf.confined_path(tmp_path, bad, "support", subpath=True)
        assert str(e.value) == f"manifest: support {bad!r} is not a plain relative path inside the folder; refused"
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link.onnx").symlink_to(outside / "x.onnx")
    (tmp_path / "sub" / "up").symlink_to(outside)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for name, subpath in (("link.onnx", False), ("sub/up/x", True), ("loop", False)):
        with pytest.raises(ManifestError) as e:
            mf.confined_path(tmp_path, name, subpath=subpath)
        assert str(e.value) == f"manifest: file {name!r} resolves outside {tmp_path}; refused"
    (tmp_path / "sub" / "in").symlink_to(tmp_path / "sub")  # a link that stays inside is inside
    assert mf.confined_path(tmp_path, "sub/in/m.xml", subpath=True) == tmp_path / "sub" / "in" / "m.xml"
    (tmp_path / "in").symlink_to(tmp_path / "sub" / "m.xml")  # a plain name must resolve into the folder itself
    with pytest.raises(ManifestError, match="resolves outside"):
        mf.confined_path(tmp_path, "in")


def _write(tmp_path, m) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(m))


def test_loading_refuses_what_is_not_a_manifest_file_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    with pytest.raises(ManifestError, match=r"^.*manifest.json: no manifest \(run `mnisttk export --quantize` first\)$"):
        mf.load_manifest(tmp_path)
    path.mkdir()
    with pytest.raises(ManifestError, match=r"manifest.json: not a regular file$"):
        mf.load_manifest(tmp_path)
    path.rmdir()
    other = tmp_path.parent / f"{tmp_path.name}-m.json"
    other.write_text(json.dumps(valid_manifest()))
    path.symlink_to(other)
    with pytest.raises(ManifestError, match="manifest 'manifest.json' resolves outside"):
        mf.load_manifest(tmp_path)
    path.unlink()
    _write(tmp_path, valid_manifest())
    assert mf.load_manifest(tmp_path) == valid_manifest()
    monkeypatch.setattr(mf, "MAX_MANIFEST_BYTES", path.stat().st_size)  # at its bound: read
    assert mf.load_manifest(tmp_path) == valid_manifest()
    monkeypatch.setattr(mf, "MAX_MANIFEST_BYTES", path.stat().st_size - 1)
    with pytest.raises(ManifestError, match=f": {path.stat().st_size:,} bytes is far too large for a manifest; refused$"):
        mf.load_manifest(tmp_path)
    monkeypatch.undo()
    for text, why in (('{"a": NaN}', r"\(NaN is not a number a manifest may hold\)"),
                      ('{"a": Infinity}', r"\(Infinity is not a number a manifest may hold\)"),
                      ("{", r"\(Expecting property name"), ("[" * 100_000, r"\(JSON nested too deeply\)")):
        path.write_text(text)
        with pytest.raises(ManifestError, match=r"manifest.json: not a readable mnisttk manifest " + why):
            mf.load_manifest(tmp_path)
    _write(tmp_path, {**valid_manifest(), "targets": []})  # read, then validated as this folder's manifest
    with pytest.raises(ManifestError) as e:
        mf.load_manifest(tmp_path)
    assert str(e.value) == (f"{path}: not a valid mnisttk manifest: target onnx-fp32 missing: every export writes it "
                            "(re-run `mnisttk export`)")


def _listed(tmp_path, files: dict) -> dict:
    """A manifest listing `files` (name -> bytes) with their true hashes and sizes; the first is the artifact."""
    from toolkit.fsutil import sha256_bytes

    names = list(files)
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    entry = {"file": names[0], "sha256": sha256_bytes(files[names[0]]), "size_bytes": len(files[names[0]])}
    return {"artifacts": [entry], "reference": {"file": names[1], "sha256": sha256_bytes(files[names[1]])},
            "support_files": [{"file": n, "sha256": sha256_bytes(files[n])} for n in names[2:]]}


def test_every_listed_file_is_hashed_no_further_than_its_size(tmp_path, monkeypatch):
    m = _listed(tmp_path, {"m.onnx": b"model", "reference.npz": b"ref", "ir/w.bin": b"weights"})
    assert [r["status"] for r in mf.check_hashes(tmp_path, {**m, "support_files": []})] == ["ok", "ok"]
    no_support = {k: v for k, v in m.items() if k != "support_files"}
    assert [r["file"] for r in mf.check_hashes(tmp_path, no_support)] == ["m.onnx", "reference.npz"]
    assert mf.check_hashes(tmp_path, m) == [{"file": "m.onnx", "status": "ok"}, {"file": "reference.npz", "status": "ok"},
                                            {"file": "ir/w.bin", "status": "ok"}]

    def status(change=None):
        bent = copy.deepcopy(m)
        (change or (lambda x: None))(bent)
        return [r["status"] for r in mf.check_hashes(tmp_path, bent)]

    (tmp_path / "reference.npz").write_bytes(b"REF")  # the same size, other bytes
    assert status() == ["ok", "changed", "ok"]
    (tmp_path / "reference.npz").write_bytes(b"ref")
    (tmp_path / "m.onnx").write_bytes(b"model!")  # another size than listed: changed without hashing
    hashed = []
    monkeypatch.setattr(mf, "sha256_file", lambda path, max_bytes=None: hashed.append(path.name) or "0" * 64)
    assert status()[0] == "changed" and hashed == ["reference.npz", "w.bin"]
    monkeypatch.undo()
    (tmp_path / "m.onnx").write_bytes(b"model")
    assert status(lambda x: x["artifacts"][0].update(sha256="0" * 64)) == ["changed", "ok", "ok"]
    assert status(lambda x: x["artifacts"][0].pop("size_bytes")) == ["ok", "ok", "ok"]  # no size: hashed to the bound
    os.remove(tmp_path / "ir" / "w.bin")
    (tmp_path / "ir" / "w.bin").mkdir()
    assert status() == ["ok", "ok", "not a regular file"]
    (tmp_path / "ir" / "w.bin").rmdir()
    assert status() == ["ok", "ok", "missing"]
    (tmp_path / "ir" / "w.bin").write_bytes(b"weights")
    monkeypatch.setattr(mf, "MAX_LISTED_BYTES", 5)  # exactly at the bound: hashed; one byte past: refused unread
    assert status() == ["ok", "ok", "changed (7 bytes, more than any file mnisttk reads)"]
    monkeypatch.setattr(mf, "MAX_LISTED_BYTES", 7)
    assert status() == ["ok", "ok", "ok"]
    monkeypatch.setattr(mf, "MAX_LISTED_BYTES", 4)
    assert status()[0] == "changed (5 bytes, more than any file mnisttk reads)"
    monkeypatch.undo()

    def grows(path, max_bytes=None):
        raise TooLarge(f"{path}: more than {max_bytes}")

    monkeypatch.setattr(mf, "sha256_file", grows)
    assert status() == ["changed (it grew while being read)"] * 3
    seen = []
    monkeypatch.setattr(mf, "sha256_file", lambda path, max_bytes=None: seen.append(max_bytes) or "0" * 64)
    status()
    assert seen == [5, mf.MAX_LISTED_BYTES, mf.MAX_LISTED_BYTES]  # a listed size bounds the read; else the bound

    def unreadable(path, max_bytes=None):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mf, "sha256_file", unreadable)
    assert status() == ["unreadable (Permission denied)"] * 3
    (tmp_path / "out.onnx").symlink_to(tmp_path.parent)
    with pytest.raises(ManifestError, match="resolves outside"):
        status(lambda x: x["artifacts"][0].update(file="out.onnx"))


def test_what_an_export_records_of_each_artifact(tmp_path):
    f = tmp_path / "cnn_int8.onnx"
    f.write_bytes(b"12345")
    spec = mf.io_spec("onnx", True, num_classes=5)
    assert spec == {"inputs": [{"name": mf.BY_NAME["onnx"].input_name, "dtype": "uint8", "shape": ["batch", 1, 28, 28],
                                "values": "raw pixels 0-255"}],
                    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 5]}]}
    assert mf.io_spec("onnx", False)["inputs"][0] | {"name": None} == {
        "name": None, "dtype": "float32", "shape": ["batch", 1, 28, 28], "values": "pixel/255 in [0, 1]"}
    assert mf.io_spec("onnx", False)["outputs"][0]["shape"] == ["batch", 10]
    e = mf.artifact_entry(f, "onnx", "int8", {"scale": 0.1}, 17, 0.98, uint8_input=True, extra={"delegation": "x"},
                          num_classes=5)
    assert e == {"file": "cnn_int8.onnx", "format": "onnx", "precision": "int8",
                 "sha256": "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5", "size_bytes": 5, **spec,
                 "opset": 17, "test_accuracy": 0.98, "quant_params": {"scale": 0.1}, "delegation": "x"}
    e = mf.artifact_entry(f, "onnx", "fp32", None, None, 0.5, file="sub/x.onnx")
    assert e["file"] == "sub/x.onnx" and "quant_params" not in e and e["opset"] is None
    assert e["inputs"][0]["dtype"] == "float32" and e["outputs"][0]["shape"] == ["batch", 10]
    assert mf.targets_for(("tflite", "onnx"), quantize=True) == ["onnx-fp32", "tflite-fp32", "onnx-int8", "tflite-int8"]
    assert mf.targets_for(("onnx",), quantize=False) == ["onnx-fp32"]
    assert mf.classes_of({}) == tuple("0123456789") and mf.classes_of({"classes": ["a", "b"]}) == ("a", "b")
    m = {"artifacts": [], "support_files": [{"file": "w.bin", "size_bytes": 7}, {"file": "b.tflite", "size_bytes": 100}]}
    assert mf.deployed_bytes(m, {"size_bytes": 3, "weights": {"file": "w.bin"}}) == 10  # an IR ships its weights
    assert mf.deployed_bytes(m, {"size_bytes": 3, "batch_files": [{"file": "b.tflite"}]}) == 3  # an alternative
    assert mf.deployed_bytes({"artifacts": []}, {"size_bytes": 3, "weights": {"file": "w.bin"}}) == 3  # none listed
    m["support_files"][0].pop("size_bytes")
    assert mf.deployed_bytes(m, {"size_bytes": 3, "weights": {"file": "w.bin"}}) == 3  # listed without a size
    mf.write_manifest(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 1\n}\n'
    with pytest.raises(ValueError):
        mf.write_manifest(tmp_path / "n.json", {"a": float("nan")})
    assert mf.ood_rule({}, tmp_path) is None and mf.ood_rule({"ood": None}, tmp_path) is None
    limits = {k: 1.0 for k in ("energy_min", "logit_distance_max", "thickness_max", "page_ink_max")}
    rule = {"version": 1, "limits": {**limits, "ink_fraction": [0.1, 0.5]},
            "logit_model": {"means": [[1.0, 0.0], [0.0, 1.0]], "precision": [[1.0, 0.0], [0.0, 1.0]]}}
    assert mf.ood_rule({"ood": rule, "classes": ["a", "b"]}, tmp_path) == rule
    with pytest.raises(ManifestError, match="its not-a-digit rule \\(ood\\) is for 2 classes, the export's model has 10"):
        mf.ood_rule({"ood": rule}, tmp_path)  # a rule for another class count than the model's: refused
    with pytest.raises(ManifestError) as e:
        mf.ood_rule({"ood": {"version": 99}}, tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'manifest.json'}: its not-a-digit rule (ood): not a version ")
