"""The model's contract, written once: what goes in, what comes out, how inference is batched.
numpy only: the edge side uses it. (How close fp32 artifacts must stay is a setting: config.py.)"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

NUM_CLASSES = 10
# Batched inference everywhere (export, verify, predict, torch rows): large enough to be fast,
# small enough that ONNX Runtime's arena stays small (at 10,000 it held ~0.5 GB per session).
EVAL_BATCH = 1000


def to_float_input(images_u8: np.ndarray) -> np.ndarray:
    """uint8 N×28×28 -> float32 N×1×28×28 in [0, 1]: torchvision's ToTensor() scaling, pixel/255."""
    x = np.asarray(images_u8, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    return x.reshape(len(x), 1, *x.shape[1:])  # contiguous (a [:, None] view has a 0 stride)


def to_uint8_input(images_u8: np.ndarray) -> np.ndarray:
    """uint8 N×28×28 -> uint8 N×1×28×28 raw pixels (int8 ONNX models fold the /255 in)."""
    return np.ascontiguousarray(np.asarray(images_u8)[:, None, :, :], dtype=np.uint8)


def batched(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """run() over `x` in slices of `batch`, concatenated."""
    return np.concatenate([np.asarray(run(x[i : i + batch])) for i in range(0, len(x), batch)])
