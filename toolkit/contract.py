"""The model's contract, written once: what goes in, what comes out, how inference is batched.
numpy only: the edge side uses it. (How close fp32 artifacts must stay is a setting: config.py.)"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from toolkit.errors import ToolkitError

NUM_CLASSES = 10
MAX_CLASSES = 1000  # class names a data set may have (IDX labels are one byte: 256 there)
# Batched inference everywhere (export, verify, predict, torch rows): large enough to be fast,
# small enough that ONNX Runtime's arena stays small (at 10,000 it held ~0.5 GB per session).
EVAL_BATCH = 1000


MAX_CHANNELS = 16
MAX_SIDE = 1024
MAX_PIXELS = 1024 * 1024 * 4  # values per image (C×H×W): a 1024×1024 RGBA image


class SpecError(ToolkitError, ValueError):
    """An input spec out of what mnisttk takes (its message is one line)."""


@dataclass(frozen=True)
class InputSpec:
    """What a model takes, from the data it was trained on: C×H×W images, uint8 pixels scaled to
    float32 pixel/255 in [0, 1]. The data's arrays are uint8 N×H×W (one channel) or N×H×W×C (channels
    last, as images are stored); the model sees float32 N×C×H×W. Channels are grey (1), RGB (3), RGBA (4)
    or, for NumPy data, any count up to 16 in the data's own order. `mean`/`std` (one per channel, or
    None): a normalisation (x - mean) / std that train puts *inside* the model (toolkit.model.Normalized),
    so every artifact still takes pixel/255 and every runtime is fed the same."""

    channels: int = 1
    height: int = 28
    width: int = 28
    mean: tuple | None = None
    std: tuple | None = None

    def __post_init__(self) -> None:
        for name, v, top in (("channels", self.channels, MAX_CHANNELS), ("height", self.height, MAX_SIDE),
                             ("width", self.width, MAX_SIDE)):
            if type(v) is not int or not 1 <= v <= top:
                raise SpecError(f"input {name} {v!r} is out of 1 to {top}")
        if self.channels * self.height * self.width > MAX_PIXELS:
            raise SpecError(f"input {self.text} holds more than {MAX_PIXELS:,} values an image")
        if (self.mean is None) != (self.std is None):
            raise SpecError("input normalisation needs both a mean and a std")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is None:
                continue
            ok = (isinstance(values, tuple) and len(values) == self.channels
                  and all(type(v) in (int, float) and math.isfinite(v) and -10 <= v <= 10 for v in values))
            if not ok or name == "std" and min(values) < 1e-3:
                raise SpecError(f"input {name} {str(values)[:60]} is not {self.channels} finite number(s) "
                                f"{'from 0.001 to 10' if name == 'std' else 'from -10 to 10'}, one per channel")

    @property
    def chw(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One image's shape in the data's arrays: H×W grey, H×W×C otherwise."""
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, self.channels)

    @property
    def text(self) -> str:
        return "×".join(map(str, self.chw))

    @property
    def colour(self) -> str:
        return {1: "grey", 3: "RGB", 4: "RGBA"}.get(self.channels, f"{self.channels} channels")

    @property
    def is_mnist(self) -> bool:
        return self == MNIST_INPUT

    def to_dict(self) -> dict:
        d = {"channels": self.channels, "height": self.height, "width": self.width, "colour": self.colour,
             "dtype": "uint8", "scaling": "pixel/255"}
        if self.mean is not None:  # applied inside the model: the artifacts take pixel/255 all the same
            d["normalize"] = {"mean": list(self.mean), "std": list(self.std or ()), "where": "inside the model"}
        return d

    def same_input(self, other: InputSpec) -> bool:
        """Whether two specs take the same images (a normalisation lives inside the model)."""
        return self.chw == other.chw

    @classmethod
    def from_dict(cls, d) -> InputSpec:
        """A spec read from a checkpoint or manifest (untrusted): SpecError when malformed."""
        if not isinstance(d, dict):
            raise SpecError(f"input spec is {type(d).__name__}, not an object")
        for key, want in (("dtype", "uint8"), ("scaling", "pixel/255")):
            if d.get(key, want) != want:
                raise SpecError(f"input {key} {str(d.get(key))[:20]!r}; this version reads {want} only")
        norm = d.get("normalize")
        if norm is not None and not (isinstance(norm, dict) and isinstance(norm.get("mean"), list)
                                     and isinstance(norm.get("std"), list)):
            raise SpecError("input normalize is not {mean: [...], std: [...]}")
        mean, std = (tuple(norm["mean"]), tuple(norm["std"])) if norm is not None else (None, None)
        return cls(d.get("channels"), d.get("height"), d.get("width"), mean, std)  # type: ignore[arg-type]  # checked by __post_init__

    @classmethod
    def of_images(cls, images: np.ndarray) -> InputSpec:
        """The spec of a data array (uint8 N×H×W or N×H×W×C)."""
        shape = np.shape(images)
        if len(shape) == 3:
            return cls(1, int(shape[1]), int(shape[2]))
        if len(shape) == 4:
            return cls(int(shape[3]), int(shape[1]), int(shape[2]))
        raise SpecError(f"images of {len(shape)} dimensions; expected N×H×W or N×H×W×C")

    def check_images(self, images: np.ndarray, where: str) -> None:
        if tuple(np.shape(images)[1:]) != self.image_shape:
            got = InputSpec.of_images(images)
            raise SpecError(f"{where}: images are {got.text} ({got.colour}), the model takes {self.text} "
                            f"({self.colour})")


MNIST_INPUT = InputSpec()


def spec_of(record: dict | None) -> InputSpec:
    """The input spec a checkpoint or manifest records; MNIST's where it records none (older files)."""
    d = (record or {}).get("input")
    return MNIST_INPUT if d is None else InputSpec.from_dict(d)


def to_float_input(images_u8: np.ndarray) -> np.ndarray:
    """uint8 N×H×W (or N×H×W×C) -> float32 N×1×H×W (N×C×H×W) in [0, 1]: torchvision's ToTensor()
    scaling, pixel/255."""
    x = np.asarray(images_u8, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    if x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x.reshape(len(x), 1, *x.shape[1:])  # contiguous (a [:, None] view has a 0 stride)


def to_uint8_input(images_u8: np.ndarray) -> np.ndarray:
    """uint8 N×H×W (or N×H×W×C) -> uint8 N×1×H×W (N×C×H×W) raw pixels (int8 ONNX models fold the /255 in)."""
    x = np.asarray(images_u8)
    if x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.uint8)
    return np.ascontiguousarray(x[:, None, :, :], dtype=np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of N×C logits, in float64 (the one every verb uses)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def batched(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """run() over `x` in slices of `batch`, concatenated."""
    return np.concatenate([np.asarray(run(x[i : i + batch])) for i in range(0, len(x), batch)])
