"""Untrusted files: a model that would read the user's files through ONNX Runtime's external data, an
export that would delete files it did not write, compare and outputs files that could be bent, unbounded
reads, images of every bit depth, and one-line errors for wrong types (docs/security.md lists each rule
beside its test)."""

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from helpers import LOOSE, rehash, run

from toolkit import outputs
from toolkit.outputs import OutputsError

set_hash = rehash  # the manifest updated to a file's new bytes, as an attacker would


def one_error(r, code=1) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


# ---------------------------------------------------------------- a model that reads the user's files


def _reads_a_file_below_the_cwd(model_path: Path, location: str) -> bytes:
    """The model's bytes with its last initializer's data moved to `location` (relative to wherever the
    runtime resolves it), the data written there in the cwd: a runtime that follows it loads and runs."""
    import onnx

    m = onnx.load(str(model_path))
    init = m.graph.initializer[-1]
    Path(location).write_bytes(init.raw_data or onnx.numpy_helper.to_array(init).tobytes())
    init.ClearField("raw_data")
    del init.float_data[:]
    del init.int32_data[:]
    init.data_location = onnx.TensorProto.EXTERNAL
    init.external_data.add(key="location", value=location)
    return m.SerializeToString()


def test_an_onnx_file_with_external_data_below_the_cwd_is_refused_on_every_verb(supplier, tiny_export, tmp_path,
                                                                                  monkeypatch):
    """ONNX Runtime, given a model's bytes, resolves an external-data location against the working
    directory: without the check the row loads the user's file, runs and PASSes (tested: it did)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    (supplier / "cnn_int8.onnx").write_bytes(_reads_a_file_below_the_cwd(supplier / "cnn_int8.onnx", "key.bin"))
    set_hash(supplier, "cnn_int8.onnx")
    r = run("verify", "--dir", supplier, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE,
            "--json", "-", "--save-outputs", tmp_path / "o.json")
    assert r.exit_code == 1
    rows = {x["id"]: x for x in json.loads(r.stdout)["rows"]}
    row = rows["onnx-int8@ort-cpu"]
    assert row["status"] == "fail" and "external-data file" in row["reasons"][0], row["reasons"]
    assert rows["onnx-fp32@ort-cpu"]["status"] == "ok"
    assert "onnx-int8@ort-cpu" not in outputs.load(tmp_path / "o.json").logits  # nothing it read is saved
    np.save(tmp_path / "d.npy", np.zeros((28, 28), np.uint8))
    assert "external-data file" in one_error(run("predict", tmp_path / "d.npy", "--model", supplier / "cnn_int8.onnx"))
    err = one_error(run("inspect", "--dir", supplier, "--data-dir", tiny_export["data"], "--repeats", "1",
                        "--images", "10"))
    assert "external-data file" in err


# ---------------------------------------------------------------- export deletes only what it wrote


def _export(tiny_export, out, targets="onnx"):
    return run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", out, "--data-dir",
               tiny_export["data"], "--calibration-size", "100", "--quantize", "--targets", targets)


def test_export_into_a_folder_with_no_manifest_deletes_nothing_of_the_users(tiny_export, tmp_path):
    out = tmp_path / "mine"
    (out / "triton" / "my_model" / "1").mkdir(parents=True)
    (out / "triton" / "my_model" / "1" / "model.onnx").write_bytes(b"the user's own model")
    (out / "required_operators.config").write_text("# the user's own config\n")
    for name in (".export-backup", ".export-cache"):
        (out / name).mkdir()
        (out / name / "pid").write_text("999999999")
        (out / name / "data.txt").write_text("keep me")
        os.utime(out / name, (1, 1))  # hours old
    r = _export(tiny_export, out)
    assert r.exit_code == 0, r.output
    assert (out / "triton" / "my_model" / "1" / "model.onnx").read_bytes() == b"the user's own model"
    assert (out / "required_operators.config").read_text() == "# the user's own config\n"
    assert (out / ".export-backup" / "data.txt").is_file() and (out / ".export-cache" / "pid").is_file()
    assert "removed" not in r.stderr
    assert "left 2 file(s) that no mnisttk export listed with these bytes: required_operators.config, triton" in r.stderr
    assert "left .export-backup alone" in r.stderr and "left .export-cache alone" in r.stderr


def test_export_removes_what_its_previous_export_wrote_and_leaves_what_changed(tiny_export, tmp_path):
    out = tmp_path / "out"
    assert _export(tiny_export, out, "onnx,ort,triton").exit_code == 0
    (out / "cnn_int8.ort").write_bytes(b"edited by the user since")
    r = _export(tiny_export, out, "onnx")
    assert r.exit_code == 0, r.output
    assert not (out / "cnn_fp32.ort").exists() and not (out / "triton").exists()
    assert not (out / "required_operators.config").exists()
    assert (out / "cnn_int8.ort").read_bytes() == b"edited by the user since"
    assert "removed the previous export's cnn_fp32.ort, required_operators.config, triton" in r.stderr
    assert "left 1 file(s) that no mnisttk export listed with these bytes: cnn_int8.ort" in r.stderr


# ---------------------------------------------------------------- the journal key


@pytest.fixture
def state_home(tmp_path, monkeypatch):
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home / "mnisttk"


def test_the_journal_key_is_made_private_and_a_loose_one_is_refused(tiny_export, tmp_path, state_home):
    assert _export(tiny_export, tmp_path / "a").exit_code == 0
    key = state_home / "journal.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(state_home.stat().st_mode) == 0o700
    key.chmod(0o644)
    err = one_error(_export(tiny_export, tmp_path / "b"))
    assert f"the journal key {key} is readable by others (mode 0644); refused" in err
    assert not (tmp_path / "b" / "manifest.json").exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "short"])
def test_a_journal_key_that_is_not_a_private_file_is_refused_in_one_line(tiny_export, tmp_path, state_home, kind):
    state_home.mkdir(parents=True, mode=0o700)
    key = state_home / "journal.key"
    target = tmp_path / "elsewhere.key"
    if kind == "symlink":
        target.write_bytes(os.urandom(32))
        target.chmod(0o600)
        key.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(key, 0o600)  # opening it to read would block without O_NONBLOCK
    else:
        key.write_bytes(b"short")
        key.chmod(0o600)
    err = one_error(_export(tiny_export, tmp_path / "out"))
    assert {"symlink": "is a symbolic link", "fifo": "is not a regular file", "short": "is 5 bytes, not 32"}[kind] in err


def test_a_lost_key_is_said_to_be_missing(tiny_export, tmp_path, state_home):
    from toolkit import publish

    out = tmp_path / "out"
    assert _export(tiny_export, out).exit_code == 0
    stage = publish.Stage(out)
    stage._lock.close()  # as if its export had died
    (state_home / "journal.key").unlink()
    done = publish.recover(out)
    assert stage.dir.exists()  # not provably ours any more: left
    assert any("is missing, so its mark cannot be checked" in d for d in done), done


# ---------------------------------------------------------------- compare and outputs files


N = 200


def _doc(rows: dict, shas=None, statuses=None, n=N):
    labels = np.arange(n) % 10
    rws = [{"id": rid, "name": rid, "runtime": "ORT CPU", "precision": rid.split("-")[1].split("@")[0],
            "fmt": rid.split("-")[0], "file": rid.split("@")[0] + ".onnx", "status": (statuses or {}).get(rid, "ok"),
            "accuracy": None, "latency_us": {"p50": 10.0}, "throughput": 1000.0} for rid in rows]
    logits = {rid: x for rid, x in rows.items() if x is not None}
    result = {"rows": rws, "machine": {"cpu": {"model": "test"}, "arch": "x86_64"}, "threads": 1, "passed": True}
    return outputs.build(result, logits, labels, "a" * 64, shas if shas is not None else {r["file"]: "f" * 64 for r in rws})


def _save(path: Path, doc) -> Path:
    path.write_bytes(outputs.dumps(doc))
    return path


def _rehash(doc):
    doc["sha256"] = hashlib.sha256(outputs._canonical(doc)).hexdigest()
    return doc


def _onehot(n=N):
    x = np.zeros((n, 10), np.float32)
    x[np.arange(n), np.arange(n) % 10] = 5
    return x


def test_compare_fails_when_the_devices_artifact_failed(tmp_path):
    host = _save(tmp_path / "host.json", _doc({"onnx-fp32@ort-cpu": _onehot(), "onnx-int8@ort-cpu": _onehot()}))
    dev = _save(tmp_path / "dev.json", _doc({"onnx-fp32@ort-cpu": _onehot(), "onnx-int8@ort-cpu": None},
                                            statuses={"onnx-int8@ort-cpu": "fail"}))
    r = run("compare", host, dev)
    text = r.output.replace("\n    ", " ")  # lines past 120 columns are wrapped
    assert r.exit_code == 1 and "onnx-int8@ort-cpu on dev.json: outputs in one run only" in text, r.output
    assert text.splitlines()[-1].startswith("FAIL")
    # it ran and failed there: --allow-missing (for a row never run) does not excuse it, --allow-failed does
    assert run("compare", host, dev, "--allow-missing", "onnx-int8@ort-cpu").exit_code == 1
    r = run("compare", host, dev, "--allow-failed", "onnx-int8@ort-cpu")
    assert r.exit_code == 0 and "excused, not compared: onnx-int8@ort-cpu" in r.output.replace("\n    ", " ")


def test_a_default_precision_row_absent_on_a_cpu_without_that_mode_is_only_noted(tmp_path):
    host = _save(tmp_path / "host.json", _doc({"onnx-fp32@openvino": _onehot(), "onnx-fp32@openvino-bf16": _onehot()}))
    dev = _save(tmp_path / "dev.json", _doc({"onnx-fp32@openvino": _onehot()}))
    r = run("compare", host, dev)
    assert r.exit_code == 0 and "exists only on CPUs with that mode" in r.output.replace("\n    ", " "), r.output


def test_compare_refuses_outputs_without_the_artifact_hash_and_a_run_with_itself(tmp_path):
    host = _save(tmp_path / "host.json", _doc({"onnx-int8@ort-cpu": _onehot()}))
    nohash = _save(tmp_path / "nohash.json", _doc({"onnx-int8@ort-cpu": _onehot()}, shas={}))
    assert "nohash.json gives outputs without the SHA-256 of the artifact" in one_error(run("compare", host, nohash))
    assert "nohash.json gives outputs without the SHA-256" in one_error(run("compare", nohash, host))
    err = one_error(run("compare", host, host))
    assert "is the same run as" in err
    copy = _save(tmp_path / "copy.json", json.loads(host.read_bytes()))
    assert "is the same run as" in one_error(run("compare", host, copy))


def test_outputs_files_are_bounded_as_a_whole_before_anything_is_decoded(tmp_path):
    doc = _doc({f"onnx-int8@r{i}": _onehot(10) for i in range(64)}, n=10)
    doc["n_test"] = 10 ** 6  # each row's shape says 10^6 images: a few MB of file, GBs decoded
    for row in doc["rows"]:
        row["logits"]["shape"] = [10 ** 6, 10]
    doc["labels"]["shape"] = [10 ** 6]
    p = _save(tmp_path / "inflate.json", _rehash(doc))
    with pytest.raises(OutputsError, match="would decode to 2,561,000,000 bytes"):
        outputs.load(p)
    (tmp_path / "objects.json").write_text("[" + "{}," * 200_000 + "{}]")
    with pytest.raises(OutputsError, match="more than 100,000 JSON objects and arrays"):
        outputs.load(tmp_path / "objects.json")


@pytest.mark.parametrize("depth", [983, 984, 20_000])
def test_deeply_nested_outputs_are_one_line(tmp_path, depth):
    p = tmp_path / "deep.json"
    p.write_text('{"kind": "mnisttk-outputs", "schema_version": 1, "x": ' + "[" * depth + "]" * depth + "}")
    r = run("compare", p, p)
    assert "not an outputs file" in one_error(r) or "not a readable outputs file" in one_error(r)


@pytest.mark.parametrize("field, value", [("machine", "a string"), ("cpu", ["x"]), ("latency_us", "fast"),
                                          ("throughput", "many"), ("artifact_sha256", 42), ("latency_p50", "x")])
def test_a_field_of_the_wrong_type_is_one_line_naming_it(tmp_path, field, value):
    doc = _doc({"onnx-int8@ort-cpu": _onehot()})
    row = doc["rows"][0]
    if field == "machine":
        doc["machine"] = value
    elif field == "cpu":
        doc["machine"]["cpu"] = value
    elif field == "latency_p50":
        row["latency_us"] = {"p50": value}
    else:
        row[field] = value
    bad = _save(tmp_path / "bad.json", _rehash(doc))
    good = _save(tmp_path / "good.json", _doc({"onnx-int8@ort-cpu": _onehot()}))
    err = one_error(run("compare", good, bad))
    name = {"cpu": "machine.cpu", "latency_p50": "latency_us"}.get(field, field)
    assert f"field {name}" in err, err


def test_an_existing_json_target_that_is_deeply_nested_is_refused_in_one_line(tmp_path):
    target = tmp_path / "env.json"
    target.write_text("[" * 50_000 + "]" * 50_000)
    err = one_error(run("env", "--json", target))
    assert "exists and is not a JSON file" in err and target.read_text().startswith("[[[")


@pytest.mark.parametrize("edit", ["string", "one-item range", "bool"])
def test_a_malformed_not_a_digit_rule_is_one_line(exported, tiny_export, edit):
    m = json.loads((exported / "manifest.json").read_text())
    lim = m["ood"]["limits"]
    if edit == "string":
        lim["energy_min"] = str(lim["energy_min"])
    elif edit == "one-item range":
        lim["ink_fraction"] = lim["ink_fraction"][:1]
    else:
        lim["thickness_max"] = True
    (exported / "manifest.json").write_text(json.dumps(m))
    err = one_error(run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE))
    assert "not-a-digit rule" in err and {"string": "energy_min is a str", "one-item range": "ink_fraction is a list of 1",
                                          "bool": "thickness_max is a bool"}[edit] in err


# ---------------------------------------------------------------- unbounded reads


def test_a_huge_sparse_support_file_is_refused_by_its_size_not_hashed(supplier, tiny_export):
    path = supplier / "required_operators.config"
    with open(path, "r+b") as f:
        f.truncate(1 << 40)  # 1 TB, sparse: hashing it would read for an hour
    r = run("verify", "--dir", supplier, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE, "--json", "-")
    assert r.exit_code == 1
    rows = {x["id"]: x for x in json.loads(r.stdout)["rows"]}
    assert "more than any file mnisttk reads" in rows["ort-int8@ort-cpu"]["reasons"][0]
    assert rows["onnx-int8@ort-cpu"]["status"] == "ok"


def test_inspects_runtime_work_runs_bounded(supplier, tiny_export):
    """inspect's runtime work runs in a bounded child, its bounds options as verify's rows have
    (a Loop of 10^12 iterations held for the built-in 900 s before --row-timeout)."""
    err = one_error(run("inspect", "--dir", supplier, "--data-dir", tiny_export["data"], "--repeats", "1",
                        "--row-timeout", "0.01"))
    assert "inspect's runtime work did not finish within 0.01 s; stopped" in err


# ---------------------------------------------------------------- images of every bit depth


def _digit() -> np.ndarray:
    """A pen-on-paper "1": dark ink on a light page, 56×56."""
    img = np.full((56, 56), 250, np.uint8)
    img[8:48, 26:31] = 10
    return img


@pytest.mark.parametrize("mode", ["16-bit PNG", "32-bit integer TIFF", "float TIFF in [0, 1]", "float TIFF in [0, 255]",
                                  "palette PNG", "grey+alpha PNG"])
def test_images_of_every_bit_depth_read_as_the_same_digit(tiny_export, tmp_path, mode):
    from PIL import Image

    from toolkit.predict import load_gray

    img = _digit()
    make = {"16-bit PNG": lambda: Image.fromarray(img.astype(np.uint16) * 257),
            "32-bit integer TIFF": lambda: Image.fromarray(img.astype(np.int32) * 257),
            "float TIFF in [0, 1]": lambda: Image.fromarray(img.astype(np.float32) / 255),
            "float TIFF in [0, 255]": lambda: Image.fromarray(img.astype(np.float32)),
            "palette PNG": lambda: Image.fromarray(img).convert("P"),
            "grey+alpha PNG": lambda: Image.fromarray(np.stack([img, np.full_like(img, 255)], -1), "LA")}[mode]
    path = tmp_path / ("x.tiff" if "TIFF" in mode else "x.png")
    make().save(path)
    Image.fromarray(img).save(tmp_path / "ref.png")
    assert np.abs(load_gray(path).astype(int) - img).max() <= 1  # scaled, not clipped to blank
    model = tiny_export["out"] / "cnn_int8.onnx"
    a = json.loads(run("predict", path, "--model", model, "--json", "--accept-all").stdout)["results"][0]
    b = json.loads(run("predict", tmp_path / "ref.png", "--model", model, "--json", "--accept-all").stdout)["results"][0]
    assert a["digit"] == b["digit"] and a.get("error") is None


# ---------------------------------------------------------------- OpenVINO's messages


def test_an_openvino_failure_is_one_line_that_says_what_is_wrong():
    pytest.importorskip("openvino")
    from onnx import TensorProto, helper

    from toolkit.errors import ToolkitError
    from toolkit.runtimes.openvino import compile_onnx

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x], [y]))
    with pytest.raises(ToolkitError) as info:
        compile_onnx(model.SerializeToString(), 1, "m.onnx")
    text = str(info.value)
    assert "\n" not in text and "Exception from" not in text and "NoSuchOp" in text, text


# ---------------------------------------------------------------- the working directory is not code


def test_packages_in_the_working_directory_are_never_imported_by_the_children(supplier, tiny_export, tmp_path):
    """Python starts the children's forkserver as `python -c …`, which puts the working directory first
    on sys.path: run from a supplier's folder holding `toolkit/` or `numpy/`, every row's child would
    import (and run) them. The forkserver starts with PYTHONSAFEPATH, so they stay data."""
    import subprocess
    import sys

    evil = tmp_path / "evil"
    for pkg in ("toolkit", "numpy", "onnxruntime"):
        (evil / pkg).mkdir(parents=True)
        (evil / pkg / "__init__.py").write_text(f"open({str(tmp_path / ('ran-' + pkg))!r}, 'w').write('x')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    script = Path(sys.executable).with_name("mnisttk")  # the console script a user runs
    for args in (["env"], ["verify", "--dir", str(supplier), "--data-dir", str(tiny_export["data"]), "--no-torch",
                           *LOOSE]):
        r = subprocess.run([str(script), *args], cwd=evil, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    assert not list(tmp_path.glob("ran-*"))
