"""One protocol for everything that turns test images into logits and can be timed: verify's
rows, the benchmark's runners. ONNX Runtime models (runtime.py) and the PyTorch rows
(runtimes/) implement it. No imports beyond numpy: both sides use it."""

from __future__ import annotations

import numpy as np


class Candidate:
    """Something that turns uint8 test images into logits, and can be timed."""

    name: str  # e.g. "ONNX int8"
    runtime: str  # e.g. "ORT CPU"
    precision: str  # fp32 | int8
    file: str | None
    loaded_sha256: str | None = None  # SHA-256 of the bytes actually loaded, where a file was

    def logits(self, images_u8: np.ndarray) -> np.ndarray: ...

    def bench_input(self, images_u8: np.ndarray):
        """The runtime's own input for these images (timing excludes the conversion)."""

    def run(self, x) -> object: ...

    def placement(self) -> dict | None:
        return None

    def output_limits(self) -> tuple | None:
        """(lowest, highest, step) of an int8 output after dequantization, or None (a float output)."""
        return None

    def consistency(self, images_u8: np.ndarray, preds: np.ndarray) -> bool | None:
        """Whether other batch sizes give `preds` again; None where not checked."""
        return None
