"""Outputs that travel: `verify --save-outputs`, `verify --golden` and `mnisttk compare`."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import BLOCK_TORCH, LOOSE, run, third_party_check

from toolkit import outputs
from toolkit.compare import compare_pair, compare_runs, format_markdown, format_table, verdict
from toolkit.config import Gates
from toolkit.outputs import OutputsError

N = 1000


def _doc(logits: dict, labels=None, test_sha="a" * 64, shas=None, precision=None):
    """An outputs document for rows named by id, as verify would save them."""
    labels = np.arange(N) % 10 if labels is None else labels
    rows = [{"id": rid, "name": rid, "runtime": "ORT CPU", "precision": (precision or {}).get(rid, rid.split("-")[1].split("@")[0]),
             "fmt": rid.split("-")[0], "file": rid.split("@")[0] + ".onnx", "status": "ok", "accuracy": None,
             "latency_us": {"p50": 10.0}, "throughput": 1000.0} for rid in logits]
    result = {"rows": rows, "machine": {"cpu": {"model": "test"}, "arch": "x86_64"}, "threads": 1, "passed": True}
    return outputs.build(result, logits, labels, test_sha, shas or {r["file"]: "f" * 64 for r in rows})


def _save(tmp_path, name, doc):
    p = tmp_path / name
    p.write_bytes(outputs.dumps(doc))
    return p


def _resealed_doc(doc: dict) -> dict:
    doc["sha256"] = outputs.hashlib.sha256(outputs._canonical(doc)).hexdigest()
    return doc


def _resealed(doc: dict) -> bytes:
    return outputs.dumps(_resealed_doc(doc))


def _onehot(preds, scale=5.0):
    x = np.zeros((len(preds), 10), np.float32)
    x[np.arange(len(preds)), preds] = scale
    return x


def test_round_trip_is_exact_and_compact(tmp_path):
    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(N, 10)).astype(np.float32)
    int8 = (np.round(fp32 * 8) / 8).astype(np.float32)  # on a quantization grid, as an int8 output is
    p = _save(tmp_path, "a.json", _doc({"onnx-fp32@ort-cpu": fp32, "onnx-int8@ort-cpu": int8}))
    o = outputs.load(p)
    assert np.array_equal(o.logits["onnx-fp32@ort-cpu"], fp32) and np.array_equal(o.logits["onnx-int8@ort-cpu"], int8)
    assert np.array_equal(o.labels, np.arange(N) % 10)
    raw = 2 * fp32.nbytes
    assert p.stat().st_size < raw * 1.2  # base64 costs 4/3: shuffle+zlib must win most of it back


@pytest.mark.parametrize("damage", ["truncate", "flip_data", "edit_field", "array_only", "not_ours", "bomb",
                                    "encoding", "dtype", "shape"])
def test_damaged_outputs_are_one_line_refusals(tmp_path, damage):
    doc = _doc({"onnx-fp32@ort-cpu": _onehot(np.arange(N) % 10)})
    text = outputs.dumps(doc)
    if damage == "truncate":
        text = text[: len(text) // 2]
    elif damage == "flip_data":
        d = doc["rows"][0]["logits"]["data"]
        doc["rows"][0]["logits"]["data"] = d[:100] + ("A" if d[100] != "A" else "B") + d[101:]
        text = outputs.dumps(doc)
    elif damage == "edit_field":
        doc["test_sha256"] = "b" * 64
        text = outputs.dumps(doc)
    elif damage == "not_ours":
        text = b'{"rows": []}'
    elif damage in ("encoding", "dtype", "shape"):  # each one field of the array's header, hashes recomputed
        enc = doc["rows"][0]["logits"]
        enc.update({"encoding": {"encoding": "zlib"}, "dtype": {"dtype": "float64"},
                    "shape": {"shape": [N, 11]}}[damage])
        text = _resealed(doc)
    elif damage in ("array_only", "bomb"):  # the document hash recomputed: the array's own check must catch it
        x = _onehot(np.arange(N) % 10)
        x[3, 3] += 1
        enc = outputs._encode(x)
        if damage == "array_only":
            enc["sha256"] = doc["rows"][0]["logits"]["sha256"]
        else:  # a payload that inflates far past the shape it claims
            import base64
            import zlib
            enc["data"] = base64.b64encode(zlib.compress(b"\0" * (50 * 1024 * 1024))).decode()
        doc["rows"][0]["logits"] = enc
        text = _resealed(doc)
    p = tmp_path / "o.json"
    p.write_bytes(text)
    with pytest.raises(OutputsError) as e:
        outputs.load(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_fp32_gate_exactly_at_and_past_the_tolerance():
    labels = np.arange(N) % 10
    base = _onehot(labels).astype(np.float64)
    gates = Gates(fp32_max_abs_logit_diff=0.25)
    at, past = base.copy(), base.copy()
    at[7, 2] += 0.25
    past[7, 2] += 0.25 + 1e-9
    assert compare_pair(base, at, labels, "fp32", gates)["status"] == "ok"
    cell = compare_pair(base, past, labels, "fp32", gates)
    assert cell["status"] == "fail" and cell["failed_gates"] == ["fp32_logits"]
    one_flip = base.copy()
    one_flip[11, 2] = 9.0  # a different top class on image 11, logits otherwise alike
    cell = compare_pair(base, one_flip, labels, "fp32", Gates(fp32_max_abs_logit_diff=100))
    assert cell["failed_gates"] == ["fp32_flips"] and cell["flipped_indices"] == [11]


def test_int8_agreement_and_accuracy_gates_at_and_past_their_limits():
    labels = np.arange(N) % 10
    base = _onehot(labels).astype(np.float64)  # all right
    gates = Gates(int8_min_agreement_pct=99.5, int8_max_drop_points=0.3)

    def flipped(k):
        x = base.copy()
        for i in range(k):
            x[i] = _onehot([(labels[i] + 1) % 10])[0]
        return x

    cell = compare_pair(base, flipped(3), labels, "int8", gates)
    assert cell["status"] == "ok" and cell["agreement"] == 0.997  # 0.3 points, 99.7%
    assert (cell["accuracy_base"], cell["accuracy"], cell["acc_diff"]) == (1.0, 0.997, -0.003)
    assert cell["flipped_indices"] == [0, 1, 2] and cell["max_abs_logit_diff"] == 5.0
    assert compare_pair(base, flipped(4), labels, "int8", gates)["failed_gates"] == ["int8_drop"]
    loose_drop = Gates(int8_min_agreement_pct=99.5, int8_max_drop_points=100)
    assert compare_pair(base, flipped(5), labels, "int8", loose_drop)["status"] == "ok"  # exactly 99.5%
    assert compare_pair(base, flipped(6), labels, "int8", loose_drop)["failed_gates"] == ["int8_agreement"]
    # the accuracy gate holds both ways: the other run much better than the baseline fails as well
    worse = flipped(10)
    cell = compare_pair(worse, base, labels, "int8", Gates(int8_min_agreement_pct=0, int8_max_drop_points=0.3))
    assert cell["failed_gates"] == ["int8_drop"] and cell["mcnemar_p"] < 0.01


def test_runs_on_other_test_sets_or_other_bytes_are_refused(tmp_path):
    x = {"onnx-fp32@ort-cpu": _onehot(np.arange(N) % 10)}
    a = outputs.load(_save(tmp_path, "a.json", _doc(x)))
    b = outputs.load(_save(tmp_path, "b.json", _doc(x, test_sha="c" * 64)))
    with pytest.raises(OutputsError, match="another test set"):
        compare_runs([a, b], Gates())
    c = outputs.load(_save(tmp_path, "c.json", _doc(x, shas={"onnx-fp32.onnx": "e" * 64})))
    with pytest.raises(OutputsError, match="onnx-fp32@ort-cpu: .*c.json ran other bytes"):
        compare_runs([a, c], Gates())
    d = outputs.load(_save(tmp_path, "d.json", _doc({"tflite-fp32@litert": _onehot(np.arange(N) % 10)})))
    with pytest.raises(OutputsError, match="nothing to compare"):
        compare_runs([a, d], Gates())


def test_three_runs_give_one_matrix(tmp_path):
    labels = np.arange(N) % 10
    good = {"onnx-fp32@ort-cpu": _onehot(labels), "onnx-int8@ort-cpu": _onehot(labels)}
    drift = {"onnx-fp32@ort-cpu": _onehot(labels), "onnx-int8@ort-cpu": _onehot((labels + (np.arange(N) < 20)) % 10)}
    partial = {"onnx-fp32@ort-cpu": _onehot(labels)}
    files = [_save(tmp_path, f"{n}.json", _doc(d)) for n, d in (("host", good), ("pi", drift), ("phone", partial))]
    r = run("compare", *files, "--json", tmp_path / "c.json")
    assert r.exit_code == 1, r.output
    res = json.loads((tmp_path / "c.json").read_text())
    cells = {row["id"]: [c["status"] for c in row["cells"]] for row in res["rows"]}
    # the phone has no int8 outputs: a row in one run only fails, unless --allow-missing names it
    assert cells == {"onnx-fp32@ort-cpu": ["ok", "ok"], "onnx-int8@ort-cpu": ["fail", "fail"]}
    assert "onnx-int8@ort-cpu on pi.json: accuracy drop 2.00 points > 0.30; agreement 98.00% < 99.5%" in r.output
    assert "onnx-int8@ort-cpu on phone.json: outputs in one run only" in r.output.replace("\n    ", " ")
    assert "[1] pi.json" in r.output and "[2] phone.json" in r.output
    r = run("compare", files[0], files[2], "--allow-missing", "onnx-int8*", "--json", tmp_path / "c2.json")
    assert r.exit_code == 0, r.output
    cell = json.loads((tmp_path / "c2.json").read_text())["rows"][1]["cells"][0]
    assert cell["status"] == "absent" and cell["missing"] and "allowed by --allow-missing" in cell["reasons"]


def test_verify_saves_outputs_and_a_golden_run_judges_image_by_image(onnx_family_export, tiny_export, tmp_path):
    folder, data = onnx_family_export, tiny_export["data"]
    host = tmp_path / "host.json"
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", *LOOSE, "--save-outputs", host)
    assert r.exit_code == 0, r.output
    saved = outputs.load(host)
    ids = {"onnx-fp32@ort-cpu", "onnx-int8@ort-cpu", "ort-fp32@ort-cpu", "ort-int8@ort-cpu", "triton-fp32@ort-cpu",
           "triton-int8@ort-cpu", "eager-fp32@npz"}
    assert ids <= set(saved.logits) and len(saved.labels) == 40

    # the same run again: compare agrees exactly, and --golden passes with every row compared
    device = tmp_path / "device.json"
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", *LOOSE, "--golden", host,
            "--save-outputs", device, "--json", tmp_path / "v.json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "v.json").read_text())
    golden = {row["id"]: row["golden"] for row in report["rows"] if row["golden"]}
    assert {k for k, g in golden.items() if g["status"] == "ok"} == ids - {"eager-fp32@npz"}
    r = run("compare", host, device, "--json", tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "c.json").read_text())
    cells = {row["id"]: row["cells"][0] for row in res["rows"] if row["cells"][0]["status"] != "absent"}
    assert set(cells) == ids - {"eager-fp32@npz"} and res["cells_compared"] == 6
    assert all(c["flipped"] == 0 and c["max_abs_logit_diff"] == 0 for c in cells.values())

    # a host whose int8 model predicted otherwise on two images: the device's row now fails by name
    doc = json.loads(host.read_bytes())
    i = next(k for k, row in enumerate(doc["rows"]) if row["id"] == "onnx-fp32@ort-cpu")
    x = saved.logits["onnx-fp32@ort-cpu"].copy()
    x[[4, 9]] = x[[4, 9]][:, ::-1] * 3
    doc["rows"][i]["logits"] = outputs._encode(x)
    other = tmp_path / "other-host.json"
    other.write_bytes(_resealed(doc))
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", *LOOSE, "--golden", other,
            "--json", tmp_path / "v2.json")
    assert r.exit_code == 1
    row = next(x for x in json.loads((tmp_path / "v2.json").read_text())["rows"] if x["id"] == "onnx-fp32@ort-cpu")
    assert row["golden"]["flipped_indices"] == [4, 9] and "golden_fp32_flips" in row["failed_gates"]
    assert "against the golden outputs: 2 predictions differ" in r.output


def test_golden_from_other_bytes_or_test_set_is_refused(onnx_family_export, tiny_export, tmp_path):
    folder, data = onnx_family_export, tiny_export["data"]
    doc = _doc({"onnx-fp32@ort-cpu": _onehot(np.arange(40) % 10)[:40]}, labels=np.arange(40) % 10)
    g = _save(tmp_path, "g.json", doc)
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", *LOOSE, "--golden", g)
    assert r.exit_code == 1 and "made on another test set" in r.output and len(r.output.strip().splitlines()) == 1
    host = tmp_path / "host.json"
    assert run("verify", "--dir", folder, "--data-dir", data, "--no-torch", *LOOSE, "--save-outputs", host).exit_code == 0
    d = json.loads(host.read_bytes())
    for row in d["rows"]:
        if row["id"] == "onnx-int8@ort-cpu":
            row["artifact_sha256"] = "0" * 64
    d["sha256"] = outputs.hashlib.sha256(outputs._canonical(d)).hexdigest()
    host.write_bytes(outputs.dumps(d))
    r = run("verify", "--dir", folder, "--data-dir", data, "--no-torch", *LOOSE, "--golden", host)
    assert r.exit_code == 1 and "ONNX int8 on ORT CPU: FAIL: against the golden outputs:" in r.output
    assert "ran other bytes" in r.output


def test_outputs_never_overwrite_an_input_and_compare_needs_two(onnx_family_export, tiny_export, tmp_path):
    host = tmp_path / "host.json"
    assert run("verify", "--dir", onnx_family_export, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE,
               "--save-outputs", host).exit_code == 0
    before = host.read_bytes()
    r = run("verify", "--dir", onnx_family_export, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE,
            "--golden", host, "--save-outputs", host)
    assert r.exit_code == 2 and "will not be overwritten" in r.output and host.read_bytes() == before
    r = run("compare", host)
    assert r.exit_code == 2 and "at least two" in r.output
    r = run("compare", host, tmp_path / "missing.json")
    assert r.exit_code == 1 and "missing.json: no such file" in r.output


def test_compare_needs_no_torch(onnx_family_export, tiny_export, tmp_path):
    host = tmp_path / "host.json"
    assert run("verify", "--dir", onnx_family_export, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE,
               "--save-outputs", host).exit_code == 0
    assert run("verify", "--dir", onnx_family_export, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE,
               "--save-outputs", tmp_path / "again.json").exit_code == 0
    code = BLOCK_TORCH + textwrap.dedent(f"""
        from click.testing import CliRunner
        from toolkit.cli import main
        r = CliRunner().invoke(main, ["compare", r"{host}", r"{tmp_path / 'again.json'}"])
        assert r.exit_code == 0, r.output
        assert "PASS" in r.output
    """) + third_party_check({"click", "numpy", "onnxruntime", "google"}) + "\nprint('TORCH-FREE OK')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "TORCH-FREE OK" in r.stdout, r.stdout + r.stderr


def test_outputs_load_decides_at_each_bound(tmp_path):
    """load's checks exactly at and one step past each bound, each refusal an OutputsError naming the file:
    a folder or a FIFO is not read; n_test from 1; num_classes 2..1000 (absent: MNIST's 10); labels below it."""
    import os

    (tmp_path / "dir.json").mkdir()
    os.mkfifo(tmp_path / "fifo.json")
    for name in ("dir.json", "fifo.json", "absent.json"):
        with pytest.raises(OutputsError, match=name):
            outputs.load(tmp_path / name)

    def doc_with(n, c=None, labels=None):
        labels = np.arange(n) % 2 if labels is None else labels
        doc = outputs.build({"rows": [], "machine": {}, "threads": 1, "passed": True}, {}, labels, "a" * 64, {})
        if c is not None:
            doc["num_classes"] = c
        return _resealed_doc(doc)

    one = tmp_path / "one.json"
    one.write_bytes(outputs.dumps(doc_with(1, labels=np.array([0]))))
    assert len(outputs.load(one).labels) == 1  # a test set of one image is one
    zero = doc_with(1, labels=np.array([0]))
    zero["n_test"] = 0
    one.write_bytes(_resealed(zero))
    with pytest.raises(OutputsError, match="n_test 0 is not an image count"):
        outputs.load(one)
    no_classes = doc_with(4, labels=np.array([9, 0, 1, 2]))
    no_classes.pop("num_classes", None)
    one.write_bytes(_resealed(no_classes))
    assert outputs.load(one).labels.tolist() == [9, 0, 1, 2]  # absent: 10 classes, so label 9 is in range
    for c, ok in ((2, True), (1, False), (1000, True), (1001, False)):
        d = doc_with(4, labels=np.array([0, 1, 1, 0]))
        d["num_classes"] = c
        one.write_bytes(_resealed(d))
        if ok:
            assert len(outputs.load(one).labels) == 4
        else:
            with pytest.raises(OutputsError, match=f"num_classes '{c}' is not a class count"):
                outputs.load(one)
    d = doc_with(4, labels=np.array([0, 1, 2, 1]))
    d["num_classes"] = 2
    one.write_bytes(_resealed(d))
    with pytest.raises(OutputsError, match="labels outside 0-1"):
        outputs.load(one)


def test_outputs_load_bounds_its_work_and_reads_only_what_verify_writes(tmp_path):
    """Nesting up to MAX_DEPTH, n_test up to MAX_IMAGES, the decoded size up to MAX_DECODED_BYTES (counted over
    the rows that carry logits, before anything is decoded), and only the arithmetic and precision names verify
    writes: each at and one step past its bound."""
    p = tmp_path / "o.json"

    def load(doc):
        p.write_bytes(_resealed(doc))
        return outputs.load(p)

    base = _doc({"onnx-fp32@ort-cpu": _onehot(np.arange(N) % 10)})

    def nested(levels):
        x: list = []
        for _ in range(levels - 1):
            x = [x]
        return x

    doc = json.loads(outputs.dumps(base))
    doc["machine"] = {"deep": nested(outputs.MAX_DEPTH - 2)}  # the document 1, machine 2, the lists 3..MAX_DEPTH
    assert len(load(doc).labels) == N
    doc["machine"] = {"deep": nested(outputs.MAX_DEPTH - 1)}
    with pytest.raises(OutputsError, match=f"nested more than {outputs.MAX_DEPTH} deep"):
        load(doc)

    for field, value, ok in (("arithmetic", "default", True), ("arithmetic", "exact", True), ("arithmetic", "fast", False),
                             ("ran_precision", "bf16", True), ("ran_precision", "f16", True), ("ran_precision", "fp8", False)):
        doc = json.loads(outputs.dumps(base))
        doc["rows"][0][field] = value
        if ok:
            assert "onnx-fp32@ort-cpu" in load(doc).logits
        else:
            with pytest.raises(OutputsError, match=f"{field} {value!r}.* is not one mnisttk writes"):
                load(doc)

    # n_test: a million images at most (the budget below is checked before any array is decoded)
    per_row = outputs.MAX_IMAGES * outputs.NUM_CLASSES * 4
    fits = (outputs.MAX_DECODED_BYTES - outputs.MAX_IMAGES) // per_row  # rows with logits that fit the budget
    for n, rows_with_logits, refusal in ((outputs.MAX_IMAGES + 1, 1, "is not an image count"),
                                         (outputs.MAX_IMAGES, fits + 1, "would decode to"),
                                         (outputs.MAX_IMAGES, fits, "labels")):
        doc = json.loads(outputs.dumps(base))
        doc["n_test"] = n
        doc["rows"] = [{**doc["rows"][0], "id": f"r{i}"} for i in range(rows_with_logits)]
        doc["rows"].append({**doc["rows"][0], "id": "no-logits"})
        doc["rows"][-1].pop("logits")  # a row without logits costs nothing
        with pytest.raises(OutputsError, match=refusal):  # within the budget: the labels' shape is what fails
            load(doc)


def test_outputs_load_refuses_every_malformed_shape_of_document(tmp_path):
    """What a hand-made or bent file can be, each refused in one line: not a JSON object, a NaN that JSON
    admits, n_test given as true, no test_sha256, rows not a list, rows past MAX_ROWS (at it: read), a row id
    twice, JSON containers past MAX_CONTAINERS (at it: read)."""
    p = tmp_path / "o.json"
    base = _doc({"onnx-fp32@ort-cpu": _onehot(np.arange(N) % 10)})

    def load(doc=None, raw=None):
        p.write_bytes(raw if raw is not None else _resealed(doc))
        return outputs.load(p)

    def fresh():
        return json.loads(outputs.dumps(base))

    with pytest.raises(OutputsError, match="not an mnisttk outputs file"):
        load(raw=b"[]")
    doc = fresh()
    text = outputs.dumps(doc).replace(b'"threads": 1', b'"threads": NaN')
    with pytest.raises(OutputsError, match="SHA-256 does not match"):
        load(raw=text)  # json reads NaN; the document's hash cannot be computed over it
    cases = [("n_test", True, "n_test True is not an image count"), ("test_sha256", None, "no test_sha256"),
             ("rows", {"0": {}}, "no list of rows")]
    for key, value, message in cases:
        doc = fresh()
        doc[key] = value
        with pytest.raises(OutputsError, match=message):
            load(doc)
    row = fresh()["rows"][0]
    row.pop("logits")
    for count, ok in ((outputs.MAX_ROWS, True), (outputs.MAX_ROWS + 1, False)):
        doc = fresh()
        doc["rows"] = [{**row, "id": f"r{i}"} for i in range(count)]
        if ok:
            assert len(load(doc).doc["rows"]) == count
        else:
            with pytest.raises(OutputsError, match="no list of rows"):
                load(doc)
    doc = fresh()
    doc["rows"] = [row, dict(row)]
    with pytest.raises(OutputsError, match="row 1 has no id, or one seen before"):
        load(doc)
    doc = fresh()
    used = outputs.dumps(doc).count(b"{") + outputs.dumps(doc).count(b"[")
    doc["machine"]["pad"] = [[] for _ in range(outputs.MAX_CONTAINERS - used - 1)]  # the list itself is one more
    assert load(doc).labels.shape == (N,)
    doc["machine"]["pad"].append([])
    with pytest.raises(OutputsError, match="JSON objects and arrays"):
        load(doc)


def test_compare_document_names_every_run_and_each_cell_s_ratios(tmp_path):
    """compare's JSON, field by field: the runs it read (file, label, machine, created, version, verify's verdict),
    every non-reference row once (in first-seen order) with one cell per later run, the latency and throughput
    ratios of each cell (this run's over the first's), and the count of cells compared; it validates against
    docs/schemas/compare.schema.json."""
    import pathlib

    from toolkit.verify import _machine

    jsonschema = pytest.importorskip("jsonschema")
    x = _onehot(np.arange(N) % 10)
    machine = _machine()
    docs = []
    for k, (p50, tp) in enumerate(((10.0, 1000.0), (25.0, 400.0), (5.0, 4000.0))):
        d = _doc({"onnx-fp32@ort-cpu": x, "tflite-fp32@litert": x}, test_sha="a" * 64)
        for r in d["rows"]:
            r["latency_us"], r["throughput"] = {"p50": p50}, tp
        d["rows"].insert(0, {**d["rows"][0], "id": "eager-fp32@torch", "is_reference": True})
        d["machine"] = {**machine, "cpu": {**machine["cpu"], "model": f"m{k}"}}  # this machine's record, renamed
        d["created"], d["passed"] = f"2026-12-0{k + 1}", k != 1
        docs.append(outputs.load(_save(tmp_path, f"run{k}.json", _resealed_doc(json.loads(outputs.dumps(d))))))
    out = compare_runs(docs, Gates())
    assert out["kind"] == "mnisttk-compare" and out["schema_version"] == 1 and out["passed"] is True
    assert out["n_test"] == N and out["test_sha256"] == "a" * 64 and out["cells_compared"] == 4
    assert [r["file"] for r in out["runs"]] == [d.path for d in docs]
    assert [r["machine"]["cpu"]["model"] for r in out["runs"]] == ["m0", "m1", "m2"]
    assert [r["created"] for r in out["runs"]] == ["2026-12-01", "2026-12-02", "2026-12-03"]
    assert [r["verify_passed"] for r in out["runs"]] == [True, False, True]
    assert all(r["mnisttk"] == docs[0].doc["mnisttk"] and r["label"] for r in out["runs"])
    assert [r["id"] for r in out["rows"]] == ["onnx-fp32@ort-cpu", "tflite-fp32@litert"]  # the reference: not compared
    row = out["rows"][0]
    assert row["name"] == "onnx-fp32@ort-cpu" and row["runtime"] == "ORT CPU" and row["precision"] == "fp32"
    assert row["artifact_sha256"] == "f" * 64
    assert [(c["run"], c["latency_ratio"], c["throughput_ratio"]) for c in row["cells"]] == [(1, 2.5, 0.4), (2, 0.5, 4.0)]
    schema = json.loads((pathlib.Path(__file__).parent.parent / "docs" / "schemas" / "compare.schema.json").read_text())
    jsonschema.validate(json.loads(json.dumps(out)), schema, cls=jsonschema.Draft202012Validator)


def test_compare_refuses_a_run_against_itself_and_outputs_without_their_bytes(tmp_path):
    """check_comparable's decisions: the same document twice; a row's outputs without a 64-hex artifact SHA-256
    (only a row that has outputs needs one); the reference row is reference.npz on both sides, so its bytes are
    never compared; a default-precision row one CPU has and the other lacks is noted, not failed."""
    x = _onehot(np.arange(N) % 10)
    a = outputs.load(_save(tmp_path, "a.json", _doc({"onnx-fp32@ort-cpu": x})))
    with pytest.raises(OutputsError, match="is the same run as"):
        compare_runs([a, outputs.load(_save(tmp_path, "a2.json", json.loads(outputs.dumps(a.doc))))], Gates())

    def run_with(name, shas=None, extra_rows=(), logits=None):
        doc = _doc(logits or {"onnx-fp32@ort-cpu": x}, shas=shas)
        doc["created"] = name  # another run: another document
        for r in extra_rows:
            doc["rows"].append(r)
        return outputs.load(_save(tmp_path, name, _resealed_doc(json.loads(outputs.dumps(doc)))))

    base = run_with("base.json")
    for k, bad in enumerate(("", "f" * 63, None)):
        with pytest.raises(OutputsError, match="gives outputs without the SHA-256 of the artifact that made them; "
                                               "refused$"):
            compare_runs([base, run_with(f"bad{k}.json", shas={"onnx-fp32.onnx": bad})], Gates())
    def with_reference(name, digest):  # the reference row, with its logits, made from another checkpoint file
        doc = _doc({"onnx-fp32@ort-cpu": x, "eager-fp32@torch": x},
                   shas={"onnx-fp32.onnx": "f" * 64, "eager-fp32.onnx": digest})
        doc["rows"][1]["is_reference"], doc["created"] = True, name
        doc["rows"].append(no_outputs)
        return outputs.load(_save(tmp_path, name, _resealed_doc(json.loads(outputs.dumps(doc)))))

    no_outputs = {"id": "tflite-fp32@litert", "name": "LiteRT fp32", "runtime": "LiteRT XNNPACK", "precision": "fp32",
                  "fmt": "tflite", "file": "cnn_fp32.tflite", "status": "skipped", "artifact_sha256": None}
    out = compare_runs([with_reference("r1.json", "1" * 64), with_reference("r2.json", "2" * 64)], Gates())
    assert out["passed"] and [r["id"] for r in out["rows"]] == ["onnx-fp32@ort-cpu", "tflite-fp32@litert"]
    assert out["rows"][1]["cells"][0]["status"] == "absent"  # outputs in neither run: nothing to compare, no fault
    bf16 = "onnx-fp32@openvino-bf16"
    one = run_with("bf16.json", logits={"onnx-fp32@ort-cpu": x, bf16: x})
    out = compare_runs([one, run_with("f32cpu.json")], Gates())
    cell = next(r for r in out["rows"] if r["id"] == bf16)["cells"][0]
    assert out["passed"] and cell["status"] == "absent" and "exists only on CPUs with that mode" in cell["reasons"][-1]
    # the same row present on both CPUs but without outputs on one: that is a failure
    lost = run_with("lost.json", extra_rows=[{**no_outputs, "id": bf16, "status": "fail"}])
    out = compare_runs([one, lost], Gates())
    cell = next(r for r in out["rows"] if r["id"] == bf16)["cells"][0]
    assert not out["passed"] and cell["status"] == "fail" and "lost.json: row fail, no outputs" in cell["reasons"]


# Every typed field of an outputs file, a value of another type, and that type's name in the refusal
ROW_FIELDS = [("name", 1, "int"), ("runtime", [], "list"), ("fmt", 2.5, "float"), ("file", {}, "dict"),
              ("status", True, "bool"), ("artifact_sha256", 42, "int"), ("loaded_sha256", 42, "int"),
              ("is_reference", 1, "int"), ("accuracy", "0.99", "str"), ("accuracy", True, "bool"),
              ("throughput", [1], "list"), ("throughput", False, "bool"), ("latency_us", [1, 2], "list")]
DOC_FIELDS = [("machine", "x", "str"), ("mnisttk", 1, "int"), ("created", 1.5, "float"), ("threads", 2.0, "float"),
              ("threads", True, "bool"), ("throughput_batch", "256", "str"), ("throughput_batch", False, "bool"),
              ("passed", 1, "int")]
MACHINE_FIELDS = [("cpu", ["x"], "list"), ("arch", 1, "int"), ("note", {}, "dict"), ("onnxruntime", 1.0, "float")]


def test_outputs_check_types_refuses_each_field_of_another_type_and_takes_its_own():
    check = outputs._check_types
    for field, value, type_name in ROW_FIELDS:
        with pytest.raises(OutputsError) as e:
            check("f.json", 3, {"id": "onnx-int8@ort-cpu", field: value})
        assert str(e.value) == f"f.json: row onnx-int8@ort-cpu: field {field} is {type_name}, which it never is; refused"
    for field, value, type_name in DOC_FIELDS:
        with pytest.raises(OutputsError) as e:
            check("f.json", None, {field: value})
        assert str(e.value) == f"f.json: field {field} is {type_name}, which it never is; refused"
    for field, value, type_name in MACHINE_FIELDS:
        with pytest.raises(OutputsError) as e:
            check("f.json", None, {"machine": {field: value}})
        assert str(e.value) == f"f.json: field machine.{field} is {type_name}, which it never is; refused"
    good_row = {"id": "r", "name": "n", "runtime": "ORT CPU", "fmt": "onnx", "file": "m.onnx", "status": "ok",
                "artifact_sha256": "a", "loaded_sha256": "b", "is_reference": False, "accuracy": 1, "throughput": 2.5,
                "latency_us": {"p50": 1, "p99": 2.5, "mean": None}}
    check("f.json", 0, good_row)
    check("f.json", 0, {k: None for k in good_row})  # None: not measured, allowed everywhere
    check("f.json", None, {"machine": {"cpu": {"model": "Xeon"}, "arch": "x86_64", "note": "n", "onnxruntime": "1"},
                           "mnisttk": "0.1", "created": "now", "threads": 2, "throughput_batch": 256, "passed": True})
    check("f.json", None, {"machine": None, "threads": None})
    # the row's fields are not the document's, and the other way round
    check("f.json", None, {"accuracy": "high", "status": 1, "latency_us": {"p50": "x"}})
    check("f.json", 0, {"threads": "two", "passed": "yes"})


def test_outputs_check_types_names_the_row_and_checks_nested_values():
    check = outputs._check_types
    with pytest.raises(OutputsError, match=r"^f.json: row 7 is not an object$"):
        check("f.json", 7, ["not", "a", "row"])
    with pytest.raises(OutputsError, match=r"^f.json: row 2: field name is int"):
        check("f.json", 2, {"name": 1})  # no id: its index
    with pytest.raises(OutputsError) as e:
        check("f.json", 0, {"id": "x" * 100, "name": 1})
    assert str(e.value).startswith(f"f.json: row {'x' * 60}: field name")  # an id of any length: 60 characters
    for bad in ("fast", True, [1]):
        with pytest.raises(OutputsError, match=r"^f.json: row r: field latency_us holds a value that is not a number"):
            check("f.json", 0, {"id": "r", "latency_us": {"p50": 1.0, "p99": bad}})
    with pytest.raises(OutputsError, match=r"^f.json: field machine.cpu.model is int, not a string$"):
        check("f.json", None, {"machine": {"cpu": {"model": 5}}})
    check("f.json", None, {"machine": {"cpu": {"model": None}}})


def _one_row_outputs(n=4) -> dict:
    """The outputs document of a run of one row, its logits given in float64."""
    labels = np.arange(n) % 10
    result = {"rows": [{"id": "onnx-int8@ort-cpu", "name": "ONNX int8", "runtime": "ORT CPU", "precision": "int8",
                        "fmt": "onnx", "file": "m.onnx", "status": "ok"}], "threads": 1, "passed": True}
    logits = np.eye(10)[labels] * 3.0
    return outputs.build(result, {"onnx-int8@ort-cpu": logits}, labels, "a" * 64, {"m.onnx": "f" * 64})


def test_outputs_load_takes_exactly_its_decoded_bound_and_refuses_one_byte_more(tmp_path, monkeypatch):
    path = tmp_path / "o.json"
    path.write_bytes(outputs.dumps(_one_row_outputs()))
    decoded = 4 + 1 * 4 * 10 * 4  # the labels' bytes, and one row's 4 × 10 float32 logits
    monkeypatch.setattr(outputs, "MAX_DECODED_BYTES", decoded)
    loaded = outputs.load(path)
    assert loaded.logits["onnx-int8@ort-cpu"].dtype == np.float32  # stored as float32 whatever it was given in
    assert loaded.labels.dtype == np.int64 and loaded.labels.tolist() == [0, 1, 2, 3]
    monkeypatch.setattr(outputs, "MAX_DECODED_BYTES", decoded - 1)
    with pytest.raises(OutputsError, match=f"would decode to {decoded} bytes, more than the {decoded - 1} "):
        outputs.load(path)


def test_outputs_load_checks_each_rows_own_field_types(tmp_path):
    doc = _one_row_outputs()
    doc["rows"][0]["name"] = 1
    path = tmp_path / "o.json"
    path.write_bytes(_resealed(doc))
    with pytest.raises(OutputsError, match="row onnx-int8@ort-cpu: field name is int"):
        outputs.load(path)


def test_an_encoded_array_is_strict_base64_of_exactly_its_shapes_bytes():
    good = outputs._encode(np.arange(4, dtype=np.float32))
    assert np.array_equal(outputs._decode(dict(good), "x", (4,)), np.arange(4))
    spaced = dict(good, data=good["data"][:4] + "*" + good["data"][4:])  # a character outside base64's alphabet
    with pytest.raises(OutputsError, match="^x: its data does not decode"):
        outputs._decode(spaced, "x", (4,))
    short = dict(outputs._encode(np.arange(3, dtype=np.float32)), shape=[4])  # a whole stream, one value short
    with pytest.raises(OutputsError, match=r"^x: 12 bytes where 16 were expected \(truncated or edited\)$"):
        outputs._decode(short, "x", (4,))
    long = dict(outputs._encode(np.arange(5, dtype=np.float32)), shape=[4])
    with pytest.raises(OutputsError, match=r"^x: 17 bytes where 16 were expected"):  # inflated no further than 1 byte
        outputs._decode(long, "x", (4,))


def test_the_hash_is_over_a_canonical_form_and_no_file_holds_nan():
    assert outputs._canonical({"b": 1, "a": [1.5], "sha256": "x"}) == b'{"a":[1.5],"b":1}'
    assert outputs._canonical({"a": 1, "b": 2}) == outputs._canonical({"b": 2, "a": 1})
    with pytest.raises(ValueError):
        outputs._canonical({"a": float("nan")})
    with pytest.raises(ValueError):
        outputs.dumps({"a": float("inf")})


# ---- compare's remaining decisions, and its two renderings pinned -------------------------------------

LABELS = np.arange(N) % 10


def _flip(k):
    """Logits whose top-1 moves the first k test images to the next class."""
    return _onehot((LABELS + (np.arange(N) < k)) % 10)


def _run_doc(tmp_path, name, logits, extra_rows=(), timing=None, ran=None):
    """One saved verify run: `logits` by row id, rows without outputs in `extra_rows`, (p50, img/s) per row in
    `timing` (a None: not timed), the precision a runtime ran a row at its default in `ran`."""
    doc = _doc(logits)
    for r in doc["rows"]:
        p50, tp = (timing or {}).get(r["id"], (10.0, 1000.0))
        r["latency_us"], r["throughput"] = ({"p50": p50} if p50 else None), tp
        if r["id"] in (ran or {}):
            r["arithmetic"], r["ran_precision"] = "default", ran[r["id"]]
    doc["rows"] += [dict(r) for r in extra_rows]
    doc["created"] = name  # another run: another document
    return outputs.load(_save(tmp_path, name, _resealed_doc(json.loads(outputs.dumps(doc)))))


def test_compare_judges_each_row_at_its_own_precision_and_a_default_row_at_the_runtimes(tmp_path):
    """Through compare_runs: an int8 row takes the int8 gates (3 flips in 1,000 sit at the drop limit and pass, 4
    fail), an fp32 row the fp32 gates (one flip fails); a runtime's default-precision row that both runs ran at bf16
    takes bf16's (logits 0.01 apart, same predictions: passes), and at fp32 on one side, fp32's (fails)."""
    x = _onehot(LABELS)
    base = _run_doc(tmp_path, "base.json", {"onnx-fp32@ort-cpu": x, "onnx-int8@ort-cpu": x})

    def against(name, fp32, int8):
        return compare_runs([base, _run_doc(tmp_path, name, {"onnx-fp32@ort-cpu": fp32, "onnx-int8@ort-cpu": int8})],
                            Gates())

    out = against("k3.json", x, _flip(3))
    assert out["passed"] and out["rows"][1]["cells"][0]["flipped"] == 3, out["failed"]
    out = against("k4.json", x, _flip(4))
    assert out["failed"] == ["onnx-int8@ort-cpu on k4.json: accuracy drop 0.40 points > 0.30"]
    assert out["rows"][1]["cells"][0]["failed_gates"] == ["int8_drop"]
    out = against("f1.json", _flip(1), x)
    assert [c["status"] for r in out["rows"] for c in r["cells"]] == ["fail", "ok"]
    assert out["rows"][0]["cells"][0]["failed_gates"] == ["fp32_flips", "fp32_logits"]
    bf16 = "onnx-fp32@openvino-bf16"
    near = x + np.float32(0.01)
    a = _run_doc(tmp_path, "bf.json", {bf16: x}, ran={bf16: "bf16"})
    out = compare_runs([a, _run_doc(tmp_path, "bf2.json", {bf16: near}, ran={bf16: "bf16"})], Gates())
    assert out["passed"], out["failed"]
    out = compare_runs([a, _run_doc(tmp_path, "bf3.json", {bf16: near})], Gates())
    assert out["rows"][0]["cells"][0]["failed_gates"] == ["fp32_logits"] and not out["passed"]


def test_compare_checks_every_row_after_the_reference_and_every_later_run(tmp_path):
    """check_comparable reads on past the reference row (a later row of other bytes is refused); a row missing
    from one later run still gets its cell in the next; a timing ratio needs both sides' figure."""
    x = _onehot(LABELS)
    ref = {"id": "eager-fp32@torch", "name": "reference", "runtime": "PyTorch", "precision": "fp32", "fmt": "eager",
           "file": "cnn.pt", "status": "ok", "is_reference": True, "artifact_sha256": None}

    def with_ref(name, digest):
        doc = _doc({"eager-fp32@torch": x, "onnx-fp32@ort-cpu": x}, shas={"eager-fp32.onnx": "1" * 64,
                                                                           "onnx-fp32.onnx": digest})
        doc["rows"][0].update(ref)
        doc["created"] = name
        return outputs.load(_save(tmp_path, name, _resealed_doc(json.loads(outputs.dumps(doc)))))

    with pytest.raises(OutputsError, match=r"onnx-fp32@ort-cpu: .*r2.json ran other bytes \(SHA-256 222222222222…\) "
                                           r"than .*r1.json \(111111111111…\); refused"):
        compare_runs([with_ref("r1.json", "1" * 64), with_ref("r2.json", "2" * 64)], Gates())
    both = {"onnx-fp32@ort-cpu": x, "onnx-int8@ort-cpu": x}
    runs = [_run_doc(tmp_path, "a.json", both, timing={"onnx-int8@ort-cpu": (None, 1000.0)}),
            _run_doc(tmp_path, "b.json", {"onnx-fp32@ort-cpu": x}),
            _run_doc(tmp_path, "c.json", both, timing={"onnx-int8@ort-cpu": (20.0, None)})]
    out = compare_runs(runs, Gates(), allow_missing=("onnx-int8*",))
    int8 = out["rows"][1]["cells"]
    assert [(c["run"], c["status"], c.get("missing", False)) for c in int8] == [(1, "absent", True), (2, "ok", False)]
    assert int8[0]["reasons"] == ["b.json: no such row", "allowed by --allow-missing"]
    assert (int8[1]["latency_ratio"], int8[1]["throughput_ratio"]) == (None, None)  # one side has no figure
    assert out["cells_compared"] == 3 and out["passed"]
    assert out["excused"] == ["onnx-int8@ort-cpu on b.json (absent there, --allow-missing)"]
    assert verdict(out) == ("PASS (3 artifact run(s) compared, every one within the gates; excused, not compared: "
                            "onnx-int8@ort-cpu on b.json (absent there, --allow-missing))")
    with pytest.raises(OutputsError, match="^compare needs at least two outputs files$"):
        compare_runs(runs[:1], Gates())
    with pytest.raises(OutputsError, match=r"a.json is the same run as .*a.json \(document SHA-256 "
                                           + runs[0].doc["sha256"][:12] + "…\\): compare two runs; refused"):
        compare_runs([runs[0], runs[0]], Gates())
    other_set = _doc({"onnx-fp32@ort-cpu": x}, test_sha="c" * 64)
    with pytest.raises(OutputsError, match=r"o.json was run on another test set \(SHA-256 cccccccccccc…\) than "
                                           r".*a.json \(aaaaaaaaaaaa…\); refused"):
        compare_runs([runs[0], outputs.load(_save(tmp_path, "o.json", other_set))], Gates())


def test_a_missing_cell_says_whether_the_row_failed_or_only_lacks_outputs(tmp_path):
    x = _onehot(LABELS)
    row = {"id": "tflite-fp32@litert", "name": "LiteRT fp32", "runtime": "LiteRT XNNPACK", "precision": "fp32",
           "fmt": "tflite", "file": "cnn_fp32.tflite", "artifact_sha256": None}
    base = _run_doc(tmp_path, "a.json", {"onnx-fp32@ort-cpu": x, "tflite-fp32@litert": x})
    for status, said in (("fail", "b.json: row fail, no outputs"), ("ok", "b.json: no outputs"),
                         ("skipped", "b.json: row skipped, no outputs")):
        out = compare_runs([base, _run_doc(tmp_path, "b.json", {"onnx-fp32@ort-cpu": x},
                                           extra_rows=[{**row, "status": status}])], Gates())
        cell = out["rows"][1]["cells"][0]
        assert cell["reasons"] == [said] and cell["status"] == "fail"
        option = "--allow-failed" if status == "fail" else "--allow-missing"  # a failure is not an absence
        assert out["failed"] == [f"tflite-fp32@litert on b.json: outputs in one run only ({said}); "
                                 f"{option} tflite-fp32@litert to accept"]


def _render_runs(tmp_path):
    """host (the baseline), pi and phone: an fp32 row within its tolerance with a slower p50 and no throughput on
    pi; an int8 row untimed at batch 1 on host, with 25 flips on pi (fails) and 2 on phone (passes); a LiteRT row
    that failed on pi (its outputs are missing: a failure) and a bf16 default-precision row that only host's CPU has
    (noted, not failed)."""
    x = _onehot(LABELS)
    bf = "onnx-fp32@openvino-bf16"
    lost = {"id": "tflite-fp32@litert", "name": "LiteRT fp32", "runtime": "LiteRT XNNPACK", "precision": "fp32",
            "fmt": "tflite", "file": "cnn_fp32.tflite", "artifact_sha256": None, "status": "fail"}
    host = _run_doc(tmp_path, "host.json", {"onnx-fp32@ort-cpu": x, "onnx-int8@ort-cpu": x, "tflite-fp32@litert": x,
                                            bf: x}, ran={bf: "bf16"}, timing={"onnx-int8@ort-cpu": (None, 2000.0)})
    pi = _run_doc(tmp_path, "pi.json", {"onnx-fp32@ort-cpu": x + np.float32(2e-6), "onnx-int8@ort-cpu": _flip(25)},
                  extra_rows=[lost], timing={"onnx-fp32@ort-cpu": (30.0, None), "onnx-int8@ort-cpu": (12.0, 1000.0)})
    phone = _run_doc(tmp_path, "phone.json", {"onnx-fp32@ort-cpu": x, "onnx-int8@ort-cpu": _flip(2),
                                              "tflite-fp32@litert": x})
    return host, pi, phone


def test_compare_renders_two_runs_as_figures_and_more_as_a_matrix_exactly(tmp_path):
    """The text and Markdown reports, pinned whole in tests/golden/: which cells say ok, FAIL, MISSING, absent or —, each figure's
    format, the notes (flipped images, at most 20 listed, each failed gate, why a cell was not compared) and the
    verdict. Text lines fit 120 columns."""
    host, pi, phone = _render_runs(tmp_path)
    pair, matrix = compare_runs([host, pi], Gates()), compare_runs([host, pi, phone], Gates())
    golden = Path(__file__).parent / "golden"
    for text, name in ((format_table(pair) + "\n", "compare_pair.txt"), (format_markdown(pair), "compare_pair.md"),
                       (format_table(matrix) + "\n", "compare_matrix.txt"), (format_markdown(matrix), "compare_matrix.md")):
        assert text == (golden / name).read_text(encoding="utf-8"), name
        assert name.endswith(".md") or max(map(len, text.split("\n"))) <= 120
    for k, more in ((20, ""), (21, " … (21 in all)")):  # at most 20 flipped images listed, and the count past it
        out = compare_runs([host, _run_doc(tmp_path, f"f{k}.json", {"onnx-int8@ort-cpu": _flip(k)})], Gates())
        listed = ", ".join(str(i) for i in range(20))
        assert f"onnx-int8@ort-cpu [1]: flipped test images {listed}{more}\n" in format_markdown(out).replace("- ", "")


def test_an_outputs_document_records_the_run_it_came_from_and_is_labelled_by_it(tmp_path):
    """build's document: verify's verdict, threads and throughput batch, when it was made, the classes of its
    logits (10 without any), valid against docs/schemas/outputs.schema.json; a run's label names the file, the
    architecture, the CPU and the machine's note, with '?' for what the file does not say."""
    import datetime
    import pathlib

    from toolkit.verify import _machine

    jsonschema = pytest.importorskip("jsonschema")
    machine = _machine()  # this machine's record, renamed
    result = {"rows": [{"id": "onnx-fp32@ort-cpu", "name": "n", "runtime": "ORT CPU", "precision": "fp32", "fmt": "onnx",
                        "file": "m.onnx", "status": "ok"}],
              "machine": {**machine, "cpu": {**machine["cpu"], "model": "Zen 4"}, "arch": "x86_64", "note": "loaded"},
              "threads": 2,
              "throughput_batch": 256, "passed": False}
    doc = outputs.build(result, {"onnx-fp32@ort-cpu": np.zeros((N, 7), np.float32)}, LABELS % 7, "a" * 64,
                        {"m.onnx": "f" * 64})
    assert (doc["passed"], doc["threads"], doc["throughput_batch"], doc["num_classes"]) == (False, 2, 256, 7)
    made = datetime.datetime.fromisoformat(doc["created"])
    assert made.tzinfo is not None and abs((datetime.datetime.now(datetime.UTC) - made).total_seconds()) < 600
    assert outputs.build({**result, "passed": True}, {}, LABELS, "a" * 64, {})["num_classes"] == 10
    schema = json.loads((pathlib.Path(__file__).parent.parent / "docs" / "schemas" / "outputs.schema.json").read_text())
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    o = outputs.load(_save(tmp_path, "host.json", doc))
    assert o.label() == "host.json (x86_64, Zen 4, loaded)"
    for machine, label in (({"cpu": {"model": "Zen 4"}, "arch": "x86_64"}, "bare.json (x86_64, Zen 4)"),
                           ({}, "bare.json (?, ?)")):
        bare = _resealed_doc({**json.loads(outputs.dumps(doc)), "machine": machine})
        assert outputs.load(_save(tmp_path, "bare.json", bare)).label() == label
