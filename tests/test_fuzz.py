"""Fuzzing every artifact format verify runs (the OpenVINO IR's two files each): seeded mutants of each file (bytes flipped, cut,
repeated, zeroed, inserted), the manifest's hash updated to each, measured by verify's own row code
in the bounded child process. Each mutant must end as a row (PASS or FAIL) or one ToolkitError —
never a signal that escapes, a hang past the bound, or another exception — and a mutant that PASSes
must still meet every gate, checked here independently of verify's judge.

MNISTTK_FUZZ_N sets the mutants per artifact (default 8 in make test; a quarter of that for the `.pte`,
whose runtime takes ~5 s to import in each child; the closing notes' runs used 300)."""

import importlib.util
import os
import shutil
from collections import Counter

import numpy as np
import pytest

from toolkit import isolate
from toolkit.config import Gates
from toolkit.errors import ToolkitError
from toolkit.fsutil import sha256_bytes
from toolkit.reference import read_reference
from toolkit.runtimes import RUNTIMES
from toolkit.verify import Row, _fill_accuracy, judge, measure_row

N = int(os.environ.get("MNISTTK_FUZZ_N", "8"))
GATES = Gates()


def mutants(data: bytes, n: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        b = bytearray(data)
        op = rng.integers(5)
        at = int(rng.integers(len(b)))
        if op == 0:  # flip a few bytes
            for i in rng.integers(len(b), size=int(rng.integers(1, 9))):
                b[int(i)] ^= int(rng.integers(1, 256))
        elif op == 1:  # cut
            b = b[:at]
        elif op == 2:  # repeat a chunk
            b[at:at] = b[at:at + int(rng.integers(1, 256))]
        elif op == 3:  # zero a range
            b[at:at + int(rng.integers(1, 64))] = bytes(min(len(b) - at, int(rng.integers(1, 64))))
        else:  # insert random bytes
            b[at:at] = rng.integers(0, 256, size=int(rng.integers(1, 32)), dtype=np.uint8).tobytes()
        yield bytes(b)


def _spec_index(fmt: str) -> int:
    return next(i for i, s in enumerate(RUNTIMES) if fmt in s.formats and s.device != "cuda")


CASES = [("onnx_family_export", "cnn_fp32.onnx"), ("onnx_family_export", "cnn_int8.onnx"),
         ("onnx_family_export", "cnn_int8.ort"), ("all_targets", "cnn_int8.tflite"),
         ("all_targets", "cnn_fp32.pte"), ("all_targets", "cnn_int8.xml"), ("all_targets", "cnn_int8.bin")]


@pytest.mark.parametrize("fixture, name", CASES, ids=[c[1] for c in CASES])
def test_mutants_end_as_a_row_or_one_error_and_pass_only_within_the_gates(request, fixture, name, tiny_export,
                                                                           tmp_path):
    if name.endswith(".tflite") and importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("ai-edge-litert not installed")
    if name.endswith(".pte") and importlib.util.find_spec("executorch") is None:
        pytest.skip("executorch not installed")
    if name.endswith((".xml", ".bin")) and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino not installed")
    source = request.getfixturevalue(fixture)
    folder = tmp_path / "f"
    shutil.copytree(source, folder)
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    # an IR is two files: its .xml is the artifact, its .bin the weights the artifact entry names and hashes
    artifact = next(a for a in manifest["artifacts"] if name in (a["file"], (a.get("weights") or {}).get("file")))
    from toolkit.data import load_mnist

    mnist = load_mnist(tiny_export["data"])
    images, labels = mnist.test_images, mnist.test_labels.astype(np.int64)
    ref = read_reference(folder / "reference.npz", len(labels))["logits"]
    original = (folder / name).read_bytes()
    outcomes = Counter()
    n = max(2, N // 4) if name.endswith(".pte") else N
    isolate.prepare(("torch",) if name.endswith(".pte") else ())
    for i, data in enumerate(mutants(original, n, seed=sum(name.encode()))):
        (folder / name).write_bytes(data)
        if name == artifact["file"]:
            a = dict(artifact, sha256=sha256_bytes(data), size_bytes=len(data))
        else:  # the IR's weights
            a = dict(artifact, weights=dict(artifact["weights"], sha256=sha256_bytes(data), size_bytes=len(data)))
        try:
            m = isolate.call(measure_row, _spec_index(artifact["format"]), str(folder), a, 1, images,
                             timeout_s=60, memory_mb=2048, what=f"mutant {i}")
        except ToolkitError as exc:  # Bounded (timeout, crash, memory) included: a FAIL row in verify
            outcomes[type(exc).__name__] += 1
            continue
        logits = m.pop("logits").astype(np.float64)
        row = Row("mutant", "fuzz", artifact["precision"], name, device=RUNTIMES[_spec_index(artifact["format"])].device)
        _fill_accuracy(row, labels, logits, ref)
        for key, value in m.items():
            setattr(row, key, value)
        judge(row, GATES)
        outcomes[row.status] += 1
        if row.status == "ok":  # independently of judge: the gates hold for this mutant's logits
            preds, ref_preds = logits.argmax(1), ref.argmax(1)
            if artifact["precision"] == "fp32":
                assert (preds == ref_preds).all() and np.abs(logits - ref).max() <= GATES.fp32_max_abs_logit_diff
            else:
                agreement = (preds == ref_preds).mean() * 100
                drop = ((ref_preds == labels).mean() - (preds == labels).mean()) * 100
                assert agreement >= GATES.int8_min_agreement_pct and drop <= GATES.int8_max_drop_points
            assert np.isfinite(logits).all() and row.batch_consistent is not False
    print(f"\n{name}: {n} mutants -> {dict(outcomes)}")
    assert sum(outcomes.values()) == n


# ---------------------------------------------------------------- outputs files and not-a-digit rules

_ODD_VALUES = [None, "x", 1, -1, 1.5, True, [], [1], {}, {"a": 1}, "9" * 70, 10 ** 12]


def _mutate_json(doc, rng, hashed: bool):
    """A copy of a JSON document with one value somewhere replaced by an odd one (or a key dropped), the
    document hash recomputed when `hashed` (as a forger would): what is left to catch it is the types."""
    import copy

    from toolkit import outputs

    doc = copy.deepcopy(doc)
    paths, stack = [], [((), doc)]
    while stack:
        path, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if k in ("data", "sha256") and isinstance(v, str):
                continue  # an array's payload: damaged payloads are the other tests' business
            paths.append((path, k))
            stack.append(((*path, k), v))
    parent_path, key = paths[int(rng.integers(len(paths)))]
    parent = doc
    for k in parent_path:
        parent = parent[k]
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[key]
    else:
        parent[key] = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
    if hashed and isinstance(doc, dict):
        doc["sha256"] = outputs.hashlib.sha256(outputs._canonical(doc)).hexdigest() if doc.get("kind") else None
    return doc


def test_mutated_outputs_files_end_in_a_comparison_or_one_line(onnx_family_export, tiny_export, tmp_path):
    """compare reads another machine's file: each mutant (an odd value anywhere, the hash recomputed)
    ends in PASS, FAIL or one `Error:` line — never a traceback."""
    import json

    from helpers import LOOSE, run

    host = tmp_path / "host.json"
    assert run("verify", "--dir", onnx_family_export, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE,
               "--save-outputs", host).exit_code == 0
    doc = json.loads(host.read_bytes())
    rng = np.random.default_rng(7)
    codes = Counter()
    for i in range(max(12, N * 3)):
        bad = tmp_path / f"m{i}.json"
        try:
            bad.write_text(json.dumps(_mutate_json(doc, rng, hashed=True)))
        except (TypeError, ValueError):
            continue
        r = run("compare", host, bad)
        assert r.exit_code in (0, 1) and "Traceback" not in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        codes[r.exit_code] += 1
    assert codes[1] > 0  # most odd values are refused


@pytest.mark.parametrize("dtype", [["float32"], {"a": 1}, 7, None])
def test_an_outputs_row_whose_dtype_is_not_a_string_is_one_line(onnx_family_export, tiny_export, tmp_path, dtype):
    """A case the random mutants found on one machine (its record shifts which value each seed hits): a
    row's logits.dtype set to a list was a TypeError (unhashable type) through compare, not one line."""
    import json

    from helpers import LOOSE, run

    from toolkit import outputs

    host = tmp_path / "host.json"
    assert run("verify", "--dir", onnx_family_export, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE,
               "--save-outputs", host).exit_code == 0
    doc = json.loads(host.read_bytes())
    next(r for r in doc["rows"] if "logits" in r)["logits"]["dtype"] = dtype
    doc["sha256"] = outputs.hashlib.sha256(outputs._canonical(doc)).hexdigest()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    r = run("compare", host, bad)
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "not an encoded array" in r.output


def test_mutated_not_a_digit_rules_are_one_line_or_applied(exported, tiny_export):
    """A manifest's rule with an odd value anywhere: verify applies it or says in one line that it is
    malformed, never a traceback."""
    import json

    from helpers import LOOSE, run

    manifest = json.loads((exported / "manifest.json").read_text())
    rng = np.random.default_rng(11)
    for _ in range(max(6, N)):
        m = dict(manifest, ood=_mutate_json(manifest["ood"], rng, hashed=False))
        (exported / "manifest.json").write_text(json.dumps(m))
        r = run("verify", "--dir", exported, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE)
        assert r.exit_code in (0, 1) and "Traceback" not in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
