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
from toolkit.runtimes.candidate import (
    MAX_MODEL_BYTES,
    Placement,
    artifact_classes,
    batched_logits,
    checked_logits,
    read_model_bytes,
    refuse_external_data,
    resolve_threads,
)

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
    with pytest.raises(ValueError, match=r"^not a parsable ONNX model \(DecodeError\)$"):
        external_tensors(b"\x08\x07\x3a\xff\xff\xff\xff\x0f")


def test_refuse_external_data_refuses_onnx_with_a_tensor_outside_and_lets_the_rest_pass():
    with pytest.raises(ToolkitError) as info:
        refuse_external_data(_model(), "m.onnx")
    assert str(info.value) == ("m.onnx: keeps tensors in an external-data file (w), which mnisttk refuses (unhashed, "
                               "and read from outside what the manifest lists)")
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
    with pytest.raises(ManifestError, match=f"^{path}: listed as ort, but its bytes are"):
        read_model_bytes(path, sha, "ort")
    external = tmp_path / "e.onnx"
    external.write_bytes(_model())
    with pytest.raises(ToolkitError, match=f"^{external}: keeps tensors in an external-data file"):
        read_model_bytes(external)
    read_model_bytes(external, model=False)  # a weights file (OpenVINO's .bin) is not parsed as a model
    with pytest.raises(ToolkitError, match="absent.onnx: no such model file$"):
        read_model_bytes(tmp_path / "absent.onnx")
    with pytest.raises(ToolkitError, match="not a regular file"):
        read_model_bytes(tmp_path)


def test_read_model_bytes_takes_a_file_at_its_size_bound_and_refuses_one_byte_more(tmp_path, monkeypatch):
    monkeypatch.setattr(candidate, "MAX_MODEL_BYTES", 100)
    path = tmp_path / "m.bin"
    path.write_bytes(b"\1" * 100)
    assert read_model_bytes(path)[0] == b"\1" * 100
    path.write_bytes(b"\1" * 101)
    with pytest.raises(ToolkitError, match="m.bin: 101 bytes is too large for an mnisttk model; refused$"):
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
    ([None, 2], 2), ([None, 1000], 1000), ([None, 1], 10), ([None, 1001], 10), ([None, True], 10),
    ([None, 2.0], 10), ([None], 10), (None, 10),
])
def test_the_class_count_is_the_manifests_between_2_and_1000(shape, expected):
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
    with pytest.raises(ToolkitError, match=r"^m: output shape \[7, 9\] for 7 images, expected \[7, 10\]$"):
        batched_logits(lambda c: c[:, :9], x, 7, batch=3, fixed_batch=None, name="m")
    five = batched_logits(lambda c: c[:, :5], x, 7, batch=3, fixed_batch=None, name="m", num_classes=5)
    assert five.shape == (7, 5)


def test_a_static_batch_is_padded_in_the_inputs_own_dtype():
    images = np.full((3, 1, 28, 28), 255, np.uint8)
    dtypes = []

    def forward(chunk):
        dtypes.append(chunk.dtype)
        return np.zeros((len(chunk), 10), np.float32)

    batched_logits(forward, images, 3, batch=8, fixed_batch=2, name="m")
    assert dtypes == [np.uint8, np.uint8]  # a uint8 model is never fed float64 padding


@pytest.mark.parametrize("threads,expected", [(1, 1), (3, 3), (0, os.cpu_count() or 1)])
def test_threads_zero_is_every_core_and_a_count_is_itself(threads, expected):
    assert resolve_threads(threads) == expected


def test_a_machine_that_cannot_count_its_cores_has_one(monkeypatch):
    monkeypatch.setattr(candidate.os, "cpu_count", lambda: None)
    assert resolve_threads(0) == 1


def test_placement_evidence_round_trips_through_the_json_field_by_field():
    full = Placement("XNNPACK", "all delegated", int8_kernels=("QConv",), not_delegated=("Add",),
                     cpu_compute_ops=("MatMul",), detail={"delegated": 3})
    as_json = full.to_json()
    assert as_json == {"delegated": 3, "backend": "XNNPACK", "summary": "all delegated", "not_delegated": ["Add"],
                       "int8_kernels": ["QConv"], "cpu_compute_ops": ["MatMul"]}
    assert Placement.from_json(as_json) == full
    bare = Placement("ORT CPU", "s")
    assert bare.to_json() == {"backend": "ORT CPU", "summary": "s", "not_delegated": []}  # None: not its question
    back = Placement.from_json(bare.to_json())
    assert back == bare and back.int8_kernels is None and back.cpu_compute_ops is None
    assert Placement.from_json(None) is None and Placement.from_json({}) is None
    odd = Placement.from_json({"int8_kernels": [1, 2], "x": [1]})  # a report's other types are read as text
    assert (odd.backend, odd.summary, odd.int8_kernels, odd.not_delegated, odd.cpu_compute_ops, odd.detail) == (
        "", "", ("1", "2"), (), None, {"x": [1]})


@pytest.mark.parametrize("threads", [-1, 1.5, "2", None])
def test_threads_below_zero_or_not_a_whole_number_are_refused(threads):
    with pytest.raises(ToolkitError, match="threads must be 0"):
        resolve_threads(threads)


