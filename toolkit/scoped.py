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
def torch_threads(n: int):
    """torch's intra-op threads set to n (> 0) inside, the previous count after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def quantized_engine(name: str | None):
    """torch's quantized engine (e.g. "x86") inside, the previous one after; None changes nothing."""
    if name is None:
        yield
        return
    import torch

    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """cuDNN's per-shape algorithm search switched on/off inside, restored after."""
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def logging_disabled(level: int):
    """Log records at `level` and below dropped inside (logging.disable), the previous setting after."""
    before = logging.root.manager.disable
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(before)


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


@contextlib.contextmanager
def pil_max_pixels(n: int):
    """Pillow's decompression-bomb limit set to n pixels inside, the previous limit after."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = n
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before
