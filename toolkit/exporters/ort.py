"""ONNX Runtime's own format (`.ort`): what ONNX Runtime Mobile and minimal/reduced-operator builds
load. Written with ONNX Runtime's Python API the way its converter does it ("Fixed" style: the
graph optimizations are applied now and saved, the CPU-specific NCHWc layout left out so the file
runs on any CPU), plus `required_operators.config` for a reduced build."""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import ExportError, first_line
from toolkit.exporters import Artifact, Sources, Written

CONFIG_NAME = "required_operators.config"


def convert_to_ort(onnx_path: Path, ort_path: Path) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(ort_path)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.log_severity_level = 3
    try:
        # NCHWc is x86-specific: as ORT's converter does, keep it out of a file meant for any device
        ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["NchwcTransformer"])
    except Exception as exc:  # noqa: BLE001 - ORT's converter raises its own types (Fail, InvalidGraph): one line
        raise ExportError(f"{onnx_path.name}: ONNX Runtime could not convert it to ORT format ({first_line(exc)})") from None


def export_ort(src: Sources) -> Written:
    """Writes <stem>.ort for each staged ONNX model and the operator config."""
    stage, onnx_files = src.stage, src.onnx_files
    from onnxruntime.tools.ort_format_model import create_config_from_models

    written = Written()
    for precision in src.precisions:
        onnx_path = onnx_files[precision]
        ort_path = stage / (onnx_path.stem + ".ort")
        convert_to_ort(onnx_path, ort_path)
        written.artifacts.append(Artifact("ort", precision, ort_path.name, source=onnx_path.name))
        written.top_level.append(ort_path.name)
    config = stage / CONFIG_NAME
    import logging

    from toolkit.scoped import logging_disabled

    # the config writer logs "Created config in <staging path>" at INFO
    with logging_disabled(logging.INFO):
        create_config_from_models([stage / a.file for a in written.artifacts], config, False)
    # its comments name the models by absolute (staging) path: keep the names only
    lines = [f"# - {Path(line[4:]).name}" if line.startswith("# - ") else line
             for line in config.read_text().splitlines()]
    config.write_text("\n".join(lines) + "\n")
    written.support.append((CONFIG_NAME, "ONNX Runtime reduced-build operator config (--include_ops_by_config)"))
    written.top_level.append(CONFIG_NAME)
    return written
