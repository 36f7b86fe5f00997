"""A folder from someone else is untrusted input: checking it never writes, deletes or reads outside
it, a crafted folder never PASSes, and a hostile model is bounded in time, memory and crashes.
Each case is one an attacker supplying a folder (or a user's slip) can produce."""

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import LOOSE, rehash, run, valid_manifest


def tree(folder: Path) -> dict:
    """Every entry under `folder` (hidden ones included, links not followed): its kind and bytes."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                out[rel] = ("file", p.read_bytes())
            else:
                out[rel] = ("dir", None)
    return out


set_hash = rehash  # the manifest updated to a file's new bytes, as an attacker would


def verify(folder, data, *args):
    return run("verify", "--dir", folder, "--data-dir", data, "--no-torch", *LOOSE, *args)


def rows(r) -> dict:
    return {x["id"]: x for x in json.loads(r.stdout)["rows"]}


def one_error(r, code=1):
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


def evil_stage(folder: Path, journal: dict, name=".export-evil") -> Path:
    stage = folder / name
    stage.mkdir()
    (stage / "pid").write_text("999999999")
    (stage / "JOURNAL.json").write_text(json.dumps(journal))
    return stage


# ---------------------------------------------------------------- writes outside the folder


def test_verify_never_acts_on_a_journal_and_writes_nothing(supplier, tiny_export, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "somedir").mkdir()
    evil_stage(supplier, {"replace": [str(victim), "../somedir"], "existed": [], "committed": False})
    before = tree(supplier)
    r = verify(supplier, tiny_export["data"])
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "keep me" and (tmp_path / "somedir").is_dir()
    assert tree(supplier) == before  # not a byte written, locked or cleaned up in the folder


def test_export_refuses_a_journal_it_did_not_write(supplier, tiny_export, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "somedir").mkdir()
    # names that escape, and a forged journal with plain names and a made-up mac
    evil_stage(supplier, {"replace": [str(victim), "../somedir"], "existed": [], "committed": False})
    evil_stage(supplier, {"pid": 1, "replace": ["cnn_fp32.onnx"], "existed": [], "committed": False, "mac": "0" * 64},
               name=".export-forged")
    onnx_before = (supplier / "cnn_fp32.onnx").read_bytes()
    r = run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", supplier, "--data-dir",
            tiny_export["data"], "--targets", "onnx")
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "keep me" and (tmp_path / "somedir").is_dir()
    assert "left .export-evil alone" in r.stderr and "left .export-forged alone" in r.stderr
    assert (supplier / ".export-forged").is_dir()  # left for a person to look at, nothing rolled back
    assert (supplier / "cnn_fp32.onnx").read_bytes() == onnx_before  # same checkpoint, same bytes


def test_a_lock_that_is_a_link_creates_nothing_outside(supplier, tiny_export, tmp_path):
    stage = evil_stage(supplier, {"replace": [], "existed": [], "committed": False})
    target = tmp_path / "created-by-lock"
    (stage / ".lock").symlink_to(target)
    r = run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", supplier, "--data-dir",
            tiny_export["data"], "--targets", "onnx")
    assert r.exit_code == 0, r.output
    assert not os.path.lexists(target)
    assert "its lock is not a plain file" in r.stderr


def test_a_journal_of_our_own_is_rolled_back(supplier, tiny_export, monkeypatch):
    """The recovery that stays: an export of ours killed mid-publish is undone by the next export."""
    import toolkit.publish as pub

    stage = pub.Stage(supplier)
    (stage.new / "cnn_fp32.onnx").write_bytes(b"half-published")
    original = (supplier / "cnn_fp32.onnx").read_bytes()
    calls = {"n": 0}
    real = pub._rename

    def die_after_first(src, dst):
        real(src, dst)
        calls["n"] += 1
        raise SystemExit("killed")  # not rolled back by publish: as if the process died here

    monkeypatch.setattr(pub, "_rollback", lambda *a: None)
    monkeypatch.setattr(pub, "_rename", die_after_first)
    with pytest.raises(SystemExit):
        pub.publish(stage, ["cnn_fp32.onnx"])
    monkeypatch.undo()
    assert (supplier / "cnn_fp32.onnx").read_bytes() == b"half-published"
    stage._lock.close()  # the "dead" export's lock is released
    # the same journal moved to another folder is not trusted there (its mark binds the stage's path)
    moved = supplier.parent / f"{supplier.name}-moved"
    shutil.copytree(supplier, moved, symlinks=True)
    done = pub.recover(moved)
    assert not any("restored" in d for d in done) and any("left" in d and "alone" in d for d in done), done
    assert (moved / "cnn_fp32.onnx").read_bytes() == b"half-published"
    done = pub.recover(supplier)
    assert any("previous artifacts restored" in d for d in done), done
    assert (supplier / "cnn_fp32.onnx").read_bytes() == original


def test_a_manifest_that_is_a_link_out_is_refused(supplier, tiny_export, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(supplier, elsewhere)
    (supplier / "manifest.json").unlink()
    (supplier / "manifest.json").symlink_to(elsewhere / "manifest.json")
    err = one_error(verify(supplier, tiny_export["data"]))
    assert "resolves outside" in err


# ---------------------------------------------------------------- false PASS


def test_a_batch_file_cannot_stand_in_for_the_artifact(supplier, tiny_export):
    (supplier / "cnn_int8.onnx").write_text("not a model at all")
    set_hash(supplier, "cnn_int8.onnx")
    m = json.loads((supplier / "manifest.json").read_text())
    m["support_files"].append({"file": "real.onnx", "sha256": hashlib.sha256(b"x").hexdigest()})
    (supplier / "real.onnx").write_bytes(b"x")
    a = next(a for a in m["artifacts"] if a["file"] == "cnn_int8.onnx")
    a["batch_files"] = [{"file": "real.onnx", "sha256": hashlib.sha256(b"x").hexdigest(), "batch": 1}]
    (supplier / "manifest.json").write_text(json.dumps(m))
    err = one_error(verify(supplier, tiny_export["data"]))
    assert "has no batch files" in err or "not a new batch size" in err


@pytest.mark.parametrize("batch, ok", [(1, False), (2, True), (65536, True), (65537, False)])
def test_batch_file_sizes_at_and_past_their_limits(supplier, batch, ok):
    from toolkit.errors import ManifestError
    from toolkit.manifest import validate_manifest

    m = json.loads((supplier / "manifest.json").read_text())
    m["artifacts"] = [dict(a, format="tflite", batch_files=[{"file": "b.tflite", "sha256": "a" * 64, "batch": batch}])
                      if a["file"] == "cnn_int8.onnx" else a for a in m["artifacts"]]
    m["targets"] = [t for t in m["targets"] if t != "onnx-int8"] + ["tflite-int8"]
    m["support_files"].append({"file": "b.tflite", "sha256": "a" * 64})
    if ok:
        validate_manifest(m, supplier)
    else:
        with pytest.raises(ManifestError, match="not a new batch size"):
            validate_manifest(m, supplier)


@pytest.mark.parametrize("value", ["abc", None, 0, 2, True])
def test_static_batch_must_be_one(supplier, tiny_export, value):
    m = json.loads((supplier / "manifest.json").read_text())
    m["artifacts"][0]["static_batch"] = value
    (supplier / "manifest.json").write_text(json.dumps(m))
    assert "static_batch" in one_error(verify(supplier, tiny_export["data"]))


def test_an_edited_triton_config_fails_its_row(supplier, tiny_export):
    config = supplier / "triton" / "cnn_int8" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 256", "max_batch_size: 0"))
    set_hash(supplier, "triton/cnn_int8/config.pbtxt")  # even with the hash updated
    r = verify(supplier, tiny_export["data"], "--json", "-")
    assert r.exit_code == 1, r.output
    row = rows(r)["triton-int8@ort-cpu"]
    assert row["status"] == "fail" and "max_batch_size 0" in row["reasons"][0]
    assert rows(r)["triton-fp32@ort-cpu"]["status"] == "ok"


def test_a_config_with_another_input_type_fails_and_an_unhashed_edit_fails(supplier, tiny_export):
    config = supplier / "triton" / "cnn_fp32" / "config.pbtxt"
    text = config.read_text()
    config.write_text(text.replace("TYPE_FP32", "TYPE_UINT8", 1))
    r = verify(supplier, tiny_export["data"], "--json", "-")
    row = rows(r)["triton-fp32@ort-cpu"]
    assert row["status"] == "fail" and "changed since export" in row["reasons"][0]
    set_hash(supplier, "triton/cnn_fp32/config.pbtxt")
    r = verify(supplier, tiny_export["data"], "--json", "-")
    row = rows(r)["triton-fp32@ort-cpu"]
    assert row["status"] == "fail" and "TYPE_UINT8" in row["reasons"][0], row


def test_a_deleted_support_file_fails_the_rows_it_supports(supplier, tiny_export):
    (supplier / "required_operators.config").unlink()
    r = verify(supplier, tiny_export["data"], "--json", "-")
    assert r.exit_code == 1
    got = rows(r)
    assert got["ort-int8@ort-cpu"]["status"] == "fail" and "required_operators.config" in got["ort-int8@ort-cpu"]["reasons"][0]
    assert got["onnx-int8@ort-cpu"]["status"] == "ok"


def test_the_bytes_must_be_the_format_the_manifest_names(supplier, tiny_export):
    shutil.copyfile(supplier / "cnn_int8.onnx", supplier / "cnn_int8.ort")  # ONNX bytes in a .ort
    set_hash(supplier, "cnn_int8.ort")
    shutil.copyfile(supplier / "cnn_fp32.ort", supplier / "cnn_fp32.onnx")  # ORT bytes in an .onnx
    set_hash(supplier, "cnn_fp32.onnx")
    r = verify(supplier, tiny_export["data"], "--json", "-")
    assert r.exit_code == 1
    got = rows(r)
    assert "listed as ort, but its bytes are an ONNX model" in got["ort-int8@ort-cpu"]["reasons"][0]
    assert "listed as onnx, but its bytes are an ONNX Runtime .ort model" in got["onnx-fp32@ort-cpu"]["reasons"][0]


def test_sniffing_each_kind():
    from toolkit.formats import sniff

    assert sniff(b"\x08\x07\x12\x07pytorch") == "onnx"
    assert sniff(b"\x1c\x00\x00\x00ORTM....") == "ort"
    assert sniff(b"\x1c\x00\x00\x00TFL3....") == "tflite"
    assert sniff(b"\x1c\x00\x00\x00ET12....") == "pte"
    assert sniff(b"PK\x03\x04........") == "zip"
    assert sniff(b"  \n<?xml version='1.0'?><net/>") == "ir" and sniff(b"<net><?xml?></net>") is None
    assert sniff(b"hello world") is None and sniff(b"\x08") is None
    assert sniff(b"\x08" * 7) is None and sniff(b"\x08" * 8) == "onnx"  # 8 bytes are the fewest it reads
    assert sniff(b"\x1c\x00\x00\x00ETab....") is None and sniff(b"\x1c\x00\x00\x00E12.....") is None
    assert sniff(b"\x1c\x00\x00\x00ETa1....") is None and sniff(b"\x1c\x00\x00\x00ET1a....") is None
    assert sniff(b"PK\x03\x05........") is None
    # a ModelProto starts with one of its fields' tags (from onnx's own schema): each one is ONNX, a
    # neighbouring byte is not
    import onnx
    from google.protobuf.descriptor import FieldDescriptor

    def first_byte(field):
        tag = field.number << 3 | (0 if field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32) else 2)
        return tag if tag < 0x80 else (tag & 0x7F) | 0x80

    tags = {first_byte(f) for f in onnx.ModelProto.DESCRIPTOR.fields}
    assert {0x08, 0x3A, 0xCA, 0xD2} <= tags  # ir_version, graph, functions (25), configuration (26)
    for tag in tags:
        assert sniff(bytes([tag]) + b"\x01" * 7) == "onnx", hex(tag)
    for other in sorted({t + d for t in tags for d in (-1, 1)} - tags):
        assert sniff(bytes([other]) + b"\x01" * 7) is None, hex(other)


def test_check_kind_refuses_other_bytes_in_one_line_and_passes_its_own():
    from toolkit.errors import ManifestError
    from toolkit.formats import KIND_OF_FORMAT, check_kind

    samples = {"onnx": b"\x08\x07\x12\x07pytorch", "ort": b"\x1c\x00\x00\x00ORTM....",
               "tflite": b"\x1c\x00\x00\x00TFL3....", "pte": b"\x1c\x00\x00\x00ET12....",
               "zip": b"PK\x03\x04........", "ir": b"<?xml version='1.0'?>"}
    for fmt, kind in KIND_OF_FORMAT.items():
        check_kind(samples[kind], fmt, "m")  # its own bytes pass
        for other, data in samples.items():
            if other != kind:
                with pytest.raises(ManifestError, match=f"^m: listed as {fmt}, but its bytes are "):
                    check_kind(data, fmt, "m")
    with pytest.raises(ManifestError, match=r"^m: listed as onnx, but its bytes are an ONNX Runtime \.ort model"):
        check_kind(samples["ort"], "onnx", "m")  # what the bytes are, named
    with pytest.raises(ManifestError, match="its bytes are not a model file mnisttk knows; refused"):
        check_kind(b"hello world", "onnx", "m")
    check_kind(b"anything", "not-a-format", "m")  # an unknown format is the manifest check's to refuse


# ---------------------------------------------------------------- bounded work


def _loop_model(path: Path, trips: int = 10**12) -> None:
    """An ONNX model that passes the I/O check (float N×1×28×28 -> float N×10) and loops `trips` times."""
    import onnx
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    w = helper.make_tensor("w", TensorProto.FLOAT, [784, 10], np.zeros(7840, np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("t", TensorProto.INT64, [], [trips])),
         helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
         helper.make_node("Loop", ["trips", "cond", "image"], ["looped"], body=body),
         helper.make_node("Flatten", ["looped"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "loop", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_model_that_never_finishes_is_a_fail_row_and_the_report_is_written(supplier, tiny_export, tmp_path):
    _loop_model(supplier / "cnn_fp32.onnx")
    set_hash(supplier, "cnn_fp32.onnx")
    t0 = time.monotonic()
    r = verify(supplier, tiny_export["data"], "--row-timeout", "3", "--json", tmp_path / "r.json")
    assert r.exit_code == 1, r.output
    assert time.monotonic() - t0 < 120  # bounded (the hang alone would be years); not a speed test
    got = {x["id"]: x for x in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert "did not finish within 3 s" in got["onnx-fp32@ort-cpu"]["reasons"][0]
    assert got["onnx-int8@ort-cpu"]["status"] == "ok"  # the rest of the report still ran


def test_predict_stops_a_model_that_never_finishes(tmp_path):
    from PIL import Image

    _loop_model(tmp_path / "loop.onnx")
    img = np.zeros((28, 28), np.uint8)
    img[6:22, 12:16] = 255
    Image.fromarray(img).save(tmp_path / "d.png")
    err = one_error(run("predict", tmp_path / "d.png", "--model", tmp_path / "loop.onnx", "--timeout", "2"))
    assert "did not finish within 2 s" in err


def test_isolation_turns_a_crash_a_hang_and_a_giant_allocation_into_errors():
    from toolkit import isolate

    with pytest.raises(isolate.Crashed, match="SIGABRT"):
        isolate.call(os.abort, timeout_s=60)
    with pytest.raises(isolate.Timeout, match="within 1 s"):
        isolate.call(time.sleep, 30, timeout_s=1)
    with pytest.raises(isolate.OutOfMemory):
        isolate.call(bytearray, 8 << 30, timeout_s=60, memory_mb=256)
    assert isolate.call(bytearray, 1 << 20, timeout_s=60, memory_mb=256) == bytearray(1 << 20)  # under it: fine


def test_a_worker_child_runs_calls_in_turn_within_its_bounds_until_one_ends_it():
    """verify's rows: one child measures a row and then times it, round after round, on the model it
    loaded; its memory bound holds for its whole life, and a hang or a crash ends it for good."""
    from toolkit import isolate

    with isolate.Worker(memory_mb=256, what="a row") as w:
        pid = w.call(os.getpid, timeout_s=60)
        assert pid != os.getpid() and w.call(os.getpid, timeout_s=60) == pid  # one child, call after call
        assert w.call(bytearray, 1 << 20, timeout_s=60) == bytearray(1 << 20)
        with pytest.raises(isolate.OutOfMemory):
            w.call(bytearray, 8 << 30, timeout_s=60)  # the bound set at its start still holds
        assert w.call(os.getpid, timeout_s=60) == pid  # an error the child caught leaves it running
        with pytest.raises(isolate.Timeout, match="a row did not finish within 1 s"):
            w.call(time.sleep, 30, timeout_s=1)
        with pytest.raises(isolate.Timeout):
            w.call(os.getpid, timeout_s=60)  # ended: every later call says why
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with isolate.Worker(what="a row") as w:
        pid = w.call(os.getpid, timeout_s=60)
        with pytest.raises(isolate.Crashed, match="SIGABRT"):
            w.call(os.abort, timeout_s=60)
        with pytest.raises(isolate.Crashed):
            w.call(os.getpid, timeout_s=60)
    w = isolate.Worker(what="a row")
    pid = w.call(os.getpid, timeout_s=60)
    w.close()  # closed: the child is gone
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_fifo_is_refused_before_it_is_opened(tmp_path, supplier, tiny_export):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    err = one_error(run("predict", tmp_path / "x.png", "--model", fifo))
    assert "not a regular file" in err
    (supplier / "cnn_int8.onnx").unlink()
    os.mkfifo(supplier / "cnn_int8.onnx")
    r = verify(supplier, tiny_export["data"], "--json", "-")
    assert r.exit_code == 1
    assert "not a regular file" in rows(r)["onnx-int8@ort-cpu"]["reasons"][0]


# ---------------------------------------------------------------- predict's inputs


def _png(path: Path, w=28, h=28):
    from PIL import Image

    img = np.zeros((h, w), np.uint8)
    img[h // 4: 3 * h // 4, w // 2 - 2: w // 2 + 2] = 255
    Image.fromarray(img).save(path)
    return path


def test_a_npy_declaring_a_giant_array_is_one_line_and_the_others_still_run(tmp_path, tiny_export):
    bomb = tmp_path / "bomb.npy"
    with open(bomb, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (200000, 200000)})
        f.write(b"\0" * 64)
    good = _png(tmp_path / "good.png")
    r = run("predict", bomb, good, "--model", tiny_export["out"] / "cnn_int8.onnx")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "too large" in one_error(r)
    assert "good.png: " in r.stdout


@pytest.mark.parametrize("w, h, ok", [(28 * 64, 28, True), (28 * 64 + 1, 28, False), (1, 2000, False)])
def test_slivers_are_refused_at_and_past_the_limit(tmp_path, tiny_export, w, h, ok):
    from toolkit.predict import check_dimensions

    if ok:
        check_dimensions(w, h, "x")
    else:
        from toolkit.errors import ImageError

        with pytest.raises(ImageError, match="sliver"):
            check_dimensions(w, h, "x")


def test_a_sliver_png_is_refused_before_decoding(tmp_path, tiny_export):
    err = one_error(run("predict", _png(tmp_path / "s.png", w=1, h=5000), "--model", tiny_export["out"] / "cnn_int8.onnx"))
    assert "sliver" in err


def test_deep_folders_and_long_names_are_one_line(tmp_path, tiny_export):
    deep = tmp_path / "deep"
    p = deep
    for _ in range(40):
        p = p / "d"
    p.mkdir(parents=True)
    _png(p / "x.png")
    err = one_error(run("predict", deep, "-r", "--model", tiny_export["out"] / "cnn_int8.onnx"))
    assert "nested over 32 levels" in err
    long = tmp_path / ("n" * 300)
    err = one_error(run("predict", long, "--model", tiny_export["out"] / "cnn_int8.onnx"))
    assert "File name too long" in err or "no such file" in err
    err = one_error(run("verify", "--dir", long, "--no-torch"))
    assert "File name too long" in err or "no such folder" in err


def test_an_empty_folder_and_a_pte_model_say_what_is_wrong(tmp_path, tiny_export):
    (tmp_path / "empty").mkdir()
    err = one_error(run("predict", tmp_path / "empty", "--model", tiny_export["out"] / "cnn_int8.onnx"))
    assert "no images in this folder" in err
    pte = tmp_path / "m.pte"
    pte.write_bytes(b"\x1c\x00\x00\x00ET12" + b"\0" * 64)
    err = one_error(run("predict", _png(tmp_path / "a.png"), "--model", pte))
    assert "an ExecuTorch program" in err and "predict runs ONNX (.onnx), ORT format (.ort) and LiteRT" in err


def test_file_names_cannot_forge_or_erase_output_lines(tmp_path, tiny_export):
    name = tmp_path / "x\nforged.png: 7 (p=1.000)\x1b[2K.png"
    _png(name)
    r = run("predict", name, "--model", tiny_export["out"] / "cnn_int8.onnx", "--accept-all")
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 1 and "\\n" in r.stdout and "\x1b" not in r.stdout
    r = run("predict", tmp_path / "gone\x1b[2K.png", "--model", tiny_export["out"] / "cnn_int8.onnx")
    assert "\x1b" not in r.stderr and "\\x1b[2K" in one_error(r)


# ---------------------------------------------------------------- outputs never destroy inputs


def test_json_never_takes_an_input_as_its_file(tmp_path, tiny_export):
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png")
    before = a.read_bytes()
    r = run("predict", "--json", a, b, "--model", tiny_export["out"] / "cnn_int8.onnx", "--accept-all")
    assert r.exit_code == 2 and "names an input file" in r.stderr
    assert a.read_bytes() == before
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    err = one_error(run("predict", b, "--json", notes, "--model", tiny_export["out"] / "cnn_int8.onnx"))
    assert "is not a JSON file" in err and notes.read_text() == "my notes"
    err = one_error(run("predict", b, "--json", tmp_path / "no" / "such" / "r.json", "--model",
                        tiny_export["out"] / "cnn_int8.onnx"))
    assert "does not exist" in err and not (tmp_path / "no").exists()


def test_a_report_never_overwrites_a_file_of_the_export(supplier, tiny_export):
    before = (supplier / "reference.npz").read_bytes()
    r = verify(supplier, tiny_export["data"], "--markdown", supplier / "manifest.json")
    assert r.exit_code == 2 and "is one of this command's inputs" in r.stderr
    r = verify(supplier, tiny_export["data"], "--json", supplier / "reference.npz")
    assert r.exit_code == 2
    assert (supplier / "reference.npz").read_bytes() == before


def test_expect_any_target_and_a_skipped_expected_row_fails(supplier, tiny_export):
    r = verify(supplier, tiny_export["data"], "--expect", "ort-int8", "--expect", "triton-fp32")
    assert r.exit_code == 0, r.output
    assert "PASS" in r.stdout
    r = verify(supplier, tiny_export["data"], "--expect", "tflite-int8")
    assert r.exit_code == 1 and "expected target tflite-int8 is not in this export" in r.stderr


def test_a_partial_check_never_ends_in_a_bare_pass(exported, tiny_export):
    r = verify(exported, tiny_export["data"])
    assert r.exit_code == 0, r.output
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("PASS for the 2 of 4 artifacts checked here") and "torchscript-fp32" in last
    r = verify(exported, tiny_export["data"], "--expect", "torchscript-int8")
    assert r.exit_code == 1 and "expected torchscript-int8 was not checked" in r.stdout
    # one artifact checked is a partial PASS; none at all is no proof: a FAIL naming why every row was skipped
    r = verify(exported, tiny_export["data"], "--device", "cpu", "--skip-runtime", "ort-cpu")
    last = " ".join(r.stdout.split("\n")[-3:])
    assert r.exit_code == 1 and "FAIL: no artifact was checked here (" in last and "--skip-runtime" in last, r.output


def test_markdown_report_is_a_table_with_escaped_pipes(supplier, tiny_export, tmp_path):
    r = verify(supplier, tiny_export["data"], "--markdown", tmp_path / "r.md")
    assert r.exit_code == 0, r.output
    header = (tmp_path / "r.md").read_text().splitlines()[0]
    cells = [c for c in __import__("re").split(r"(?<!\\)\|", header)[1:-1]]
    assert "max\\|Δlogit\\|" in header
    body = (tmp_path / "r.md").read_text().splitlines()[2]
    assert len(cells) == len(__import__("re").split(r"(?<!\\)\|", body)[1:-1])


def test_two_exports_into_one_folder_the_second_stops(supplier, tiny_export):
    from toolkit.publish import lock_folder

    held = lock_folder(supplier)
    try:
        before = tree(supplier)
        err = one_error(run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", supplier, "--data-dir",
                            tiny_export["data"], "--targets", "onnx"))
        assert "another mnisttk export is writing into" in err
        assert tree(supplier) == before
    finally:
        held.close()


def test_an_interrupt_during_publishing_says_what_happened(supplier, tiny_export, monkeypatch):
    import toolkit.publish as pub

    calls = {"n": 0}
    real = pub._rename

    def interrupt_third(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(pub, "_rename", interrupt_third)
    before = tree(supplier)
    err = one_error(run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", supplier, "--data-dir",
                        tiny_export["data"], "--targets", "onnx,ort,triton", "--quantize", "--calibration-size", "50"))
    assert "interrupted before publishing" in err
    assert {k: v for k, v in tree(supplier).items() if not k.startswith(".export-")} == before


def test_export_says_which_earlier_artifacts_it_removed(supplier, tiny_export):
    r = run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", supplier, "--data-dir",
            tiny_export["data"], "--targets", "onnx")
    assert r.exit_code == 0, r.output
    assert "removed the previous export's" in r.stderr and "cnn_int8.onnx" in r.stderr


def test_keep_fp32_of_an_unknown_layer_fails_before_exporting(tiny_export, tmp_path):
    err = one_error(run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", tmp_path / "o", "--data-dir",
                        tiny_export["data"], "--quantize", "--keep-fp32", "conv9"))
    assert "'conv9' is not a later layer" in err and "conv2, fc1" in err
    assert not any((tmp_path / "o").glob("*.onnx"))


def test_inspect_on_ort_bytes_and_on_swapped_models_is_one_line(supplier, tiny_export):
    fp32, int8 = (supplier / "cnn_fp32.onnx").read_bytes(), (supplier / "cnn_int8.onnx").read_bytes()
    (supplier / "cnn_fp32.onnx").write_bytes(int8)
    (supplier / "cnn_int8.onnx").write_bytes(fp32)
    set_hash(supplier, "cnn_fp32.onnx")
    set_hash(supplier, "cnn_int8.onnx")
    one_error(run("inspect", "--dir", supplier, "--data-dir", tiny_export["data"], "--repeats", "1"))
    shutil.copyfile(supplier / "cnn_int8.ort", supplier / "cnn_int8.onnx")
    set_hash(supplier, "cnn_int8.onnx")
    err = one_error(run("inspect", "--dir", supplier, "--data-dir", tiny_export["data"], "--repeats", "1"))
    assert "listed as onnx, but its bytes are an ONNX Runtime .ort model" in err


def test_a_tflite_declaring_more_memory_than_the_bound_is_refused_before_allocation(all_targets, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    import toolkit.runtimes.litert as lr
    from toolkit.errors import ToolkitError

    data = (all_targets / "cnn_int8.tflite").read_bytes()
    declared = lr.declared_bytes(Interpreter(model_content=data))
    assert 0 < declared < 10 * 2**20
    monkeypatch.setattr(lr, "MAX_DECLARED_BYTES", declared)  # at the bound: loads
    lr.interpreter(data, 1, "cnn_int8.tflite")
    monkeypatch.setattr(lr, "MAX_DECLARED_BYTES", declared - 1)  # one byte past: refused, one line
    with pytest.raises(ToolkitError, match=r"cnn_int8.tflite: its tensors declare .* MB .*refused"):
        lr.interpreter(data, 1, "cnn_int8.tflite")


def test_a_manifest_is_validated_at_and_past_each_of_its_bounds(tmp_path):
    """validate_manifest's decisions, each at a bound (valid) and one step past it (one ManifestError line)."""
    import copy

    from toolkit.errors import ManifestError
    from toolkit.manifest import validate_manifest

    good = valid_manifest()
    assert validate_manifest(copy.deepcopy(good), tmp_path) == good

    def bent(change):
        m = copy.deepcopy(good)
        change(m)
        return m

    def ok(change):
        validate_manifest(bent(change), tmp_path)

    def refused(change, message):
        with pytest.raises(ManifestError, match=message):
            validate_manifest(bent(change), tmp_path)

    lite, ir = 2, 3
    ok(lambda m: m["artifacts"][lite]["batch_files"][0].update(batch=2))
    refused(lambda m: m["artifacts"][lite]["batch_files"][0].update(batch=1), "is not a new batch size from 2")
    ok(lambda m: m["artifacts"][lite]["batch_files"][0].update(batch=65536))
    refused(lambda m: m["artifacts"][lite]["batch_files"][0].update(batch=65537), "is not a new batch size")
    refused(lambda m: m["artifacts"][lite]["batch_files"].append(dict(m["artifacts"][lite]["batch_files"][0])),
            "is not a new batch size")  # the same batch twice
    refused(lambda m: m["artifacts"][lite]["batch_files"][0].update(sha256="cd" * 32), "not a listed support file")
    refused(lambda m: m["artifacts"][0].update(batch_files=[]) or m["artifacts"][0].update(
        batch_files=[{"file": "x.onnx", "sha256": "ab" * 32, "batch": 4}]), "which has no batch files")
    refused(lambda m: m["artifacts"][lite].update(static_batch=2), "static_batch is 2, not 1")
    refused(lambda m: m["artifacts"][lite].update(static_batch=True), "static_batch is true, not 1")
    refused(lambda m: m["artifacts"][ir]["weights"].update(sha256="cd" * 32), "weights is not a listed support file")
    refused(lambda m: m["artifacts"][0].update(weights={"file": "cnn_fp32.bin", "sha256": "ab" * 32}),
            "which has no weights file")
    refused(lambda m: m["artifacts"][ir].pop("weights"), r"weights is NoneType, not an object")
    ok(lambda m: m.update(classes=["a", "b"]))
    refused(lambda m: m.update(classes=["a"]), "'classes' is not a list of 2 to 1000")
    ok(lambda m: m.update(classes=[f"c{i}" for i in range(256)]))
    refused(lambda m: m.update(classes=[f"c{i}" for i in range(1001)]), "'classes' is not a list of 2 to 1000")
    ok(lambda m: m.update(classes=["x" * 64, "b"]))
    refused(lambda m: m.update(classes=["x" * 65, "b"]), "'classes'")
    refused(lambda m: m.update(classes=["", "b"]), "'classes'")
    ok(lambda m: m.update(not_exported=[{"target": "executorch-int8", "reason": "r" * 400}]))
    refused(lambda m: m.update(not_exported=[{"target": "executorch-int8", "reason": "r" * 401}]), "short reason")
    refused(lambda m: m.update(not_exported=[{"target": "onnx-int8", "reason": "r"}]), "left out of 'targets'")
    refused(lambda m: m.update(not_exported=[{"target": "coreml-int8", "reason": "r"}]), "not a known target")
    refused(lambda m: m["targets"].remove("onnx-fp32"), "target onnx-fp32 missing")
    refused(lambda m: m["targets"].append("ort-fp32"), "target ort-fp32 has 0 artifacts")
    refused(lambda m: m["artifacts"].append(dict(m["artifacts"][1], file="cnn_int8b.onnx")), "onnx-int8 has 2 artifacts")
    refused(lambda m: m["targets"].remove("onnx-int8"), "artifact of target onnx-int8 was not asked for")
    refused(lambda m: m["targets"].append("coreml-int8"), "unknown target 'coreml-int8'")
    refused(lambda m: m["support_files"].append({"file": "cnn_fp32.onnx", "sha256": "ab" * 32}), "a file is listed twice")
    refused(lambda m: (m.update(targets=["onnx-fp32", "openvino-fp32"]),
                       m.update(artifacts=[m["artifacts"][0], m["artifacts"][ir]])), "calibration but no int8 target")
    ok(lambda m: (m.update(targets=["onnx-fp32", "openvino-fp32"]), m.update(artifacts=[m["artifacts"][0], m["artifacts"][ir]]),
                  m.pop("calibration")))
    refused(lambda m: m["artifacts"][0].update(size_bytes=-1), r"size_bytes is -1, not a non-negative integer")
    ok(lambda m: m["artifacts"][0].update(size_bytes=0))
    refused(lambda m: m["artifacts"][0].update(size_bytes=True), "size_bytes is true")
    refused(lambda m: m["artifacts"][0].update(sha256="AB" * 32), "not 64 lower-case hex digits")
    refused(lambda m: m["artifacts"][0].update(format="coreml"), "unknown format 'coreml'")
    refused(lambda m: m["artifacts"][0].update(precision="fp16"), "unknown precision 'fp16'")
    refused(lambda m: m.update(schema_version=1), "manifest version 1")
    refused(lambda m: m.update(artifacts=[]), "it lists no artifacts")
    refused(lambda m: m.update(support_files={}), "'support_files' is not a list")
    refused(lambda m: m.update(not_exported={}), "'not_exported' is not a list")
    # every name it lists stays inside the folder; a Triton model and support files may be paths within it
    refused(lambda m: m["artifacts"][0].update(file="../cnn_fp32.onnx"), r"artifacts\[0\].file '../cnn_fp32.onnx' is not")
    refused(lambda m: m["reference"].update(file="../reference.npz"), "reference.file '../reference.npz' is not")
    refused(lambda m: m["support_files"][1].update(file="/etc/passwd"), r"support_files\[1\].file '/etc/passwd' is not")
    ok(lambda m: m["support_files"].append({"file": "triton/cnn_fp32/config.pbtxt", "sha256": "ab" * 32}))
    refused(lambda m: m["support_files"].append({"file": "triton/../../x", "sha256": "ab" * 32}), "not a plain relative")
    ok(lambda m: (m["artifacts"].append({"file": "triton/cnn_fp32/1/model.onnx", "format": "triton", "precision": "fp32",
                                         "sha256": "ab" * 32, "size_bytes": 1}), m["targets"].append("triton-fp32")))
    refused(lambda m: (m["artifacts"].append({"file": "cnn/model.onnx", "format": "onnx", "precision": "fp32",
                                              "sha256": "ab" * 32, "size_bytes": 1})), "is not a plain file name")
    ok(lambda m: (m.pop("support_files"), m["artifacts"][lite].pop("batch_files"), m["artifacts"][ir].pop("weights"),
                  m["artifacts"].pop(ir), m["targets"].remove("openvino-fp32"), m.pop("not_exported")))  # optional
    refused(lambda m: m["artifacts"][lite].update(batch_files={}), r"batch_files is not a list")
    refused(lambda m: m["checkpoint"].pop("sha256"), "checkpoint has no 'sha256'")
