"""A corpus of hostile and broken inputs, built here: each must give exit 1 (2 for usage errors),
exactly one `Error:` line, no traceback, bounded memory, and leave the previous artifacts as they were.
Use it for every new reader."""

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_arrays, write_idx
from helpers import rehash, run


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_one_error(r, code=1, needle=None):
    assert r.exit_code == code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)  # no traceback
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.output
    if needle:
        assert needle in errors[0], errors[0]
    return errors[0]


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest) if not isinstance(manifest, str) else manifest)


# ------------------------------------------------------------------ manifests


def _first_artifact(key, value):
    def change(m):
        m["artifacts"][0][key] = value
    return change


def _drop_int8_entry(m):
    m["artifacts"] = [a for a in m["artifacts"] if a["file"] != "cnn_int8.onnx"]


MANIFEST_CASES = {
    "artifacts not a list": (lambda m: m.update(artifacts={"a": 1}), "'artifacts' is not a list"),
    "empty artifacts": (lambda m: m.update(artifacts=[]), "lists no artifacts"),
    "file null": (_first_artifact("file", None), "not a str"),
    "file a number": (_first_artifact("file", 7), "not a str"),
    "no sha256": (lambda m: m["artifacts"][0].pop("sha256"), "has no 'sha256'"),
    "no format": (lambda m: m["artifacts"][0].pop("format"), "has no 'format'"),
    "no reference": (lambda m: m.pop("reference"), "reference is NoneType"),
    "size_bytes a string": (_first_artifact("size_bytes", "12"), "size_bytes"),
    "renamed format": (_first_artifact("format", "onnx-int8"), "unknown format 'onnx-int8'"),
    "unknown precision": (_first_artifact("precision", "int4"), "unknown precision"),
    "absolute path": (_first_artifact("file", "/etc/passwd"), "not a plain file name"),
    "climbs out": (_first_artifact("file", "../cnn_fp32.onnx"), "not a plain file name"),
    "reference escapes": (lambda m: m["reference"].update(file="/etc/hostname"), "not a plain file name"),
    "dropped int8 entry": (_drop_int8_entry, "target onnx-int8 has 0 artifacts"),
    "no targets": (lambda m: m.pop("targets"), "'targets' is not a list"),
    "targets emptied": (lambda m: (m.update(targets=[]), m["artifacts"].clear()), "lists no artifacts"),
    "old manifest": (lambda m: m.pop("schema_version"), "manifest version None"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_hostile_manifest_is_one_error_line(exported, tiny_export, case):
    change, needle = MANIFEST_CASES[case]
    edit_manifest(exported, change)
    before = snapshot(exported)
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch")
    assert_one_error(r, needle=needle)
    assert snapshot(exported) == before


def test_deeply_nested_and_nan_manifests(exported, tiny_export):
    (exported / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_one_error(run("verify", "--dir", exported, "--data-dir", tiny_export["data"]), needle="manifest")
    (exported / "manifest.json").write_text('{"artifacts": [], "x": NaN}')
    assert_one_error(run("verify", "--dir", exported, "--data-dir", tiny_export["data"]), needle="NaN")


def test_symlink_out_of_the_folder_is_refused(exported, tiny_export, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(exported / "cnn_fp32.onnx", outside)
    (exported / "cnn_fp32.onnx").unlink()
    (exported / "cnn_fp32.onnx").symlink_to(outside)
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch")
    assert_one_error(r, needle="resolves outside")


def test_expect_catches_an_export_without_int8(exported, tiny_export):
    def drop_int8(m):
        m["artifacts"] = [a for a in m["artifacts"] if a["precision"] != "int8"]
        m["targets"] = [t for t in m["targets"] if not t.endswith("int8")]
        m["calibration"] = None
    edit_manifest(exported, drop_int8)
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch", "--expect", "onnx-int8")
    assert_one_error(r, needle="expected target onnx-int8 is not in this export")
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch")
    assert r.exit_code == 0 and "checked 1 of 2 exported artifacts (onnx-fp32); not run here: torchscript-fp32" in r.stdout


# ------------------------------------------------------------------ reference.npz (hash updated)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _zip_bomb() -> bytes:
    """A 'logits.npy' member that inflates to 256 MiB of zeros (a few hundred KB on disk)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("logits.npy", "w", force_zip64=True) as f:
        chunk = bytes(1 << 24)
        for _ in range(16):
            f.write(chunk)
    return buf.getvalue()


def _reference_cases(ref):
    n = len(ref["labels"])
    good = {"logits": ref["logits"], "labels": ref["labels"], "test_sha256": ref["test_sha256"]}
    return {
        "raw pickle": (pickle.dumps({"logits": [1, 2]}), "not an .npz archive"),
        "garbage": (os.urandom(5000), "not an .npz archive"),
        "missing key": (_npz(logits=good["logits"], test_sha256=good["test_sha256"]), "no 'labels' array"),
        "9999 rows": (_npz(**{**good, "logits": good["logits"][: n - 1]}), "expected float"),
        "1-D logits": (_npz(**{**good, "logits": good["logits"][:, 0]}), "expected float"),
        "NaN logits": (_npz(**{**good, "logits": np.full_like(good["logits"], np.nan)}), "NaN"),
        "object array": (_npz(**{**good, "labels": np.array([{"a": 1}] * n, dtype=object)}), "labels.npy"),
        "zip bomb": (_zip_bomb(), "declares"),
    }


@pytest.mark.parametrize("case", ["raw pickle", "garbage", "missing key", "9999 rows", "1-D logits", "NaN logits",
                                  "object array", "zip bomb"])
def test_hostile_reference_is_one_error_line(exported, tiny_export, case):
    ref = dict(np.load(exported / "reference.npz"))
    data, needle = _reference_cases(ref)[case]
    (exported / "reference.npz").write_bytes(data)
    rehash(exported, "reference.npz")
    assert_one_error(run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch"), needle=needle)


# ------------------------------------------------------------------ checkpoints


def _ckpt_cases(good: dict, tmp: Path) -> dict:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp / "pwned"),))

    def save(obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    state = good["state_dict"]
    nan_state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    wrong = dict(state, **{"conv1.weight": torch.zeros(4, 1, 3, 3)})
    return {
        "text file": (b"hello, I am not a checkpoint\n", "not a readable PyTorch checkpoint"),
        "passwd": (Path("/etc/passwd").read_bytes() if Path("/etc/passwd").exists() else b"root:x:0:0\n",
                   "not a readable PyTorch checkpoint"),
        "evil pickle": (pickle.dumps({"format": "mnisttk-checkpoint", "x": Evil()}), "refused"),
        "arch a list": (save({**good, "arch": ["cnn"]}), "unknown arch"),
        "state_dict a string": (save({**good, "state_dict": "weights"}), "'state_dict' is not a mapping"),
        "state_dict a list": (save({**good, "state_dict": [1, 2]}), "'state_dict' is not a mapping"),
        "metrics a list": (save({**good, "metrics": [0.9]}), "'metrics' is list"),
        "wrong shape": (save({**good, "state_dict": wrong}), "conv1.weight is [4, 1, 3, 3] in the checkpoint, [8, 1, 3, 3]"),
        "NaN weights": (save({**good, "state_dict": nan_state}), "NaN or infinite"),
    }


@pytest.mark.parametrize("case", ["text file", "passwd", "evil pickle", "arch a list", "state_dict a string",
                                  "state_dict a list", "metrics a list", "wrong shape", "NaN weights"])
def test_hostile_checkpoint_is_one_error_line_and_nothing_changes(exported, tiny_export, tmp_path, case):
    good = torch.load(exported / "cnn.pt", weights_only=True)
    data, needle = _ckpt_cases(good, tmp_path)[case]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data)
    before = snapshot(exported)
    r = run("export", "--checkpoint", bad, "--out", exported, "--quantize", "--data-dir", tiny_export["data"])
    assert_one_error(r, needle=needle)
    assert "Warning" not in r.stderr and not (tmp_path / "pwned").exists()
    assert snapshot(exported) == before


def test_verify_with_a_nan_checkpoint_in_the_folder_fails(exported, tiny_export):
    good = torch.load(exported / "cnn.pt", weights_only=True)
    torch.save({**good, "state_dict": {k: torch.full_like(v, float("nan")) for k, v in good["state_dict"].items()}},
               exported / "cnn.pt")
    edit_manifest(exported, lambda m: m["checkpoint"].update(sha256=hashlib.sha256((exported / "cnn.pt").read_bytes()).hexdigest()))
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--int8-min-agreement", "0",
            "--int8-max-drop", "100", "--json", exported / "r.json")
    assert r.exit_code == 1 and "NaN or infinite" in r.stdout and "FAIL: PyTorch fp32 on PyTorch eager" in r.stdout
    assert json.loads((exported / "r.json").read_text())["passed"] is False  # strict JSON, no NaN


def test_a_model_that_answers_nan_fails_its_row_and_the_json_stays_valid(exported, tiny_export):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("Div", ["m", "zero"], ["q"]),  # 0/0 and x/0: NaN and inf
         helper.make_node("Unsqueeze", ["q", "axes"], ["u"]),
         helper.make_node("Mul", ["u", "ones"], ["logits"])], "nan",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
         helper.make_tensor("ones", TensorProto.FLOAT, [1, 10], [1.0] * 10)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(exported / "cnn_fp32.onnx"))
    rehash(exported, "cnn_fp32.onnx")
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch", "--json", "-", "-q")
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit), r.output
    report = json.loads(r.stdout)
    row = next(x for x in report["rows"] if x["id"] == "onnx-fp32@ort-cpu")
    assert row["status"] == "fail" and any("NaN or infinite logits" in reason for reason in row["reasons"])


# ------------------------------------------------------------------ data files


def _bomb_gz(path: Path, images: int = 10_000, zeros: int = 512 << 20) -> None:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    with open(path, "wb") as f:
        f.write(comp.compress(b"\x00\x00\x08\x03" + images.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2))
        chunk = bytes(1 << 24)
        for _ in range(zeros >> 24):
            f.write(comp.compress(chunk))
        f.write(comp.flush())


def _data_dir(tmp_path: Path) -> Path:
    return write_idx(tmp_path / "data", synthetic_arrays())


MEASURED = """
import atexit, sys
def peak():  # VmHWM: this process image's own peak (ru_maxrss would carry the forking parent's)
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    sys.stderr.write("PEAK_RSS_MB %d\\n" % (int(hwm.split()[1]) // 1024))
atexit.register(peak)
from toolkit.cli import main
main(sys.argv[1:], prog_name="mnisttk")
"""


def run_measured(args: list, timeout: float = 120) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in MB) of `mnisttk ARGS` in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", MEASURED, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "MNISTTK_OFFLINE": "1"})  # timeout: a hang guard
    lines = proc.stderr.splitlines()
    peak = int(next(line.split()[1] for line in lines if line.startswith("PEAK_RSS_MB")))
    return proc.returncode, "\n".join(line for line in lines if not line.startswith("PEAK_RSS_MB")), peak


def test_gzip_bomb_and_sparse_giant_stop_at_the_header(tmp_path):
    data = _data_dir(tmp_path)
    name = "t10k-images-idx3-ubyte"
    _bomb_gz(data / f"{name}.gz", images=40)  # as many images as its labels: the count check passes, the size stops it
    code, err, peak = run_measured(["data", "--data-dir", data])
    assert code == 1 and err.count("Error:") == 1 and "trailing bytes" in err and "Traceback" not in err
    assert peak < 1000, f"{peak} MB"  # reading the whole bomb takes over 1.5 GB
    (data / f"{name}.gz").unlink()
    with open(data / name, "wb") as f:  # a sparse 2 GiB raw file behind a 40-image header
        f.write(b"\x00\x00\x08\x03" + (40).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        f.truncate(2 << 30)
    r = run("data", "--data-dir", data)
    assert_one_error(r, needle="trailing bytes")


@pytest.mark.parametrize("case", ["corrupt deflate", "fifo", "huge header"])
def test_broken_data_files(tmp_path, case):
    data = _data_dir(tmp_path)
    gz = data / "t10k-labels-idx1-ubyte.gz"
    if case == "corrupt deflate":
        raw = bytearray(gz.read_bytes())
        raw[20:40] = b"\xff" * 20
        gz.write_bytes(bytes(raw))
        needle = "cannot read"
    elif case == "fifo":
        gz.unlink()
        os.mkfifo(data / "t10k-labels-idx1-ubyte")
        needle = "not a regular file"
    else:
        gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (4_000_000_000).to_bytes(4, "big")))
        needle = "declares 4,000,000,000 items"
    assert_one_error(run("data", "--data-dir", data), needle=needle)


# ------------------------------------------------------------------ artifacts swapped in, hash updated


def test_wrong_io_onnx_and_external_data_fail_their_rows(exported, tiny_export, tmp_path, openvino_rows):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 32, 32])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "wrong.onnx"))
    r = run("predict", tiny_export["data"] / "x.npy", "--model", tmp_path / "wrong.onnx")
    assert_one_error(r, needle="an mnisttk model gives float N×C logits")
    shutil.copy(tmp_path / "wrong.onnx", exported / "cnn_int8.onnx")
    rehash(exported, "cnn_int8.onnx")
    # the fp32 model with its weights moved to a sidecar in the folder
    model = onnx.load(str(exported / "cnn_fp32.onnx"))
    onnx.save(model, str(exported / "cnn_fp32.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="cnn_fp32.onnx.data", size_threshold=0)
    rehash(exported, "cnn_fp32.onnx")
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch")
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit)
    assert "FAIL: ONNX fp32 on ORT CPU; ONNX int8 on ORT CPU" in r.stdout
    failed = r.stdout.replace("\n    ", " ")  # the verdict wraps at 120 columns
    # the same files on OpenVINO (and its default-precision row, on a CPU that has one)
    assert "ONNX fp32 on OpenVINO CPU;" in failed and "ONNX int8 on OpenVINO CPU" in failed
    assert "external-data" in r.stdout and "N×C logits" in r.stdout


# ------------------------------------------------------------------ predict and options


def test_hostile_predict_inputs(tiny_export, tmp_path):
    eps = tmp_path / "innocent.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(pwned) print showpage\n")
    np.savez(tmp_path / "arr.npz", x=np.zeros((28, 28)))
    (tmp_path / "arr.npz").rename(tmp_path / "renamed.npy")
    (tmp_path / "bad.pgm").write_bytes(b"P2\n2 2\n255\n0 1.5 3 4\n")
    Image = pytest.importorskip("PIL.Image")
    Image.new("L", (40, 40), 255).save(tmp_path / "white.png")
    np.save(tmp_path / "black.npy", np.zeros((28, 28), np.uint8))
    model = tiny_export["out"] / "cnn_int8.onnx"
    for name, needle in (("innocent.png", "not a PNG, JPEG"), ("renamed.npy", "not a .npy array"),
                         ("bad.pgm", "not an integer"), ("white.png", "no digit found"),
                         ("black.npy", "no digit found")):
        assert_one_error(run("predict", tmp_path / name, "--model", model), needle=needle)


def test_bool_npy_is_a_mask_and_min_confidence_marks(tiny_export, tmp_path):
    mask = np.zeros((28, 28), bool)
    mask[6:22, 12:16] = True
    np.save(tmp_path / "mask.npy", mask)
    r = run("predict", tmp_path / "mask.npy", "--model", tiny_export["out"] / "cnn_int8.onnx", "--accept-all", "--json",
            "--min-confidence", "1.0")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"][0]
    assert res["low_confidence"] is True and 0 <= res["digit"] <= 9


def test_threads_are_bounded_and_unwritable_report_fails_first(exported, tiny_export):
    r = run("verify", "--dir", exported, "--threads", "100000")
    assert r.exit_code == 2 and "100000" in r.output
    r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch", "--plot",
            "/nonexistent-dir/p.png")
    assert_one_error(r, needle="does not exist; nothing was run")
    assert "PASS" not in r.stdout


# ------------------------------------------------------------------ a full disk


def test_disk_full_during_export_and_train_is_one_line_and_keeps_the_old_files(exported, tiny_export, tmp_path,
                                                                               monkeypatch):
    import errno

    import toolkit.checkpoint as checkpoint
    import toolkit.exporters.torchscript as ts_exporter

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = snapshot(exported)
    monkeypatch.setattr(ts_exporter, "strip_torchscript", full)  # the TorchScript write, from Python
    r = run("export", "--checkpoint", exported / "cnn.pt", "--dir", exported, "--quantize", "--data-dir",
            tiny_export["data"], "--calibration-size", 100)
    assert_one_error(r, needle="No space left on device")
    assert snapshot(exported) == before
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    r = run("train", "--data-dir", tiny_export["data"], "--epochs", 1, "--checkpoint", exported / "cnn.pt",
            "--device", "cpu")
    assert_one_error(r, needle="cannot write checkpoint")
    assert snapshot(exported) == before


def test_a_subpath_that_climbs_out_of_the_model_repository_is_refused(exported, tiny_export):
    def escape(m):
        m["support_files"] = [{"file": "triton/../../outside.txt", "sha256": "0" * 64}]
    edit_manifest(exported, escape)
    assert_one_error(run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch"),
                     needle="not a plain relative path")


@pytest.fixture
def good_tflite(all_targets):
    """A valid batch-1 .tflite (the shared export's), for the broken variants."""
    return (all_targets / "cnn_fp32.tflite").read_bytes()


@pytest.fixture
def good_pte(all_targets):
    """A valid dynamic-batch XNNPACK ExecuTorch program (the shared export's), for the broken variants."""
    return (all_targets / "cnn_fp32.pte").read_bytes()


@pytest.mark.parametrize("make", [
    lambda good: b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 8,  # the identifier, then garbage
    lambda good: good[: len(good) // 2],  # truncated
    lambda good: bytes(b ^ 0xFF if i % 97 == 3 else b for i, b in enumerate(good)),  # bits flipped throughout
], ids=["identifier-then-garbage", "truncated", "flipped"])
def test_broken_tflite_models_for_predict(tmp_path, make, good_tflite):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(make(good_tflite))
    img = tmp_path / "d.npy"
    np.save(img, np.zeros((28, 28), np.uint8))
    r = run("predict", "--model", bad, img)
    assert_one_error(r, 1, "bad.tflite: not a loadable LiteRT model")


@pytest.mark.parametrize("make", [
    lambda good: bytes(range(256)) * 20,
    lambda good: good[:64] + bytes(range(256)) * 20,
    lambda good: bytes(b ^ 0xFF if i % 101 == 50 else b for i, b in enumerate(good)),
], ids=["garbage", "header-then-garbage", "flipped"])
def test_broken_pte_programs_are_one_line(tmp_path, make, good_pte):
    from toolkit.errors import ToolkitError
    from toolkit.runtimes.executorch import ExecuTorchCandidate

    bad = tmp_path / "bad.pte"
    bad.write_bytes(make(good_pte))
    with pytest.raises(ToolkitError) as info:
        ExecuTorchCandidate(bad, "int8", 1, None, "ExecuTorch int8", bad.name).logits(np.zeros((2, 28, 28), np.uint8))
    msg = str(info.value)
    assert "\n" not in msg and (msg.startswith("bad.pte: not a readable ExecuTorch program")
                                or msg.endswith("bad.pte: listed as executorch, but its bytes are not a model file "
                                                "mnisttk knows; refused"))
