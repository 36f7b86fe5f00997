"""What an exported artifact says about itself, and nothing more: no build paths, no stack traces,
the same bytes for the same checkpoint wherever mnisttk is checked out.

ONNX: torch's exporter writes per-node metadata (`pkg.torch.onnx.stack_trace` …) holding absolute
source paths; the quantizer declares nine opset domains and calls itself the producer. We strip the
node metadata, keep only the domains the nodes use, name the nodes after the model's layers (so
Netron reads like the model), and stamp the metadata an integrator needs.
TorchScript: `torch.jit.save` adds `*.debug_pkl` source maps (absolute paths) and a random
serialization id; we drop the maps and derive the id from the content.
"""

from __future__ import annotations

import hashlib
import io
import zipfile

from toolkit import __version__
from toolkit.contract import MNIST_INPUT, InputSpec

CLASS_LABELS = ",".join(str(d) for d in range(10))
PREPROCESSING = ("MNIST convention: one light digit on a dark background, size-normalised to a 20×20 box "
                 "and centred by its centre of mass in a 28×28 frame")


def preprocessing_text(spec: InputSpec) -> str:
    """How an image becomes the input: MNIST's convention, or the data set's own images."""
    if spec.is_mnist:
        return PREPROCESSING
    return (f"the training data's own images: {spec.colour} {spec.width}×{spec.height}, channels first, "
            "no mean or std subtracted")


def describe_io(uint8_input: bool, num_classes: int = 10, spec: InputSpec = MNIST_INPUT) -> tuple[str, str]:
    """(input contract, doc_string) for a model taking uint8 pixels or float pixel/255."""
    dims = "N×" + spec.text
    inp = (f"uint8 {dims}, raw pixels 0-255" if uint8_input
           else f"float32 {dims}, pixel/255 in [0, 1]")
    doc = (f"mnisttk {__version__}: input 'image' {inp} ({preprocessing_text(spec)}); output 'logits' float32 "
           f"N×{num_classes}, " + ("one per digit 0-9" if num_classes == 10 and spec.is_mnist
                                   else "one per class (class_labels)") + " (logits: softmax not applied)")
    return inp, doc


def finalize_onnx(model, metadata: dict, uint8_input: bool, spec: InputSpec = MNIST_INPUT) -> None:
    """In place: strip node metadata and doc strings, name nodes after layers, prune unused opset
    domains, set producer/version/doc and the metadata_props."""
    initializers = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    _name_nodes(model.graph, initializers)
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used or (o.domain == "ai.onnx" and "" in used)]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    model.producer_name, model.producer_version = "mnisttk", __version__
    model.model_version = 1
    model.graph.name = f"mnisttk_{metadata.get('arch', 'model')}"
    model.graph.doc_string = ""
    labels = metadata.get("class_labels", CLASS_LABELS)  # comma-separated, label k the k-th
    n = len(str(labels).split(","))
    inp, doc = describe_io(uint8_input, n, spec)
    model.doc_string = doc
    del model.metadata_props[:]
    for key, value in {"class_labels": CLASS_LABELS, **metadata, "input": inp, "preprocessing": preprocessing_text(spec),
                       "output": f"logits N×{n} (softmax not applied)"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)


def _layer_of(name: str, initializers: set) -> str | None:
    """'conv2' for 'conv2.weight', 'conv2.weight_quantized', 'conv2.weight_DequantizeLinear_Output' …"""
    base = name.split(".weight")[0] if ".weight" in name else None
    return base if base and (name in initializers or "_" in name.split(".weight", 1)[1]) else None


def _name_nodes(graph, initializers: set) -> None:
    taken = {n.name for n in graph.node}
    layer = None
    counts: dict[str, int] = {}

    def rename(node, new):
        if new in taken and new != node.name:
            counts[new] = counts.get(new, 0) + 1
            new = f"{new}_{counts[new]}"
        taken.discard(node.name)
        taken.add(new)
        node.name = new

    for node in graph.node:
        weights = [_layer_of(i, initializers) for i in node.input]
        weights = [w for w in weights if w]
        if node.op_type in ("Conv", "Gemm", "MatMul", "QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger",
                            "MatMulInteger") and weights:
            layer = weights[0]
            rename(node, layer)
        elif node.op_type in ("Relu", "MaxPool") and layer and node.name.startswith("node_"):
            rename(node, f"{layer}_{node.op_type.lower()}")
        elif node.name.startswith("node_"):
            rename(node, node.op_type.lower())


def strip_torchscript(data: bytes) -> bytes:
    """A TorchScript archive without its debug source maps, with a content-derived serialization id."""
    src = zipfile.ZipFile(io.BytesIO(data))
    entries = [(i.filename, src.read(i)) for i in src.infolist() if not i.filename.endswith(".debug_pkl")]
    digest = hashlib.sha256(b"".join(name.encode() + body for name, body in entries
                                     if not name.endswith(".data/serialization_id"))).hexdigest()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name, body in entries:
            if name.endswith(".data/serialization_id"):
                body = str(int(digest[:32], 16)).zfill(40)[:40].encode()
            dst.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), body)
    return out.getvalue()
