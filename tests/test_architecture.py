"""The architecture's promises, each checked by behaviour: one target registry that every list derives
from, one exporter protocol, one runtime template (batching, padding, shape and finiteness checked once
for every runtime), `threads` meaning one thing, and process-wide state restored after every verb."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.errors import ToolkitError


def test_every_target_is_defined_once_and_the_lists_derive_from_it():
    from toolkit import cli, manifest
    from toolkit.exporters import exporter
    from toolkit.runtimes import RUNTIMES
    from toolkit.targets import FORMATS, KNOWN_TARGETS, TARGETS, possible_names

    assert tuple(t.name for t in TARGETS) == FORMATS and len(set(FORMATS)) == len(FORMATS)
    assert manifest.FORMATS is FORMATS and manifest.KNOWN_TARGETS is KNOWN_TARGETS
    assert set(KNOWN_TARGETS) == {f"{t.name}-{p}" for t in TARGETS for p in ("fp32", "int8")}
    for t in TARGETS:
        assert callable(exporter(t.name)), t.name  # every target is written through the one protocol
        assert any(t.name in s.formats and s.device in (None, "cpu") for s in RUNTIMES), t.name  # and run on a CPU
        assert t.names and all(n.format(arch="a", precision="int8") in possible_names("a") for n in t.names)
    assert {f for s in RUNTIMES for f in s.formats} <= set(FORMATS)
    expect = next(p for p in cli.verify.params if p.name == "expect")
    assert set(expect.type.choices) == set(KNOWN_TARGETS)  # --expect: all 12, not 4


def test_an_export_writes_only_names_its_targets_declare(all_targets):
    from toolkit.targets import possible_names

    written = {p.name for p in all_targets.iterdir()} - {"manifest.json", "reference.npz", "cnn.pt"}
    assert written and written <= set(possible_names("cnn")), written - set(possible_names("cnn"))


class _Fake:
    """A runtime made only of the template's two steps (and a fixed batch, maybe)."""

    @staticmethod
    def make(forward, fixed_batch=None):
        from toolkit.runtimes.candidate import Candidate

        class Fake(Candidate):
            name, runtime, precision, file = "fake", "Fake", "fp32", "fake.bin"

            def prepare(self, images_u8):
                return images_u8.astype(np.float32)

            def _forward(self, x):
                return forward(x)

        fake = Fake()
        fake.fixed_batch = fixed_batch
        return fake


def test_the_template_batches_pads_a_static_batch_and_checks_what_comes_back():
    from toolkit.runtimes.candidate import Candidate

    seen = []

    def forward(x):
        seen.append(len(x))
        return np.tile(x.reshape(len(x), -1)[:, :1], (1, 10))  # each image's first pixel, ten times

    images = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    out = _Fake.make(forward, fixed_batch=4).logits(images)
    assert seen == [4, 4, 4] and out.shape == (10, 10) and np.array_equal(out[:, 0], np.arange(10))  # padding dropped
    seen.clear()
    _Fake.make(forward).logits(images, batch=3)
    assert seen == [3, 3, 3, 1]
    with pytest.raises(ToolkitError, match=r"fake.bin: 1 of 10 images give NaN or infinite logits"):
        _Fake.make(lambda x: np.where(x.reshape(len(x), -1)[:, :10] == 7, np.inf, 0.0)).logits(images)
    with pytest.raises(ToolkitError, match=r"fake.bin: output shape \[10, 9\] for 10 images, expected \[10, 10\]"):
        _Fake.make(lambda x: np.zeros((len(x), 9))).logits(images)
    with pytest.raises(TypeError):  # a runtime without its forward step cannot be made

        class Half(Candidate):
            def prepare(self, images_u8):
                return images_u8

        Half()


def test_threads_zero_means_every_core_everywhere(tiny_export):
    from toolkit.runtimes.candidate import resolve_threads
    from toolkit.runtimes.ort_session import SessionOptions
    from toolkit.runtimes.pytorch import torchscript_candidate

    cores = os.cpu_count()
    assert resolve_threads(0) == cores and resolve_threads(1) == 1
    assert SessionOptions(threads=0).shards == cores
    assert torchscript_candidate(tiny_export["out"] / "cnn_fp32.torchscript.pt", "fp32", 0).threads == cores
    with pytest.raises(ToolkitError, match="threads must be 0"):
        resolve_threads(-1)


def _process_state() -> dict:
    import torch
    from PIL import Image

    return {"torch_threads": torch.get_num_threads(), "engine": torch.backends.quantized.engine,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "logging_disable": logging.root.manager.disable,
            "litert_env": os.environ.get("LITERT_TORCH_SHOW_PROGRESS"), "pil_limit": Image.MAX_IMAGE_PIXELS}


