"""The runtimes' integrity checks, each at and one step past its bound, on bytes made here (no export,
no runtime): the one read of a model's bytes (toolkit.runtimes.candidate.read_model_bytes: size,
SHA-256, kind, external data), the external-data finder (toolkit.onnx_proto.external_tensors), the
output checks every row's logits pass (checked_logits, batched_logits), the manifest's class count
and the one meaning of `threads`. Fast: `make mutation` runs them against every mutant of these."""

import hashlib
import os

import numpy as np
import pytest

from toolkit.errors import ManifestError, ToolkitError
from toolkit.onnx_proto import EXTERNAL, _classes, external_tensors
from toolkit.runtimes import candidate
from toolkit.runtimes.candidate import (MAX_MODEL_BYTES, artifact_classes, batched_logits, checked_logits,
                                        read_model_bytes, refuse_external_data, resolve_threads)

ORT_HEADER = b"\x1c\x00\x00\x00ORTM"  # an ORT-format file's first 8 bytes (toolkit.formats.sniff)


def _model(*, where: str = "initializer", external: bool = True, by_location: bool = True) -> bytes:
    """A small ONNX ModelProto whose one tensor sits `where`, kept outside the file or not (by
    data_location, or by an external_data entry alone)."""
    c = _classes()
    model = c["ModelProto"]()
    model.graph.node.add(op_type="Identity", name="n", input=["x"], output=["y"])
    if where == "initializer":
        t = model.graph.initializer.add(name="w", data_type=1, dims=[1])
    elif where == "sparse":
        t = model.graph.sparse_initializer.add().values
        t.name, t.data_type = "w", 1
    elif where == "attribute":
        t = model.graph.node[0].attribute.add(name="value").t
        t.name, t.data_type = "w", 1
    elif where == "subgraph":
        t = model.graph.node[0].attribute.add(name="then_branch").g.initializer.add(name="w", data_type=1)
    elif where == "function":
        t = model.functions.add().node.add(op_type="Constant").attribute.add(name="value").t
        t.name, t.data_type = "w", 1
    elif where == "training":
        t = model.training_info.add().algorithm.initializer.add(name="w", data_type=1)
    else:
        raise AssertionError(where)
    if not external:
        t.raw_data = np.float32(1).tobytes()
    elif by_location:
        t.data_location = EXTERNAL
    else:
        t.external_data.add(key="location", value="../../etc/passwd")
    # the ONNX header sniff wants: ir_version (field 1) first, as every exporter writes it
    return b"\x08\x0a" + model.SerializeToString()


@pytest.mark.parametrize("where", ["initializer", "sparse", "attribute", "subgraph", "function", "training"])
def test_a_tensor_kept_outside_is_found_wherever_it_sits_and_by_either_mark(where):
    assert external_tensors(_model(where=where)) == ["w"]
    assert external_tensors(_model(where=where, by_location=False)) == ["w"]
    assert external_tensors(_model(where=where, external=False)) == []


def test_an_unnamed_external_tensor_is_still_named_and_several_are_all_found():
    c = _classes()
    model = c["ModelProto"]()
    for name in ("", "b", "c"):
        model.graph.initializer.add(name=name, data_type=1, data_location=EXTERNAL)
    model.graph.initializer.add(name="inside", data_type=1, raw_data=b"\0\0\0\0")
    assert external_tensors(model.SerializeToString()) == ["(unnamed)", "b", "c"]


def test_bytes_that_are_not_onnx_raise_value_error():
    with pytest.raises(ValueError, match="not a parsable ONNX model"):
        external_tensors(b"\x08\x07\x3a\xff\xff\xff\xff\x0f")


def test_refuse_external_data_refuses_onnx_with_a_tensor_outside_and_lets_the_rest_pass():
    with pytest.raises(ToolkitError) as info:
        refuse_external_data(_model(), "m.onnx")
    msg = str(info.value)
    assert msg.startswith("m.onnx: keeps tensors in an external-data file (w)") and "\n" not in msg
    refuse_external_data(_model(external=False), "m.onnx")  # everything inside: no error
    refuse_external_data(ORT_HEADER + b"\0" * 64, "m.ort")  # another kind: not ONNX's question
    refuse_external_data(b"\x01\x02", "m.bin")  # unknown and unparsable: the runtime refuses it itself
    # a file that sniffs as ONNX but does not parse is refused here, in one line
    with pytest.raises(ToolkitError, match="m.onnx: not a parsable ONNX model; refused"):
        refuse_external_data(b"\x08\x07\x3a\xff\xff\xff\xff\x0f", "m.onnx")


def test_the_first_three_external_tensors_are_named():
    c = _classes()
    model = c["ModelProto"]()
    for name in "abcd":
        model.graph.initializer.add(name=name, data_type=1, data_location=EXTERNAL)
    with pytest.raises(ToolkitError) as info:
        refuse_external_data(b"\x08\x0a" + model.SerializeToString(), "m.onnx")
    assert "(a, b, c)" in str(info.value)


