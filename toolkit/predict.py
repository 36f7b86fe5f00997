"""`mnisttk predict`: digits from image files, torch-free (numpy + onnxruntime; Pillow for PNG/JPEG).

Preprocessing, the way MNIST digits were made:
  1. decode to 8-bit grayscale (alpha composited on white); .npy arrays and PGM need no Pillow;
  2. polarity: MNIST is light ink on a dark background. If the image's border is mostly
     light (mean border > 127), it is dark-on-light (pen on paper) and is inverted;
  3. the background (the border's median) is subtracted; an image with no ink at all (blank or
     uniform) is refused as "no digit found";
  4. an input that is already MNIST-like is used as it is: 28×28, the ink's longer side 16-22 px
     (MNIST's digits fill a 20×20 box) and its centre of mass within 1.5 px of the frame's centre
     (true of every one of MNIST's 70,000 images). Anything else — any other size, or a 28×28 digit
     that fills its frame or sits off-centre — is cropped to the ink's bounding box, scaled so its
     longer side is 20 px (aspect kept), and placed in a 28×28 frame with its centre of mass at the
     centre, as MNIST was made. `as_is=True` skips step 4's normalisation for 28×28 inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.contract import MNIST_INPUT, InputSpec, softmax  # noqa: F401  (softmax: kept importable from here)
from toolkit.errors import ImageError, ToolkitError
from toolkit.fsutil import regular_file
from toolkit.images import (  # noqa: F401  (predict's readers, kept importable from here)
    MAX_ASPECT,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    PIL_FORMATS,
    check_dimensions,
    load_gray,
    read_npy,
    read_pgm,
    read_with_pillow,
    resize,
    to_uint8,
)
from toolkit.ood import MIN_INK_LEVEL, otsu, page_ink

MAX_DEPTH = 32  # folder levels `--recursive` descends (a 1,200-level tree is refused, not a crash)
MIN_CONTRAST = 24  # grey levels between background and ink below which an image is blank
LOCAL_BACKGROUND_MIN = 32  # images at least this large (photos, scans) get a local background estimate
BACKGROUND_PX = 64  # the background is estimated on a copy this large (its long side)
WORK_PX = 256  # larger images are area-averaged down to this long side first: a 20 px digit needs no more
COMPONENT_PX = 128  # ink components are found on a copy this large (max-pooled: thin strokes survive)
KEEP_COMPONENT = 0.1  # a component with this share of the main one's ink, beside it, is part of the digit


def _running(img: np.ndarray, k: int, reduce) -> np.ndarray:
    """A k×k running min or max (edges replicated), separable."""
    from numpy.lib.stride_tricks import sliding_window_view

    pad = k // 2
    out = np.pad(img, pad, mode="edge")
    out = reduce(sliding_window_view(out, k, axis=0), axis=-1)
    return reduce(sliding_window_view(out, k, axis=1), axis=-1)


def local_background(img: np.ndarray) -> np.ndarray:
    """The background of a light-on-dark image under uneven lighting: a grey opening (running min, then
    max) wide enough to remove pen strokes, on a ≤64 px copy, scaled back up. What stays is the
    slowly varying light; subtracting it leaves the ink."""
    h, w = img.shape
    f = BACKGROUND_PX / max(h, w)
    sh, sw = max(8, round(h * f)), max(8, round(w * f))
    small = resize(img, sh, sw)
    k = max(3, round(max(sh, sw) / 4)) | 1  # wider than a stroke (~1/10 of a digit's height)
    opened = _running(_running(small, k, np.min), k, np.max)
    return resize(opened, h, w)


def _ink_box(img: np.ndarray, ink: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    cy, cx = (np.indices(img.shape) * img).reshape(2, -1).sum(1) / img.sum()
    return float(cy), float(cx)


def is_mnist_like(img: np.ndarray) -> bool:
    """28×28, light ink on a zero background, the ink's longer side 16-22 px and its centre of mass
    within 1.5 px of (14, 14): how MNIST made its digits (all 70,000 pass)."""
    if img.shape != (28, 28) or img.max() <= 0:
        return False
    r0, r1, c0, c1 = _ink_box(img, img > 0.2 * img.max())
    cy, cx = _centre_of_mass(img)
    return 16 <= max(r1 - r0, c1 - c0) <= 22 and abs(cy - 14) <= 1.5 and abs(cx - 14) <= 1.5


def median3(img: np.ndarray) -> np.ndarray:
    """3×3 median (edges replicated): sensor noise and salt-and-pepper specks out, strokes kept."""
    from numpy.lib.stride_tricks import sliding_window_view

    return np.median(sliding_window_view(np.pad(img, 1, mode="edge"), (3, 3)), axis=(-2, -1))


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean image: (labels, count), labels 1…count, 0 for background."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w = mask.shape
    count = 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x] = count
        stack = [(y, x)]
        while stack:
            cy, cx = stack.pop()
            for ny in range(max(cy - 1, 0), min(cy + 2, h)):
                for nx in range(max(cx - 1, 0), min(cx + 2, w)):
                    if mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = count
                        stack.append((ny, nx))
    return labels, count


def _blocks(x: np.ndarray, f: int, reduce) -> np.ndarray:
    """`reduce` over f×f blocks (np.any: a max-pool of a mask; np.sum: ink per block), zero-padded."""
    h, w = x.shape
    padded = np.zeros((-(-h // f) * f, -(-w // f) * f), dtype=x.dtype)
    padded[:h, :w] = x
    return reduce(padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f), axis=(1, 3))


def dominant_ink(img: np.ndarray) -> np.ndarray:
    """The digit's ink: Otsu's threshold, then the dominant connected ink (by ink mass) and the
    components beside it that are large enough to be its strokes; specks, noise and page edges (a
    component spanning the whole image, when there is another) are dropped. Returns the image with
    everything else set to 0."""
    t = max(otsu(img), MIN_INK_LEVEL)
    mask = img > t
    if not mask.any():
        return img
    f = max(1, -(-max(img.shape) // COMPONENT_PX))
    small = _blocks(mask, f, np.any)
    labels, count = label_components(small)
    if count <= 1:
        return img * _running(mask, 3, np.max)
    sh, sw = small.shape
    weights = _blocks(np.where(mask, img, 0.0), f, np.sum)
    mass = np.bincount(labels.ravel(), weights=weights.ravel(), minlength=count + 1)
    boxes = {}
    for k in range(1, count + 1):
        ys, xs = np.nonzero(labels == k)
        boxes[k] = (ys.min(), ys.max(), xs.min(), xs.max())
    # a page edge or frame in a photo or scan: touches the border and spans (almost) its whole width
    # or height (a small image is taken to be the digit's own frame: a digit may fill it)
    edge = set() if min(img.shape) < LOCAL_BACKGROUND_MIN else {
        k for k, (y0, y1, x0, x1) in boxes.items()
        if ((y1 - y0 + 1) >= 0.95 * sh or (x1 - x0 + 1) >= 0.95 * sw) and (y0 == 0 or x0 == 0 or y1 == sh - 1
                                                                         or x1 == sw - 1)}
    candidates = [k for k in range(1, count + 1) if k not in edge] or list(range(1, count + 1))
    main = max(candidates, key=lambda k: mass[k])
    y0, y1, x0, x1 = boxes[main]
    my, mx = 0.3 * (y1 - y0 + 1) + 1, 0.3 * (x1 - x0 + 1) + 1
    keep = [k for k in candidates if k == main or (
        mass[k] >= KEEP_COMPONENT * mass[main] and boxes[k][0] <= y1 + my and boxes[k][1] >= y0 - my
        and boxes[k][2] <= x1 + mx and boxes[k][3] >= x0 - mx)]
    kept_small = np.isin(labels, keep)
    kept = np.repeat(np.repeat(kept_small, f, axis=0), f, axis=1)[: img.shape[0], : img.shape[1]]
    return img * _running(mask & kept, 3, np.max)  # anti-aliased stroke edges stay with their stroke


def to_mnist(gray: np.ndarray, as_is: bool = False) -> np.ndarray:
    """Grayscale uint8 H×W -> uint8 28×28, light digit on dark, centred like MNIST."""
    return prepare(gray, as_is)[0]


# predict's ways from a picture to the model's input (export records one): digit and plain for MNIST-shaped
# grey 28×28 models, resize for every other input (toolkit.contract.InputSpec)
PREPROCESSING = ("digit", "plain", "resize")


def default_preprocessing(classes, spec: InputSpec = MNIST_INPUT) -> str:
    """digit (MNIST's ink extraction) for a dataset of the digits 0-9; plain (the whole picture resized,
    as Fashion-MNIST's items were made) for any other classes; resize for a model of any other input than
    grey 28×28 (the picture as it is, area-resized to the model's size, in its channels)."""
    if not spec.is_mnist:
        return "resize"
    return "digit" if tuple(classes) == tuple(str(d) for d in range(10)) else "plain"


def prepare_resize(img: np.ndarray, spec: InputSpec, as_is: bool = False) -> np.ndarray:
    """A picture (grey H×W or RGB H×W×3) as the model's input: converted to its channels (grey by luma,
    grey copied to RGB), then area-resized to its width×height (aspect not kept, as image-folder data is
    resized; `as_is`: it must already be that size). No inversion, no crop: the data set's own images."""
    from toolkit.images import resize_u8, to_spec

    img = to_spec(img, spec.channels)
    if img.shape[:2] != (spec.height, spec.width):
        if as_is:
            raise ImageError(f"a {img.shape[1]}×{img.shape[0]} image cannot be used as it is (--as-is needs "
                             f"{spec.width}×{spec.height})")
        img = resize_u8(img, spec.height, spec.width)
    return img


def prepare_plain(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """The whole picture, light on dark (inverted when its border is light), padded to a square with its
    border's level and area-resized to 28×28: no crop to the ink, no centring by mass."""
    img = gray.astype(np.float64)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    if border.mean() > 127:
        img, border = 255.0 - img, 255.0 - border
    h, w = img.shape
    side = max(h, w)
    square = np.full((side, side), float(np.median(border)))
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = img
    out = square if side == 28 else resize(square, 28, 28)
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8), page_ink(out)


def prepare(gray: np.ndarray, as_is: bool = False, how: str = "digit") -> tuple[np.ndarray, float]:
    """(the 28×28 image the model gets, page_ink of what was received: toolkit.ood's page check)."""
    if how == "plain" and not as_is:
        return prepare_plain(gray)
    img = gray.astype(np.float64)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    if border.mean() > 127:  # dark-on-light (paper): invert to MNIST's light-on-dark
        img, border = 255.0 - img, 255.0 - border
    if as_is:
        if img.shape != (28, 28):
            raise ImageError(f"a {img.shape[1]}×{img.shape[0]} image cannot be used as it is (--as-is needs 28×28)")
        return np.rint(img).astype(np.uint8), page_ink(img)
    if max(img.shape) > WORK_PX:  # area-averaged down: noise averages out, a 20 px digit loses nothing
        f = WORK_PX / max(img.shape)
        img = resize(img, max(1, round(img.shape[0] * f)), max(1, round(img.shape[1] * f)))
    # background to ~0: a local estimate on photos and scans (uneven lighting), the border's median
    # on small images
    background = local_background(img) if min(img.shape) >= LOCAL_BACKGROUND_MIN else np.median(border)
    img = np.clip(img - background, 0, 255)
    if min(img.shape) >= LOCAL_BACKGROUND_MIN:  # photos and scans: sensor noise and specks out
        img = median3(img)
    if img.max() < MIN_CONTRAST:
        raise ImageError("no digit found (the image is blank or uniform)")
    if is_mnist_like(img):
        return np.rint(img).astype(np.uint8), page_ink(img)
    received = page_ink(img)
    img = dominant_ink(img)
    r0, r1, c0, c1 = _ink_box(img, img > 0.2 * img.max())
    crop = img[r0:r1, c0:c1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = resize(crop, nh, nw)
    small = small * (255.0 / small.max()) if small.max() > 0 else small
    canvas = np.zeros((28, 28))
    cy, cx = _centre_of_mass(small)
    top = int(np.clip(round(14 - cy), 0, 28 - nh))
    left = int(np.clip(round(14 - cx), 0, 28 - nw))
    canvas[top : top + nh, left : left + nw] = small
    return np.rint(np.clip(canvas, 0, 255)).astype(np.uint8), received


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".npy")


class FolderProblem(str):
    """An entry of expand_inputs that is not a file: why a folder gave no images (its own error line)."""


def _folder_images(folder: Path, recursive: bool) -> tuple[list[Path], str | None]:
    """Image files under `folder` (by suffix, sorted), walked without recursion; links to folders are
    not followed. (files, None) or ([], why not)."""
    found, stack = [], [(folder, 0)]
    while stack:
        here, depth = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError as exc:
            return [], f"{here}: cannot list ({exc.strerror or exc})"
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if recursive:
                        if depth + 1 > MAX_DEPTH:
                            return [], f"{folder}: folders nested over {MAX_DEPTH} levels deep; refused"
                        stack.append((Path(e.path), depth + 1))
                elif Path(e.name).suffix.lower() in IMAGE_SUFFIXES and e.is_file():
                    found.append(Path(e.path))
            except OSError:
                continue
    return sorted(found), None


def expand_inputs(paths: list[str], recursive: bool = False) -> list:
    """Files as given; a folder becomes its image files (by suffix, sorted; `recursive` descends).
    A folder that gives none becomes a FolderProblem saying why, so it gets its own error line."""
    out: list = []
    for p in paths:
        path = Path(p)
        try:
            is_dir = path.is_dir()
        except (OSError, ValueError):  # a name too long, a NUL: the file's own error line says so
            is_dir = False
        if is_dir:
            found, why = _folder_images(path, recursive)
            if why:
                out.append(FolderProblem(why))
            elif not found:
                out.append(FolderProblem(f"{path}: no images in this folder (looked for "
                                         f"{', '.join(IMAGE_SUFFIXES)}{'' if recursive else '; -r descends into sub-folders'})"))
            else:
                out.extend(str(f) for f in found)
        else:
            out.append(str(p))
    return out


def save_preprocessed(images: np.ndarray, names: list[str], folder: Path) -> list[str]:
    """Write the 28×28 images the model saw (PNG), one per input, numbered to keep names unique."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, name) in enumerate(zip(images, names, strict=True)):
        target = folder / f"{i:04d}_{Path(name).stem}.png"
        Image.fromarray(img).save(target)
        paths.append(str(target))
    return paths


def predict_files(paths: list[str], model, as_is: bool = False, min_confidence: float | None = None,
                  save_dir: Path | None = None, rule: dict | None = None, classes: tuple | None = None,
                  preprocessing: str = "digit", spec: InputSpec = MNIST_INPUT) -> list[dict]:
    """One result per file: {'file', 'status', 'digit', 'probability', 'probabilities'[, 'not_a_digit',
    'low_confidence', 'preprocessed']} or {'file', 'error'}. Bad files do not stop the others; inference
    is one batch. `model`: anything with `logits(uint8 N×28×28)`, or a callable taking the batch and
    returning logits. `rule`: the export's not-a-digit rule (toolkit.ood); with it, an image it rejects
    has status "not_a_digit" and the checks it failed, with their values and limits."""
    results: list[dict[str, Any]] = []
    images: list = []
    slots: list[int] = []
    pages: list = []
    for p in paths:
        if isinstance(p, FolderProblem):
            results.append({"file": str(p).split(": ", 1)[0], "error": str(p)})
            continue
        try:
            try:
                if preprocessing == "resize" or not spec.is_mnist:
                    from toolkit.images import load_pixels

                    image, page = prepare_resize(load_pixels(p, colour=spec.channels == 3), spec, as_is), 0.0
                else:
                    image, page = prepare(load_gray(p), as_is=as_is, how=preprocessing)
                images.append(image)
                pages.append(page)
            except ImageError as exc:
                msg = str(exc)
                raise ImageError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
            slots.append(len(results))
            results.append({"file": str(p)})
        except ImageError as exc:
            results.append({"file": str(p), "error": str(exc)})
        except OSError as exc:  # a name too long, a file gone: this file's error, not the batch's
            results.append({"file": str(p), "error": f"{p}: cannot read ({exc.strerror or exc})"})
        except MemoryError:
            results.append({"file": str(p), "error": f"{p}: too large to preprocess in this memory"})
    if images:
        batch = np.stack(images)
        if save_dir is not None:
            for slot, saved in zip(slots, save_preprocessed(batch, [results[i]["file"] for i in slots], save_dir), strict=True):
                results[slot]["preprocessed"] = saved
        logits = model(batch) if callable(model) else model.logits(batch)
        probs = softmax(np.asarray(logits).astype(np.float64))
        decision = None
        if rule is not None:
            from toolkit.ood import decide, explain

            decision = decide(rule, batch, np.asarray(logits), np.array(pages))
        from toolkit.ood import class_names

        names = classes if classes and len(classes) == probs.shape[1] else class_names(rule, probs.shape[1])
        for i, (slot, pr) in enumerate(zip(slots, probs, strict=True)):
            digit = int(pr.argmax())
            results[slot].update(status="digit", digit=digit, label=names[digit], probability=float(pr[digit]),
                                 probabilities=[round(float(v), 6) for v in pr])
            if rule is not None and decision is not None and not decision["accepted"][i]:
                results[slot]["status"] = "not_a_digit"
                results[slot]["not_a_digit"] = explain(rule, decision, i)
            if min_confidence is not None:
                results[slot]["low_confidence"] = bool(pr[digit] < min_confidence)
    return results


PREDICT_KINDS = {"onnx": "ONNX", "ort": "ORT format", "tflite": "LiteRT"}


def find_rule(model_path: Path, sha256: str, metadata: str | None) -> tuple[dict | None, str]:
    """The not-a-digit rule for this model, and where it came from: the model's own metadata
    (`mnisttk_ood`, ONNX and ORT files from mnisttk export), else the manifest beside it when that
    lists this very file (same SHA-256). (None, why) when neither has one."""
    import json

    from toolkit.ood import check_rule

    if metadata:
        try:
            return check_rule(json.loads(metadata)), "the model's metadata"
        except (ValueError, RecursionError):
            return None, "the model's mnisttk_ood metadata is malformed"
    from toolkit.manifest import load_manifest

    try:
        manifest = load_manifest(model_path.parent)
    except ToolkitError:  # no manifest, or one that is not ours: the model was not exported beside it
        return None, "the model has no mnisttk_ood metadata and no manifest lists it"
    if not any(a["file"] == model_path.name and a["sha256"] == sha256 for a in manifest["artifacts"]):
        return None, "the manifest beside the model does not list these bytes"
    if manifest.get("ood") is None:
        return None, "its export has no not-a-digit rule (exported by an older mnisttk)"
    try:
        return check_rule(manifest["ood"]), "the manifest beside it"
    except ValueError:
        return None, "the manifest's not-a-digit rule is malformed"


def predictable_kind(model_path: Path) -> str:
    """"onnx", "ort" or "tflite" from the model file's bytes; ToolkitError in one line for anything
    else (a FIFO, a folder, a .pte, a TorchScript file, a giant), before it is loaded."""
    from toolkit.formats import KIND_NAMES, sniff
    from toolkit.runtimes.candidate import MAX_MODEL_BYTES

    path = regular_file(model_path, ToolkitError, "an mnisttk model", MAX_MODEL_BYTES, missing="no such model file")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    kind = sniff(head)
    if kind not in PREDICT_KINDS:
        found = KIND_NAMES[kind] if kind else "not a model file mnisttk knows"
        raise ToolkitError(f"{path}: {found}; predict runs ONNX (.onnx), ORT format (.ort) and LiteRT (.tflite) "
                           "models (verify runs the others)")
    return kind


def model_logits(model_path: str, kind: str, provider: str, batch: np.ndarray | None) -> tuple:
    """(logits, SHA-256 of the bytes loaded) for uint8 N×28×28 images (run where toolkit.isolate bounds it);
    batch None: only load and check the model ((None, SHA-256, its `mnisttk_ood` metadata or None, the
    C×H×W it takes)). The
    model is built as verify builds a row (toolkit.runtimes): the runtime that runs this kind of file on
    `provider`, its logits checked the same way, as many classes as its output declares."""
    from toolkit.runtimes import build, runtime_for

    spec = runtime_for(kind, provider)
    assert spec is not None, "predict() checks the runtime before it starts the child"
    path = Path(model_path)
    artifact = {"file": path.name, "format": kind, "precision": "", "sha256": None}
    model = build(spec, path.parent, artifact, 0)
    model.num_classes = model.declared_classes() or model.num_classes  # no manifest: the model says
    if batch is None:
        return None, model.loaded_sha256, model.metadata("mnisttk_ood"), model.input_spec.chw
    return np.asarray(model.logits(batch), dtype=np.float32), model.loaded_sha256


@dataclass(frozen=True)
class PredictOptions:
    """How `mnisttk predict` treats its images (the CLI's options, keyword-only)."""

    provider: str = "cpu"
    as_is: bool = False  # the images are already MNIST-style 28×28 (no preprocessing)
    preprocessing: str | None = None  # digit | plain; None: what the export recorded (digit by default)
    min_confidence: float | None = None
    recursive: bool = False
    save_dir: Path | None = None
    timeout_s: float = 120.0  # the model's time on all the images, in its bounded child
    accept_all: bool = False  # no not-a-digit rule


def predict(images: list[str], model_path: Path, *, options: PredictOptions = PredictOptions(),
            log: Callable[[str], None] = lambda s: None) -> dict:
    """The predict verb: check the model, then the images, run the model in a bounded child process
    (toolkit.isolate: a model that hangs or aborts is one error, not a hung or crashed predict), apply the
    export's not-a-digit rule. Returns the JSON document (docs/schemas/predict.schema.json)."""
    from toolkit import isolate
    from toolkit.runtimes import runtime_for

    kind = predictable_kind(model_path)  # before any image is read: FIFOs, .pte, giants refused in one line
    spec = runtime_for(kind, options.provider)
    if spec is None:  # e.g. a LiteRT model on --device cuda
        raise ToolkitError(f"{model_path}: no runtime here runs {PREDICT_KINDS[kind]} models on "
                           f"{options.provider}; leave out --device {options.provider}")
    if options.provider == "cuda":
        from toolkit.runtimes.ort_session import select_provider

        select_provider("cuda")  # no CUDA here: one line now, not after reading the images
    if options.save_dir is not None:
        from toolkit.fsutil import check_writable_dir

        try:
            check_writable_dir(options.save_dir)
        except OSError as exc:
            raise ToolkitError(f"cannot write to {options.save_dir}: {exc.strerror or exc}") from None
    files = expand_inputs(images, options.recursive)
    memory_mb = None if spec.gpu else isolate.DEFAULT_MEMORY_MB

    def in_child(batch):
        return isolate.call(model_logits, str(model_path), kind, options.provider, batch, timeout_s=options.timeout_s,
                            memory_mb=memory_mb, what=f"the model {model_path}")

    _, sha, metadata, chw = in_child(None)  # a model that cannot load fails before any image is read
    input_spec = InputSpec(*chw)
    if input_spec.channels not in (1, 3):
        raise ToolkitError(f"{model_path}: takes {input_spec.text} input; predict reads pictures as grey or RGB "
                           "(verify checks such a model on its own data)")
    loaded = {"sha256": sha}
    found, source = find_rule(model_path, sha, metadata)
    classes = tuple(found["classes"]) if found and "classes" in found else None  # the dataset's class names
    rule, source = (None, "switched off (--accept-all)") if options.accept_all else (found, source)
    # what export recorded; without a record, MNIST's digit preprocessing, or resize for any other input
    how = options.preprocessing or (found or {}).get("preprocessing", "digit" if input_spec.is_mnist else "resize")
    if how != "resize" and not input_spec.is_mnist:
        raise ToolkitError(f"--preprocess {how} makes MNIST-style 28×28 grey inputs; this model takes "
                           f"{input_spec.text} ({input_spec.colour}): use resize")
    if rule is None and not options.accept_all:
        log(f"predict: no not-a-digit rule ({source}): every readable image gets a digit")

    def logits(batch):
        out, loaded["sha256"] = in_child(batch)
        return out

    results = predict_files(files, logits, as_is=options.as_is, min_confidence=options.min_confidence,
                            save_dir=options.save_dir, rule=rule, classes=classes, preprocessing=how, spec=input_spec)
    return {"schema_version": 1, "model": str(model_path), "model_sha256": loaded.get("sha256"),
            "provider": options.provider, "preprocessing": "as-is" if options.as_is else how,
            "not_a_digit_rule": source if rule is None else f"from {source}", "results": results}


def describe(result: dict) -> str:
    """One line for one image's result (an error's line is the error itself)."""
    if "error" in result:
        return result["error"]
    if result["status"] == "not_a_digit":
        def lim(v):
            return f"[{v[0]:.3g}, {v[1]:.3g}]" if isinstance(v, list) else f"{v:.3g}"

        # the first failed check with its value, the others by name (all of them: --json)
        failed = result["not_a_digit"]["failed"]
        why = "; ".join(f"{c['check']} {c['value']:.3g} not {c['rule']} {lim(c['limit'])}" for c in failed[:1])
        more = f"; also {', '.join(c['check'] for c in failed[1:])}" if len(failed) > 1 else ""
        n = len(result["probabilities"])
        what = "a digit" if result["label"] == str(result["digit"]) and n == 10 else f"one of the {n} classes"
        return f"{result['file']}: not {what} ({why}{more}; best guess {result['label']})"
    low = ", low confidence" if result.get("low_confidence") else ""
    return f"{result['file']}: {result['label']} (p={result['probability']:.3f}{low})"


def exit_code(results: list[dict]) -> int:
    """1 when a file could not be read, else 3 when an image was not a digit, else 0."""
    if any("error" in r for r in results):
        return 1
    return 3 if any(r.get("status") == "not_a_digit" for r in results) else 0