def test_export_verify_and_predict_leave_the_process_as_they_found_it(tiny_export, tmp_path, in_process):
    """Run in one process, as a notebook or a service would: every global a runtime, exporter or reader
    changes is back as it was (set first to values none of them would choose)."""
    import torch
    from PIL import Image

    from toolkit.cli import main

    saved = _process_state()
    try:
        torch.set_num_threads(2 if torch.get_num_threads() != 2 else 3)
        other = next(e for e in torch.backends.quantized.supported_engines if e not in ("x86", "none"))
        torch.backends.quantized.engine = other
        logging.disable(logging.DEBUG)
        Image.MAX_IMAGE_PIXELS = 12345678
        before = _process_state()
        out = tmp_path / "e"
        r = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_export["out"] / "cnn.pt"), "--dir", str(out),
                                      "--quantize", "--calibration-size", "50", "--data-dir", str(tiny_export["data"]),
                                      "--targets", "torchscript,onnx,ort"])
        assert r.exit_code == 0, r.output
        assert _process_state() == before, "export"
        (out / "cnn.pt").write_bytes((tiny_export["out"] / "cnn.pt").read_bytes())
        r = CliRunner().invoke(main, ["verify", "--dir", str(out), "--data-dir", str(tiny_export["data"]), "--rounds", "1",
                                      "--int8-max-drop", "100", "--int8-min-agreement", "0",
                                      "--int8-min-ood-agreement", "0"])
        assert "TorchScript int8" in r.output, r.output
        assert _process_state() == before, "verify"
        png = tmp_path / "d.png"
        Image.fromarray(np.pad(np.full((10, 4), 255, np.uint8), 9)).save(png)
        r = CliRunner().invoke(main, ["predict", "--model", str(out / "cnn_fp32.onnx"), str(png), "--accept-all"])
        assert r.exit_code == 0 and "d.png: " in r.output, r.output
        assert _process_state() == before, "predict"
    finally:
        torch.set_num_threads(saved["torch_threads"])
        torch.backends.quantized.engine = saved["engine"]
        logging.disable(saved["logging_disable"])
        Image.MAX_IMAGE_PIXELS = saved["pil_limit"]


# The modules that must read target facts from the registry (toolkit.targets.Target), never spell a
# target's name: a new target is then a record in targets.py, its exporter and its runtime.
REGISTRY_READERS = ["manifest.py", "export.py", "verify.py", "report.py", "config.py", "search.py", "compare.py",
                    "outputs.py", "html_report.py"]


@pytest.mark.parametrize("module", REGISTRY_READERS)
def test_no_target_name_is_spelled_outside_the_registry(module):
    import ast

    from toolkit.targets import FORMATS

    path = Path(__file__).resolve().parent.parent / "toolkit" / module
    tree = ast.parse(path.read_text())
    literals = [(node.lineno, node.value) for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FORMATS]
    assert not literals, f"toolkit/{module} spells target names {literals}: read them from toolkit.targets"


def test_the_manifest_schema_enumerates_exactly_the_registrys_formats():
    from toolkit.targets import FORMATS

    schema = json.loads((Path(__file__).resolve().parent.parent / "docs" / "schemas" / "export.schema.json").read_text())
    assert schema["properties"]["artifacts"]["items"]["properties"]["format"]["enum"] == list(FORMATS)


# Runtime facts the verbs must read from the runtime registry and its typed evidence (RuntimeSpec,
# Placement), never decode by name: which backend ran a row, and whether a runtime is a GPU one.
RUNTIME_NAMES = ("XNNPACK", "OpenVINO CPU", "ORT CPU", "ORT CUDA", "cuda", "CUDAExecutionProvider")


@pytest.mark.parametrize("module", ["verify.py", "report.py", "search.py", "html_report.py", "export.py", "gates.py"])
def test_no_backend_is_decoded_by_name_outside_its_runtime(module):
    import ast

    path = Path(__file__).resolve().parent.parent / "toolkit" / module
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    literals = [(node.lineno, node.value) for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and id(node) not in docstrings and node.value in RUNTIME_NAMES]
    assert not literals, f"toolkit/{module} decodes runtimes by name {literals}: read RuntimeSpec / Placement"


def test_placement_is_typed_evidence_that_survives_the_report_json():
    from toolkit.config import Gates
    from toolkit.gates import Gate, evaluate
    from toolkit.runtimes.candidate import Placement
    from toolkit.verify import Row, measurement

    p = Placement("XNNPACK", "3 ops delegated", not_delegated=("CONV_2D",), detail={"delegated": ["FC"]})
    assert Placement.from_json(json.loads(json.dumps(p.to_json()))) == p
    assert Placement.from_json(None) is None and Placement.from_json({}) is None
    good = dict(accuracy=0.99, flipped=0, max_abs_logit_diff=0.0, acc_diff=0.0, agreement=1.0)
    # each typed field reaches the gates as it is; None ("not a question here") asks nothing
    row = Row("X int8", "Y", "int8", "f", placement=p.to_json(), **good)
    assert [r.gate for r in evaluate(measurement(row), Gates())] == [Gate.NOT_DELEGATED]
    asked = Placement("Z", "", int8_kernels=())
    assert measurement(Row("X int8", "Y", "int8", "f", placement=asked.to_json(), **good)).int8_kernels == []
    assert measurement(Row("X int8", "Y", "int8", "f", placement=Placement("Z", "").to_json(), **good)).int8_kernels is None
    gpu = Placement("Z", "", cpu_compute_ops=("Conv",))
    assert [r.gate for r in evaluate(measurement(Row("X fp32", "Y", "fp32", "f", placement=gpu.to_json(), **good)),
                                     Gates())] == [Gate.CPU_COMPUTE]


def test_the_runtime_for_a_format_comes_from_the_registry():
    from toolkit.runtimes import RUNTIMES, cpu_runtime, runtime_for
    from toolkit.targets import FORMATS

    for fmt in FORMATS:
        spec = cpu_runtime(fmt)
        assert spec is not None and not spec.gpu and fmt in spec.formats, fmt
        assert spec == next(s for s in RUNTIMES if fmt in s.formats and s.device in (None, "cpu"))
        assert runtime_for(fmt, "cpu") == spec
    assert runtime_for("onnx", "cuda").gpu and runtime_for("tflite", "cuda") is None
    assert cpu_runtime("no-such-format") is None
