"""mnisttk: train, quantize, export and verify a small MNIST CNN for edge deployment."""

import os as _os

__version__ = "0.1.0"

# ONNX Runtime's official builds (1.2x and later) record telemetry on Linux too: a persistent device id
# and an offline event cache under ~/.cache/Microsoft/DeveloperTools/.onnxruntime, uploaded when a
# network is there. mnisttk checks other people's files and writes only where it is told to, so it
# opts out before onnxruntime is first loaded (ORT_DISABLE_TELEMETRY=1: no uploader, no events, no
# device id, no cache). A value the user set is left as it is. OpenVINO's telemetry: runtimes/openvino.py.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
