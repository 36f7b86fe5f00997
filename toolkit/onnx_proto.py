"""Just enough of ONNX's protobuf schema to read and edit a model on the edge side without the
`onnx` package: ModelProto → GraphProto → NodeProto, TensorProto, ValueInfoProto, built at run time
with the `protobuf` library that onnxruntime already depends on. Fields not declared here survive a
parse/serialize round trip as unknown fields, so an edited model keeps everything else as it was.
Field numbers are onnx.proto's (onnx/onnx.proto, IR version 10)."""

from __future__ import annotations

import functools

import numpy as np

# message name -> [(field name, number, label, type, message type name)]
_OPT, _REP = 1, 3
_INT32, _INT64, _FLOAT, _BYTES, _STRING, _MSG = 5, 3, 2, 12, 9, 11
_SCHEMA: dict[str, list] = {
    "AttributeProto": [("name", 1, _OPT, _STRING, None), ("f", 2, _OPT, _FLOAT, None), ("i", 3, _OPT, _INT64, None),
                       ("t", 5, _OPT, _MSG, "TensorProto"), ("g", 6, _OPT, _MSG, "GraphProto"),
                       ("ints", 8, _REP, _INT64, None), ("tensors", 10, _REP, _MSG, "TensorProto"),
                       ("graphs", 11, _REP, _MSG, "GraphProto"), ("type", 20, _OPT, _INT32, None),
                       ("sparse_tensor", 22, _OPT, _MSG, "SparseTensorProto"),
                       ("sparse_tensors", 23, _REP, _MSG, "SparseTensorProto")],
    "StringStringEntryProto": [("key", 1, _OPT, _STRING, None), ("value", 2, _OPT, _STRING, None)],
    "TensorProto": [("dims", 1, _REP, _INT64, None), ("data_type", 2, _OPT, _INT32, None),
                    ("float_data", 4, _REP, _FLOAT, None), ("int32_data", 5, _REP, _INT32, None),
                    ("int64_data", 7, _REP, _INT64, None), ("name", 8, _OPT, _STRING, None),
                    ("raw_data", 9, _OPT, _BYTES, None),
                    ("external_data", 13, _REP, _MSG, "StringStringEntryProto"),
                    ("data_location", 14, _OPT, _INT32, None)],
    "SparseTensorProto": [("values", 1, _OPT, _MSG, "TensorProto"), ("indices", 2, _OPT, _MSG, "TensorProto")],
    "TensorTypeProto": [("elem_type", 1, _OPT, _INT32, None)],
    "TypeProto": [("tensor_type", 1, _OPT, _MSG, "TensorTypeProto")],
    "ValueInfoProto": [("name", 1, _OPT, _STRING, None), ("type", 2, _OPT, _MSG, "TypeProto")],
    "NodeProto": [("input", 1, _REP, _STRING, None), ("output", 2, _REP, _STRING, None), ("name", 3, _OPT, _STRING, None),
                  ("op_type", 4, _OPT, _STRING, None), ("attribute", 5, _REP, _MSG, "AttributeProto"),
                  ("domain", 7, _OPT, _STRING, None)],
    "GraphProto": [("node", 1, _REP, _MSG, "NodeProto"), ("initializer", 5, _REP, _MSG, "TensorProto"),
                   ("input", 11, _REP, _MSG, "ValueInfoProto"), ("output", 12, _REP, _MSG, "ValueInfoProto"),
                   ("value_info", 13, _REP, _MSG, "ValueInfoProto"),
                   ("sparse_initializer", 15, _REP, _MSG, "SparseTensorProto")],
    "TrainingInfoProto": [("initialization", 1, _OPT, _MSG, "GraphProto"), ("algorithm", 2, _OPT, _MSG, "GraphProto")],
    "FunctionProto": [("node", 7, _REP, _MSG, "NodeProto")],
    "ModelProto": [("graph", 7, _OPT, _MSG, "GraphProto"), ("training_info", 20, _REP, _MSG, "TrainingInfoProto"),
                   ("functions", 25, _REP, _MSG, "FunctionProto")],
}
# TensorProto.DataType -> numpy
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}
FLOAT = 1


