"""What `mnisttk data` shows: source, sizes, class counts, hashes, and a sample grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.data import MNIST
from toolkit.errors import DataError


def describe(mnist: MNIST) -> dict:
    info: dict = {"source": mnist.source, "directory": str(mnist.directory), "canonical_mnist": mnist.canonical,
                  "classes": list(mnist.classes), "input": mnist.spec.to_dict(), "splits": {}}
    for split in ("train", "test"):
        images, labels = mnist.split(split)
        info["splits"][split] = {
            "images": int(len(images)),
            "class_counts": np.bincount(labels, minlength=len(mnist.classes)).tolist(),
            "sha256": mnist.sha256[split],
        }
    return info


COLUMNS = 10  # classes shown as columns of counts, each headed by its name; more: a summary per split


def format_description(info: dict) -> str:
    """Within 120 columns whatever the class count: up to COLUMNS classes as columns (headed by their
    names, cut to 5 characters), more as each split's smallest, median and largest class."""
    from toolkit.width import fit

    classes = info.get("classes") or [str(d) for d in range(len(info["splits"]["train"]["class_counts"]))]
    lines = [f"source: {info['source']}",
             f"canonical MNIST: {'yes' if info['canonical_mnist'] else 'no (hashes differ from the official set)'}"]
    spec = info.get("input")
    if spec:
        lines.append(f"images: {spec['colour']} {spec['width']}×{spec['height']} (the model's input: N×{spec['channels']}×"
                     f"{spec['height']}×{spec['width']} float, pixel/255)")
    if len(classes) <= COLUMNS:
        heads = [c[:5] for c in classes]
        if len(set(heads)) < len(heads):  # names alike in their first 5 characters: numbered, and named below
            heads = [str(k) for k in range(len(classes))]
            lines.append("classes: " + ", ".join(f"{k} {c}" for k, c in enumerate(classes)))
        lines.append(f"{'split':<6} {'images':>7}  " + " ".join(f"{h:>5}" for h in heads)
                     + "  sha256 (--json: all of it)")
        for split, s in info["splits"].items():
            lines.append(f"{split:<6} {s['images']:>7}  " + " ".join(f"{c:>5}" for c in s["class_counts"])
                         + f"  {s['sha256'][:32]}…")
    else:
        lines.append(f"{len(classes)} classes: " + ", ".join(classes))
        lines.append(f"{'split':<6} {'images':>7}  {'smallest class':>22}  {'median':>7}  {'largest class':>22}  sha256")
        for split, s in info["splits"].items():
            counts = np.asarray(s["class_counts"])
            lo, hi = int(counts.argmin()), int(counts.argmax())
            lines.append(f"{split:<6} {s['images']:>7}  {f'{classes[lo][:12]} {counts[lo]}':>22}  "
                         f"{float(np.median(counts)):>7g}  {f'{classes[hi][:12]} {counts[hi]}':>22}  "
                         f"{s['sha256'][:32]}…")
    if "grid" in info:
        lines.append(f"grid: {info['grid']}")
    return fit("\n".join(lines))


def write_grid(mnist: MNIST, path: Path, rows: int = 6, cols: int = 10) -> Path:
    """A PNG of the first rows×cols test images, each labelled with its class (needs Pillow)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise DataError("--grid needs Pillow (pip install pillow)") from None
    from toolkit.fsutil import atomic_path

    images, labels = mnist.test_images, mnist.test_labels
    if images.ndim == 4 and images.shape[3] not in (1, 3):
        images = images[..., 0]  # a data set of other channel counts: its first channel
    h, w = images.shape[1:3]
    cell, pad = max(h, w, 28), 14
    scale = max(1, 56 // cell)
    sheet = Image.new("RGB" if images.ndim == 4 else "L", (cols * (cell + 4) * scale, rows * (cell + pad) * scale),
                      (255, 255, 255) if images.ndim == 4 else 255)
    draw = ImageDraw.Draw(sheet)
    for i in range(min(rows * cols, len(images))):
        r, c = divmod(i, cols)
        x0, y0 = c * (cell + 4) * scale, r * (cell + pad) * scale
        tile = Image.fromarray(images[i]).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        sheet.paste(tile, (x0, y0 + pad * scale))
        draw.text((x0 + 2, y0 + 4), str(mnist.classes[labels[i]])[:10], fill=(0, 0, 0) if images.ndim == 4 else 0)
    try:
        with atomic_path(path) as tmp:
            sheet.save(tmp, format="PNG")
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
    return Path(path)
