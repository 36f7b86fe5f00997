"""Shared by the test files: the CLI runner and the torch-free checks."""

import hashlib
import json
import math
import textwrap

from click.testing import CliRunner

from toolkit.cli import main

# 40 synthetic test images: gate only fp32; one timing round (test_timing asks for more)
LOOSE_ALL = ["--int8-min-agreement", "0", "--int8-max-drop", "100", "--int8-max-clipped", "100",
             "--int8-min-ood-agreement", "0", "--rounds", "1"]
# ... and without OpenVINO's rows (about 1.5 s a verify: a child each, importing openvino), which
# tests/test_openvino.py and the e2e tests on real MNIST check
LOOSE = [*LOOSE_ALL, "--skip-runtime", "openvino"]


def run(*args):
    """`mnisttk ARGS` in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args])


# Run first in a fresh interpreter: makes torch (and torchvision) impossible to import.
BLOCK_TORCH = textwrap.dedent("""
    import sys
    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked in this test)", name=name)
    sys.meta_path.insert(0, BlockTorch())
""")


def third_party_check(allowed: set) -> str:
    """Code that fails unless every imported top-level package outside the standard library is in
    `allowed` (an allow-list, so onnx or torch creeping into the edge side fails)."""
    return textwrap.dedent(f"""
        third = {{m.split(".")[0] for m in sys.modules}} - set(sys.stdlib_module_names) - {{"toolkit"}}
        third = {{m for m in third if not m.startswith("_") and m != "cython_runtime"}}
        assert third <= set({sorted(allowed)!r}), f"edge side imported {{sorted(third - set({sorted(allowed)!r}))}}"
    """)


def rehash(folder, name: str) -> None:
    """Record `name`'s current bytes in the folder's manifest (a supplier who swapped a file and
    updated the hash, as an attacker would: the bytes check passes, so what follows must catch it).
    The reference, an artifact or a support file; its size too where the manifest records one."""
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if manifest["reference"]["file"] == name:
        manifest["reference"]["sha256"] = digest
    for entry in manifest["artifacts"] + manifest.get("support_files", []):
        if entry["file"] == name:
            entry["sha256"] = digest
            if "size_bytes" in entry:
                entry["size_bytes"] = len(data)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def up(x: float) -> float:
    """The next float above x: one step past a lower limit."""
    return math.nextafter(x, math.inf)


def down(x: float) -> float:
    """The next float below x: one step past an upper limit."""
    return math.nextafter(x, -math.inf)


def valid_manifest() -> dict:
    """A manifest of the shape export writes: ONNX fp32/int8, LiteRT int8 with a batch file, an OpenVINO IR
    with its weights, a reference, a checkpoint (the files need not exist: validation opens nothing)."""
    h = "ab" * 32
    art = [{"file": "cnn_fp32.onnx", "format": "onnx", "precision": "fp32", "sha256": h, "size_bytes": 10},
           {"file": "cnn_int8.onnx", "format": "onnx", "precision": "int8", "sha256": h, "size_bytes": 10},
           {"file": "cnn_int8.tflite", "format": "tflite", "precision": "int8", "sha256": h, "size_bytes": 10,
            "static_batch": 1, "batch_files": [{"file": "cnn_int8.b256.tflite", "sha256": h, "batch": 256}]},
           {"file": "cnn_fp32.xml", "format": "openvino", "precision": "fp32", "sha256": h, "size_bytes": 10,
            "weights": {"file": "cnn_fp32.bin", "sha256": h}}]
    return {"schema_version": 2, "artifacts": art, "targets": ["onnx-fp32", "onnx-int8", "tflite-int8", "openvino-fp32"],
            "reference": {"file": "reference.npz", "sha256": h}, "checkpoint": {"path": "cnn.pt", "sha256": h},
            "support_files": [{"file": "cnn_int8.b256.tflite", "sha256": h}, {"file": "cnn_fp32.bin", "sha256": h}],
            "calibration": {"method": "minmax"}, "classes": [str(d) for d in range(10)], "not_exported": []}


def one_error(r, code=1) -> str:
    """The one `Error:` line a refused command printed (exit `code`, no traceback)."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.output
    return errors[0]


def saved_run(folder, data, path):
    """`verify --save-outputs PATH` of an export (torch-free, loose gates): the outputs document, read."""
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", *LOOSE, "--save-outputs", path)
    assert r.exit_code == 0, r.output
    return json.loads(path.read_text())