@functools.lru_cache(maxsize=1)
def _classes() -> dict:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="mnisttk_onnx_subset.proto", package="mnisttk_onnx", syntax="proto2")
    for message, fields in _SCHEMA.items():
        m = fdp.message_type.add(name=message)
        for name, number, label, ftype, type_name in fields:
            f = m.field.add(name=name, number=number, label=label, type=ftype)
            if type_name:
                f.type_name = f".mnisttk_onnx.{type_name}"
            if name == "float_data":
                f.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"mnisttk_onnx.{name}")) for name in _SCHEMA}


def parse_model(data: bytes):
    model = _classes()["ModelProto"]()
    model.ParseFromString(data)
    return model


EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def external_tensors(data: bytes) -> list[str]:
    """The tensors of this ONNX model whose data is kept in another file (external data), wherever a
    tensor can be: initializers, sparse initializers, node attributes, subgraphs at any depth, local
    functions and training graphs. A runtime that loads a model from its bytes may look such a file up
    relative to its working directory, or follow `../` and absolute paths out of any folder: mnisttk
    refuses these models before a runtime sees them. ValueError: not a parsable ONNX model."""
    try:
        model = parse_model(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError (also for nesting beyond its recursion limit)
        raise ValueError(f"not a parsable ONNX model ({type(exc).__name__})") from None
    found, graphs, nodes = [], [model.graph, *(g for t in model.training_info for g in (t.initialization, t.algorithm))], [
        n for f in model.functions for n in f.node]

    def tensors_of(sparse):
        return [t for s in sparse for t in (s.values, s.indices)]

    while graphs or nodes:
        if graphs:
            g = graphs.pop()
            tensors = [*g.initializer, *tensors_of(g.sparse_initializer)]
            nodes.extend(g.node)
        else:
            attrs = nodes.pop().attribute
            tensors = [t for a in attrs for t in (a.t, *a.tensors, *tensors_of([a.sparse_tensor, *a.sparse_tensors]))]
            graphs.extend(g for a in attrs for g in (a.g, *a.graphs))
        found += [t.name or "(unnamed)" for t in tensors if t.data_location == EXTERNAL or len(t.external_data)]
    return found


def tensor_to_array(t) -> np.ndarray:
    dtype = DTYPES.get(t.data_type)
    if dtype is None:
        raise ValueError(f"initializer {t.name}: data type {t.data_type} not supported here")
    shape = tuple(t.dims)
    if t.raw_data:
        return np.frombuffer(t.raw_data, dtype=dtype).reshape(shape).copy()
    values = t.float_data if dtype is np.float32 else t.int64_data if dtype is np.int64 else t.int32_data
    return np.asarray(list(values), dtype=dtype).reshape(shape)


def initializers(graph) -> dict:
    return {t.name: t for t in graph.initializer}


def add_float_outputs(graph, names) -> None:
    """Declare these tensors float graph outputs (so a session returns them); drop value_info, which
    an edit may contradict (ONNX Runtime infers it again)."""
    present = {o.name for o in graph.output}
    for name in names:
        if name not in present:
            out = graph.output.add(name=name)
            out.type.tensor_type.elem_type = FLOAT
    del graph.value_info[:]


def make_identity(node, source: str, op: str = "Identity") -> None:
    """Turn `node` into a one-input `op` (Identity, Relu) of `source`, keeping its name and output."""
    node.op_type, node.domain = op, ""
    del node.input[:]
    node.input.append(source)
    del node.attribute[:]


def quantized_output_limits(data: bytes) -> tuple | None:
    """(lowest, highest, step) of the first output where a DequantizeLinear with a per-tensor int8/uint8
    scale and zero point makes it (a QDQ int8 model's logits), else None (a float output, or a graph
    this reader cannot follow)."""
    try:
        graph = parse_model(data).graph
        out = graph.output[0].name
        node = next((n for n in graph.node if out in n.output), None)
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3:
            return None
        inits = initializers(graph)
        scale, zero = tensor_to_array(inits[node.input[1]]), tensor_to_array(inits[node.input[2]])
    except (KeyError, ValueError, IndexError, AttributeError, TypeError):
        return None
    except Exception:  # noqa: BLE001 - a protobuf DecodeError: not ours to explain here
        return None
    if scale.size != 1 or zero.size != 1 or zero.dtype not in (np.int8, np.uint8):
        return None
    info = np.iinfo(zero.dtype)
    s, z = float(scale.ravel()[0]), int(zero.ravel()[0])
    return ((info.min - z) * s, (info.max - z) * s, s)