def test_read_model_bytes_returns_the_bytes_it_hashed(tmp_path):
    path = tmp_path / "m.onnx"
    data = _model(external=False)
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert read_model_bytes(path) == (data, sha)
    assert read_model_bytes(path, sha, "onnx") == (data, sha)
    with pytest.raises(ManifestError, match="m.onnx: SHA-256 changed since export"):
        read_model_bytes(path, "0" * 64)
    with pytest.raises(ManifestError, match="listed as ort, but its bytes are"):
        read_model_bytes(path, sha, "ort")
    external = tmp_path / "e.onnx"
    external.write_bytes(_model())
    with pytest.raises(ToolkitError, match="external-data file"):
        read_model_bytes(external)
    read_model_bytes(external, model=False)  # a weights file (OpenVINO's .bin) is not parsed as a model
    with pytest.raises(ToolkitError, match="no such model file"):
        read_model_bytes(tmp_path / "absent.onnx")
    with pytest.raises(ToolkitError, match="not a regular file"):
        read_model_bytes(tmp_path)


def test_read_model_bytes_takes_a_file_at_its_size_bound_and_refuses_one_byte_more(tmp_path, monkeypatch):
    monkeypatch.setattr(candidate, "MAX_MODEL_BYTES", 100)
    path = tmp_path / "m.bin"
    path.write_bytes(b"\1" * 100)
    assert read_model_bytes(path)[0] == b"\1" * 100
    path.write_bytes(b"\1" * 101)
    with pytest.raises(ToolkitError, match="101 bytes is too large"):
        read_model_bytes(path)
    assert MAX_MODEL_BYTES == 256 * 1024 * 1024


def test_a_model_that_cannot_be_read_is_one_line(tmp_path, monkeypatch):
    import pathlib

    path = tmp_path / "m.onnx"
    path.write_bytes(b"x" * 16)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)  # as for a file this user may not read
    with pytest.raises(ToolkitError, match=r"m.onnx: cannot read \(Permission denied\)$"):
        read_model_bytes(path)


@pytest.mark.parametrize("shape,expected", [
    ([None, 2], 2), ([None, 256], 256), ([None, 1], 10), ([None, 257], 10), ([None, True], 10),
    ([None, 2.0], 10), ([None], 10), (None, 10),
])
def test_the_class_count_is_the_manifests_between_2_and_256(shape, expected):
    artifact = {"outputs": [{"shape": shape}]} if shape is not None else {}
    assert artifact_classes(artifact) == expected


def test_checked_logits_wants_n_by_c_finite_values():
    good = np.zeros((3, 10), np.float32)
    assert checked_logits(good, 3, "m") is not None and checked_logits(good, 3, "m").shape == (3, 10)
    assert checked_logits(np.zeros((3, 5)), 3, "m", num_classes=5).shape == (3, 5)
    with pytest.raises(ToolkitError, match=r"m: output shape \[2, 10\] for 3 images, expected \[3, 10\]"):
        checked_logits(np.zeros((2, 10)), 3, "m")
    with pytest.raises(ToolkitError, match=r"expected \[3, 11\]"):
        checked_logits(good, 3, "m", num_classes=11)
    for bad in (np.nan, np.inf, -np.inf):
        one = good.copy()
        one[1, 4] = bad
        with pytest.raises(ToolkitError, match="m: 1 of 3 images give NaN or infinite logits"):
            checked_logits(one, 3, "m")
    two = good.copy()
    two[0, 0] = two[2, 9] = np.nan
    with pytest.raises(ToolkitError, match="2 of 3 images"):
        checked_logits(two, 3, "m")


def test_batched_logits_runs_slices_and_pads_a_static_batch_exactly():
    x = np.arange(7, dtype=np.float32)[:, None] * np.ones((1, 10), np.float32)
    seen = []

    def forward(chunk):
        seen.append(len(chunk))
        return chunk

    out = batched_logits(forward, x, 7, batch=3, fixed_batch=None, name="m")
    assert seen == [3, 3, 1] and np.array_equal(out, x)
    seen.clear()
    out = batched_logits(forward, x, 7, batch=100, fixed_batch=4, name="m")  # the model's own batch wins
    assert seen == [4, 4] and np.array_equal(out, x)  # the padding's outputs are dropped
    seen.clear()
    out = batched_logits(forward, x[:4], 4, batch=100, fixed_batch=4, name="m")  # a whole batch: no padding
    assert seen == [4] and np.array_equal(out, x[:4])
    with pytest.raises(ToolkitError, match="output shape"):
        batched_logits(lambda c: c[:, :9], x, 7, batch=3, fixed_batch=None, name="m")


@pytest.mark.parametrize("threads,expected", [(1, 1), (3, 3), (0, os.cpu_count() or 1)])
def test_threads_zero_is_every_core_and_a_count_is_itself(threads, expected):
    assert resolve_threads(threads) == expected


@pytest.mark.parametrize("threads", [-1, 1.5, "2", None])
def test_threads_below_zero_or_not_a_whole_number_are_refused(threads):
    with pytest.raises(ToolkitError, match="threads must be 0"):
        resolve_threads(threads)
