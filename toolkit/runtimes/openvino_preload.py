"""Imported by the bounded children's forkserver when a verify run has OpenVINO rows (RuntimeSpec.preload):
openvino, imported once with its telemetry left out, so each row's child starts with it."""

from toolkit.runtimes.openvino import openvino_module

openvino_module()
