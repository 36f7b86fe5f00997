"""Process-wide state, changed only for as long as it is needed and restored after: torch's thread
count and quantized engine, cuDNN's autotuner, a logging level, an environment variable, Pillow's
image-size limit. A runtime, exporter or trainer changes such state only through these, so the order
in which rows run (or verbs run in one process) cannot change a result. The torch ones import torch
when entered, never at import. (ExecuTorch's thread pool is the one exception, and why is said in
toolkit.runtimes.executorch.load_method.)"""

from __future__ import annotations

import contextlib
import logging
import os


@contextlib.contextmanager
def _swapped(get, put, value):
    """`put(value)` inside, `put` of what `get()` returned before after (even on an error)."""
    before = get()
    put(value)
    try:
        yield
    finally:
        put(before)


def torch_threads(n: int):
    """torch's intra-op threads set to n (> 0) inside, the previous count after."""
    import torch

    return _swapped(torch.get_num_threads, torch.set_num_threads, n)


def float32_matmul_precision(value: str):
    """torch's fp32 matmul precision ("highest": fp32 arithmetic; "high"/"medium" allow TF32/bf16) inside,
    the previous setting after."""
    import torch

    return _swapped(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, value)


def quantized_engine(name: str | None):
    """torch's quantized engine (e.g. "x86") inside, the previous one after; None changes nothing."""
    if name is None:
        return contextlib.nullcontext()
    import torch

    q = torch.backends.quantized
    return _swapped(lambda: q.engine, lambda v: setattr(q, "engine", v), name)


def cudnn_benchmark(on: bool):
    """cuDNN's per-shape algorithm search switched on/off inside, restored after."""
    import torch

    c = torch.backends.cudnn
    return _swapped(lambda: c.benchmark, lambda v: setattr(c, "benchmark", v), on)


def logging_disabled(level: int):
    """Log records at `level` and below dropped inside (logging.disable), the previous setting after."""
    return _swapped(lambda: logging.root.manager.disable, logging.disable, level)


def pil_max_pixels(n: int):
    """Pillow's decompression-bomb limit set to n pixels inside, the previous limit after."""
    from PIL import Image

    return _swapped(lambda: Image.MAX_IMAGE_PIXELS, lambda v: setattr(Image, "MAX_IMAGE_PIXELS", v), n)


@contextlib.contextmanager
def environ(name: str, value: str):
    """Environment variable `name` set to `value` inside unless the user set it; as it was after."""
    before = os.environ.get(name)
    if before is None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
