"""A Triton Inference Server model repository (`triton/` inside the export): one model per precision,
`<name>/config.pbtxt` and `<name>/1/model.onnx` (the very bytes of the ONNX artifact), served by
Triton's ONNX Runtime backend on the CPU (a GPU instance group is the documented alternative).
We export for Triton; we do not run a server."""

from __future__ import annotations

import shutil
from pathlib import Path

from toolkit.exporters import Artifact, Sources, Written

REPOSITORY = "triton"
MAX_BATCH = 256  # verify's throughput batch; Triton's dynamic batcher gathers requests up to it
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 10: "TYPE_FP16", 7: "TYPE_INT64"}


def model_config(name: str, onnx_path: Path) -> str:
    """config.pbtxt for this model: names, dtypes and dims read from the ONNX file itself."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def tensor(v) -> str:
        t = v.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim[1:]]  # the batch axis is Triton's (max_batch_size)
        return (f'  {{ name: "{v.name}" data_type: {ONNX_TO_TRITON[t.elem_type]} '
                f"dims: [ {', '.join(str(d) for d in dims)} ] }}")

    inputs = ",\n".join(tensor(v) for v in graph.input)
    outputs = ",\n".join(tensor(v) for v in graph.output)
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {MAX_BATCH}\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            "dynamic_batching { max_queue_delay_microseconds: 100 }\n"
            "# CPU instances; on a GPU server use: instance_group [ { count: 1 kind: KIND_GPU } ]\n"
            "instance_group [ { count: 1 kind: KIND_CPU } ]\n")


def export_triton(src: Sources) -> Written:
    stage, onnx_files = src.stage, src.onnx_files
    written = Written(top_level=[REPOSITORY])
    for precision in src.precisions:
        onnx_path = onnx_files[precision]
        name = onnx_path.stem  # e.g. cnn_int8
        version = stage / REPOSITORY / name / "1"
        version.mkdir(parents=True)
        shutil.copyfile(onnx_path, version / "model.onnx")
        (stage / REPOSITORY / name / "config.pbtxt").write_text(model_config(name, onnx_path))
        written.artifacts.append(Artifact("triton", precision, f"{REPOSITORY}/{name}/1/model.onnx", source=onnx_path.name,
                                          copy=True))
        written.support.append((f"{REPOSITORY}/{name}/config.pbtxt", f"Triton model configuration of {name}"))
    return written
