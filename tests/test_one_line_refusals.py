"""Hostile or mismatched inputs end in one line, decided as early as the input allows: IDX headers before
any data is read, class counts that disagree (a rule against its model, outputs files against each
other), output options that would overwrite each other, and a failed row on another machine that
--allow-missing must not excuse."""

import gzip
import json
import struct
import tracemalloc

import numpy as np
import pytest
from conftest import synthetic_arrays, write_idx
from helpers import LOOSE, one_error, run, saved_run


def flat(text: str) -> str:
    """The text with its 120-column wrapping undone."""
    return " ".join(text.split())


# ---------------------------------------------------------------- IDX headers decide before any data is read


def _gz(path, header: bytes, body: bytes = b"") -> None:
    path.write_bytes(gzip.compress(header + body))


@pytest.mark.parametrize("case", ["giant-image", "million-images"])
def test_an_idx_header_is_refused_before_its_data_is_read(tmp_path, case):
    """A 0.76 MB .gz declaring one 28000×28000 image cost 1.5 GB and 13 s before the refusal its
    header already decided; a 1,000,000-image header beside 10,000 labels cost 2.4 GB."""
    from toolkit.data import load_mnist
    from toolkit.errors import DataError

    folder = write_idx(tmp_path / "d", synthetic_arrays())
    images = folder / "t10k-images-idx3-ubyte.gz"
    if case == "giant-image":
        _gz(images, struct.pack(">IIII", 0x803, 1, 28000, 28000), bytes(28000 * 28000 // 8))
        message = "images are 28000×28000: input height 28000 is out of 1 to 1024"
    else:
        _gz(images, struct.pack(">IIII", 0x803, 1_000_000, 28, 28), bytes(28 * 28 * 40))
        message = "40 labels for 1,000,000 images"
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=message):
            load_mnist(folder, download=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated before the refusal"


def test_a_test_label_the_training_set_never_had_is_refused(tmp_path):
    """Train labels 0-9 and one test label 11 were accepted by data, train and verify without a word."""
    arrays = synthetic_arrays()
    arrays["train_labels"] = np.where(arrays["train_labels"] == 9, 8, arrays["train_labels"]).astype(np.uint8)
    folder = write_idx(tmp_path / "d", arrays)
    err = one_error(run("data", "--data-dir", folder))
    assert "test label 9 never appears in the training labels" in err


# ---------------------------------------------------------------- class counts that disagree


def test_a_not_a_digit_rule_for_another_class_count_is_one_line(exported, tiny_export):
    manifest = json.loads((exported / "manifest.json").read_text())
    model = manifest["ood"]["logit_model"]
    model["means"] = [row[:3] for row in model["means"][:3]]
    model["precision"] = [row[:3] for row in model["precision"][:3]]
    (exported / "manifest.json").write_text(json.dumps(manifest))
    err = one_error(run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE))
    assert "not-a-digit rule (ood) is for 3 classes, the export's model has 10" in err


def test_a_rule_applied_to_logits_of_another_width_is_a_toolkit_error(exported):
    """predict judges with the rule in a model's metadata: one made for 3 classes on a 10-logit model."""
    from toolkit import ood
    from toolkit.errors import ToolkitError

    rule = json.loads((exported / "manifest.json").read_text())["ood"]
    with pytest.raises(ToolkitError, match="made for 10 classes, but the model gives 3 logits"):
        ood.decide(rule, np.zeros((2, 28, 28), np.uint8), np.zeros((2, 3)))


@pytest.fixture
def host_and_wide(onnx_family_export, tiny_export, tmp_path):
    """A saved verify run, and a forged one of 12 classes per image (the document hash recomputed)."""
    from toolkit import outputs

    host = tmp_path / "host.json"
    doc = saved_run(onnx_family_export, tiny_export["data"], host)
    doc["num_classes"] = 12
    for row in doc["rows"]:
        if "logits" in row:
            row["logits"] = outputs._encode(np.zeros((doc["n_test"], 12), np.float32))
    doc["created"] = "2026-01-01T00:00:00+00:00"
    doc["sha256"] = outputs.hashlib.sha256(outputs._canonical(doc)).hexdigest()
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps(doc))
    return host, wide


def test_outputs_of_another_class_count_are_one_line_in_compare_and_golden(host_and_wide, onnx_family_export,
                                                                           tiny_export):
    host, wide = host_and_wide
    assert "12 logits per image" in one_error(run("compare", host, wide))
    r = run("verify", "--dir", onnx_family_export, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE,
            "--golden", wide, "--json", "-")
    assert r.exit_code == 1 and "Traceback" not in r.output
    rows = [x for x in json.loads(r.stdout)["rows"] if not x.get("is_reference") and x["status"] != "skipped"]
    assert rows and all(any("holds 12 logits per image" in why for why in x["reasons"]) for x in rows)


# ---------------------------------------------------------------- outputs never clobber each other


