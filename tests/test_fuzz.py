"""Fuzzing every artifact format verify runs: seeded mutants of each file (bytes flipped, cut,
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
         ("all_targets", "cnn_fp32.pte")]


@pytest.mark.parametrize("fixture, name", CASES, ids=[c[1] for c in CASES])
def test_mutants_end_as_a_row_or_one_error_and_pass_only_within_the_gates(request, fixture, name, tiny_export,
                                                                           tmp_path):
    if name.endswith(".tflite") and importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("ai-edge-litert not installed")
    if name.endswith(".pte") and importlib.util.find_spec("executorch") is None:
        pytest.skip("executorch not installed")
    source = request.getfixturevalue(fixture)
    folder = tmp_path / "f"
    shutil.copytree(source, folder)
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    artifact = next(a for a in manifest["artifacts"] if a["file"] == name)
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
        a = dict(artifact, sha256=sha256_bytes(data), size_bytes=len(data))
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