def _qdq_output(*, zero_dtype=None, scale=0.5, zero=3, op="DequantizeLinear", scalar=True, zero_scalar=False,
                inputs=3) -> bytes:
    """A model whose output `y` a DequantizeLinear of `q` makes, with its scale and zero point as
    initializers (a QDQ int8 model's logits), or another op / shape / input count where asked."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    zero_dtype = zero_dtype or np.int8
    dims = [] if scalar else [2]
    inits = [numpy_helper.from_array(np.full(dims, scale, np.float32), "s"),
             numpy_helper.from_array(np.full([] if zero_scalar else dims, zero, zero_dtype), "z")]
    node = helper.make_node(op, ["q", "s", "z"][:inputs], ["y"], name="dq")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("q", TensorProto.INT8, [1, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return onnx.helper.make_model(graph).SerializeToString()


def test_an_int8_outputs_range_is_read_from_its_dequantize_and_anything_else_is_none():
    from toolkit.onnx_proto import quantized_output_limits

    assert quantized_output_limits(_qdq_output()) == ((-128 - 3) * 0.5, (127 - 3) * 0.5, 0.5)
    assert quantized_output_limits(_qdq_output(zero_dtype=np.uint8, zero=128, scale=0.25)) == (
        (0 - 128) * 0.25, (255 - 128) * 0.25, 0.25)
    assert quantized_output_limits(_qdq_output(op="Identity")) is None  # a float output
    assert quantized_output_limits(_qdq_output(scalar=False)) is None  # per-channel: not one range
    assert quantized_output_limits(_qdq_output(scalar=False, zero_scalar=True)) is None  # per-channel scales alone
    assert quantized_output_limits(_qdq_output(inputs=2)) is None  # no zero point given
    assert quantized_output_limits(_qdq_output(zero_dtype=np.int32)) is None  # not an 8-bit output
    assert quantized_output_limits(b"\x08\x07\x3a\xff\xff\xff\xff\x0f") is None  # not parsable


def test_tensor_to_array_reads_raw_and_typed_data_and_refuses_other_types():
    from onnx import TensorProto, helper, numpy_helper

    from toolkit.onnx_proto import _classes, tensor_to_array

    def ours(proto):
        t = _classes()["TensorProto"]()
        t.ParseFromString(proto.SerializeToString())
        return t

    raw = np.arange(6, dtype=np.int8).reshape(2, 3)
    assert np.array_equal(tensor_to_array(ours(numpy_helper.from_array(raw, "r"))), raw)
    for dtype, values, np_type in ((TensorProto.FLOAT, [1.5, -2.0], np.float32), (TensorProto.INT64, [7, -8], np.int64),
                                   (TensorProto.INT32, [3, 4], np.int32)):
        got = tensor_to_array(ours(helper.make_tensor("t", dtype, [1, 2], values)))
        assert got.tolist() == [values] and got.shape == (1, 2) and got.dtype == np_type
    with pytest.raises(ValueError, match="initializer b: data type 8 not supported here"):
        tensor_to_array(ours(helper.make_tensor("b", TensorProto.STRING, [1], [b"x"])))


def test_every_candidate_gets_the_same_logits_template():
    class Doubling(candidate.Candidate):
        name, runtime, precision, file = "Double", "test", "fp32", None

        def prepare(self, images_u8):
            return images_u8.astype(np.float32).reshape(len(images_u8), -1)[:, :10]

        def _forward(self, x):
            calls.append(len(x))
            return x * 2

    calls: list = []
    c = Doubling()
    images = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28) % 7
    out = c.logits(images, batch=2)
    assert calls == [2, 2, 1] and np.array_equal(out, images.reshape(5, -1)[:, :10] * 2.0)
    assert c.input_dtype() == "float32" and np.array_equal(c.run(c.bench_input(images)), out)
    calls.clear()
    c.fixed_batch = 4
    c.logits(images, batch=2)
    assert calls == [4, 4]
    c.num_classes = 5
    with pytest.raises(ToolkitError, match=r"^Double: output shape \[5, 10\] for 5 images, expected \[5, 5\]$"):
        c.logits(images)
    c.file = "d.onnx"
    with pytest.raises(ToolkitError, match="^d.onnx: output shape"):
        c.logits(images)


def test_the_input_dtype_is_what_prepare_makes_of_one_uint8_image():
    seen = []

    class Fake(candidate.Candidate):
        name, runtime, precision, file = "Fake", "test", "fp32", None

        def __init__(self, made):
            self.made = made

        def prepare(self, images_u8):
            seen.append((images_u8.dtype, images_u8.shape))
            return self.made

        def _forward(self, x):
            return x

    class TorchLike:
        dtype = "torch.float16"

    assert Fake(np.zeros(1, np.int8)).input_dtype() == "int8" and seen == [(np.uint8, (1, 28, 28))]
    assert Fake(TorchLike()).input_dtype() == "float16"  # torch's dtype names read as numpy's
    assert Fake(object()).input_dtype() == ""  # an input with no dtype says none