@pytest.mark.parametrize("args,message", [
    (["--json", "{t}/same.json", "--save-outputs", "{t}/same.json"], "--json writes the same file"),
    (["--markdown", "{t}/r.md", "--html", "{t}/r.md"], "--markdown writes the same file"),
    (["--html", "-"], "--html -: --html writes a file, not stdout"),
    (["--save-outputs", "-"], "--save-outputs -: --save-outputs writes a file"),
    (["--json", "{t}/model.xml"], "names an input file (a .xml file)"),
    (["--markdown", "{t}/weights.bin"], "names an input file (a .bin file)"),
])
def test_two_outputs_naming_one_file_or_stdout_where_it_cannot_go_are_usage_errors(tiny_export, tmp_path, args,
                                                                                   message):
    r = run("verify", "--dir", tiny_export["out"], "--data-dir", tiny_export["data"], "--no-torch", *LOOSE,
            *[a.format(t=tmp_path) for a in args])
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "same.json").exists() and not (tmp_path / "-").exists()
    assert not (tmp_path / "r.md").exists()


# ---------------------------------------------------------------- --allow-missing excuses absence, not failure


def test_a_row_that_failed_elsewhere_needs_allow_failed_and_the_verdict_names_it(host_and_wide, tmp_path):
    from toolkit import outputs

    host, _ = host_and_wide
    doc = json.loads(host.read_text())
    row = next(x for x in doc["rows"] if x["id"] == "onnx-int8@ort-cpu")
    row["status"] = "fail"
    del row["logits"]
    doc["created"] = "2026-01-01T00:00:00+00:00"
    doc["sha256"] = outputs.hashlib.sha256(outputs._canonical(doc)).hexdigest()
    device = tmp_path / "device.json"
    device.write_text(json.dumps(doc))
    r = run("compare", host, device, "--allow-missing", "onnx-int8@ort-cpu")
    assert r.exit_code == 1 and "--allow-failed onnx-int8@ort-cpu to accept" in flat(r.output), r.output
    r = run("compare", host, device, "--allow-failed", "onnx-int8@ort-cpu", "--json", "-")
    assert r.exit_code == 0, r.output
    assert "excused, not compared: onnx-int8@ort-cpu on device.json (failed there, --allow-failed)" in flat(r.stderr)
    assert json.loads(r.stdout)["excused"] == ["onnx-int8@ort-cpu on device.json (failed there, --allow-failed)"]
    # a row that was never run there is still --allow-missing's, and named too
    doc["rows"] = [x for x in doc["rows"] if x["id"] != "onnx-int8@ort-cpu"]
    doc["sha256"] = outputs.hashlib.sha256(outputs._canonical(doc)).hexdigest()
    device.write_text(json.dumps(doc))
    r = run("compare", host, device, "--allow-missing", "onnx-int8@ort-cpu")
    assert r.exit_code == 0 and "(absent there, --allow-missing)" in flat(r.output), r.output


def test_predict_with_a_rule_for_another_class_count_in_the_models_metadata_is_one_line(tiny_export, tmp_path):
    """The rule a model carries in its own metadata (mnisttk_ood), made for 3 classes, on a 10-logit model:
    a traceback before, one line now."""
    import onnx

    m = onnx.load(str(tiny_export["out"] / "cnn_fp32.onnx"))
    prop = next(p for p in m.metadata_props if p.key == "mnisttk_ood")
    rule = json.loads(prop.value)
    rule["logit_model"]["means"] = [row[:3] for row in rule["logit_model"]["means"][:3]]
    rule["logit_model"]["precision"] = [row[:3] for row in rule["logit_model"]["precision"][:3]]
    prop.value = json.dumps(rule)
    onnx.save(m, str(tmp_path / "model.onnx"))
    from toolkit.data import load_mnist

    np.save(tmp_path / "d.npy", load_mnist(tiny_export["data"], download=False).test_images[0])
    err = one_error(run("predict", tmp_path / "d.npy", "--model", tmp_path / "model.onnx", "--as-is"))
    assert "made for 3 classes, but the model gives 10 logits" in err


@pytest.mark.parametrize("case,message", [
    ("repeated", "names tflite-int8 a second time"),
    ("9000", "'not_exported' lists 9,000 entries; there are 14 targets"),
])
def test_a_manifest_naming_a_target_again_or_thousands_of_times_is_refused(exported, tiny_export, case, message):
    """A manifest naming one target 9,000 times in not_exported was accepted (a 1 MB report)."""
    manifest = json.loads((exported / "manifest.json").read_text())
    entry = {"target": "tflite-int8", "reason": "the converter could not take it"}
    manifest["not_exported"] = [entry] * (2 if case == "repeated" else 9000)
    (exported / "manifest.json").write_text(json.dumps(manifest))
    err = one_error(run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE))
    assert message in err


def test_verify_cluster_without_ray_names_the_extra(exported, tiny_export, tmp_path):
    """An install without the [cluster] extra: one line naming it, before anything is started."""
    import os
    import subprocess
    import sys

    hidden = tmp_path / "no_ray"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None  # not installed here\n")
    r = subprocess.run([sys.executable, "-m", "toolkit", "verify", "--dir", str(exported), "--data-dir",
                        str(tiny_export["data"]), "--cluster", "local"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(hidden)})
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("Error: --cluster needs Ray, which is not installed: "
                                                 "pip install 'mnisttk[cluster]'")
