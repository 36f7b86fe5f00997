#!/usr/bin/env python3
"""How predict does on what a camera or scanner sees: MNIST test digits drawn as dark ink on a page
(clean, and with noise, lighting, blur, JPEG, rotation) and non-digits (noise, shapes, scribbles,
letters from Pillow's built-in font, textures), each through predict's preprocessing, an exported
ONNX model and its not-a-digit rule. Prints a Markdown table; tests/test_ood.py asserts on the same sets.

    python scripts/ood_eval.py exported/            # the export's fp32 and int8 ONNX models
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np


def page(digit28: np.ndarray, rng, size=(180, 150), scale=4) -> np.ndarray:
    """A 28×28 MNIST digit as dark ink on light paper, scaled up and placed off-centre on a page."""
    from PIL import Image

    big = np.asarray(Image.fromarray(digit28).resize((28 * scale, 28 * scale), Image.BILINEAR), dtype=np.float64)
    out = np.full(size, 235.0)
    y, x = rng.integers(0, size[0] - big.shape[0]), rng.integers(0, size[1] - big.shape[1])
    out[y:y + big.shape[0], x:x + big.shape[1]] -= big * 0.85
    return out


def corrupt(img: np.ndarray, kind: str, rng) -> np.ndarray:
    from PIL import Image, ImageFilter

    if kind == "clean":
        out = img
    elif kind == "noise 3% + lighting":  # Gaussian sensor noise σ = 3% of full scale, light 60%→100% across
        light = np.linspace(0.6, 1.0, img.shape[1])[None, :]
        out = img * light + rng.normal(0, 0.03 * 255, img.shape)
    elif kind == "salt and pepper 3%":
        out = img.copy()
        hit = rng.random(img.shape) < 0.03
        out[hit] = rng.choice([0.0, 255.0], hit.sum())
    elif kind == "blur":
        out = np.asarray(Image.fromarray(np.uint8(np.clip(img, 0, 255))).filter(ImageFilter.GaussianBlur(2)), float)
    elif kind == "JPEG q=15":
        buf = io.BytesIO()
        Image.fromarray(np.uint8(np.clip(img, 0, 255))).save(buf, format="JPEG", quality=15)
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())), float)
    elif kind == "rotated 15°":
        out = np.asarray(Image.fromarray(np.uint8(np.clip(img, 0, 255))).rotate(15, fillcolor=235), float)
    elif kind == "rotated 45°":
        out = np.asarray(Image.fromarray(np.uint8(np.clip(img, 0, 255))).rotate(45, fillcolor=235), float)
    else:
        raise ValueError(kind)
    return np.uint8(np.clip(out, 0, 255))


DIGIT_KINDS = ("clean", "noise 3% + lighting", "salt and pepper 3%", "blur", "JPEG q=15", "rotated 15°",
               "rotated 45°")
NON_DIGIT_KINDS = ("uniform noise", "gaussian noise", "shapes", "scribbles", "letters", "textures")


def non_digit_pages(kind: str, n: int, rng, size=(180, 150)) -> list[np.ndarray]:
    from PIL import Image, ImageDraw, ImageFont

    out = []
    for i in range(n):
        if kind == "uniform noise":
            out.append(rng.integers(0, 256, size).astype(np.uint8))
            continue
        if kind == "gaussian noise":
            out.append(np.uint8(np.clip(rng.normal(128, 50, size), 0, 255)))
            continue
        im = Image.new("L", size[::-1], 235)
        d = ImageDraw.Draw(im)
        h, w = size
        if kind == "shapes":  # filled ellipses, rectangles, triangles
            x0, y0 = rng.integers(10, w // 2), rng.integers(10, h // 2)
            x1, y1 = x0 + rng.integers(30, w // 2), y0 + rng.integers(30, h // 2)
            [d.ellipse, d.rectangle, lambda b, fill, d=d: d.polygon([(b[0], b[3]), (b[2], b[3]), ((b[0] + b[2]) // 2, b[1])],
                                                                     fill=fill)][i % 3]((x0, y0, x1, y1), fill=30)
        elif kind == "scribbles":
            pts = [(int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10))) for _ in range(rng.integers(6, 12))]
            d.line(pts, fill=30, width=int(rng.integers(3, 7)))
        elif kind == "letters":
            font = ImageFont.load_default(size=int(rng.integers(60, 110)))
            letter = "ABCDEFGHJKMNPQRTUVWXYabdefhkmnqrtwxy"[i % 36]
            d.text((int(rng.integers(5, 40)), int(rng.integers(5, 40))), letter, fill=30, font=font)
        elif kind == "textures":
            period = int(rng.integers(6, 20))
            yy, xx = np.mgrid[:h, :w]
            pat = [((yy // period + xx // period) % 2), (xx // period) % 2, ((xx + yy) // period) % 2][i % 3]
            im = Image.fromarray(np.uint8(235 - 200 * pat))
        out.append(np.asarray(im, dtype=np.uint8))
    return out


def build_sets(test_images: np.ndarray, test_labels: np.ndarray, n_digits: int = 300, n_other: int = 60,
               seed: int = 0) -> tuple[dict, dict]:
    """({kind: (pages, labels)} for digits, {kind: pages} for non-digits)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(test_images), n_digits, replace=False)
    pages = [page(test_images[i], rng) for i in idx]
    digits = {k: ([corrupt(p, k, rng) for p in pages], test_labels[idx]) for k in DIGIT_KINDS}
    return digits, {k: non_digit_pages(k, n_other, rng) for k in NON_DIGIT_KINDS}


def evaluate(digits: dict, others: dict, logits_of, rule: dict | None, preprocess) -> dict:
    """Per kind: digits accepted, and accepted-and-correct; non-digits rejected (all in %)."""
    from toolkit.ood import decide

    def run(pages):
        xs, ok, page_ink = [], [], []
        for p in pages:
            try:
                out = preprocess(p)  # predict.prepare: (image, page_ink); an older to_mnist: the image
                x, ink = out if isinstance(out, tuple) else (out, None)
                xs.append(x)
                page_ink.append(ink)
                ok.append(True)
            except Exception:  # noqa: BLE001 - "no digit found": an answer that is a rejection
                ok.append(False)
        ok = np.array(ok)
        acc = np.zeros(len(pages), bool)
        pred = np.full(len(pages), -1)
        if xs:
            x = np.stack(xs)
            z = logits_of(x)
            pred[ok] = z.argmax(1)
            page = None if None in page_ink else np.array(page_ink)
            acc[ok] = decide(rule, x, z, page)["accepted"] if rule else True
        return acc, pred

    out = {"digits": {}, "non_digits": {}}
    for k, (pages, labels) in digits.items():
        acc, pred = run(pages)
        out["digits"][k] = {"accepted": 100 * acc.mean(), "correct": 100 * (pred == labels).mean(),
                            "accepted_and_correct": 100 * (acc & (pred == labels)).mean()}
    for k, pages in others.items():
        acc, _ = run(pages)
        out["non_digits"][k] = {"rejected": 100 * (1 - acc.mean())}
    return out


def markdown(results: dict) -> str:
    cols = list(results)
    lines = ["| set | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for k in results[cols[0]]["digits"]:
        lines.append(f"| digit, {k}: correct / accepted and correct % | " + " | ".join(
            f"{r['digits'][k]['correct']:.1f} / {r['digits'][k]['accepted_and_correct']:.1f}" for r in results.values()) + " |")
    for k in results[cols[0]]["non_digits"]:
        lines.append(f"| not a digit, {k}: rejected % | " + " | ".join(
            f"{r['non_digits'][k]['rejected']:.1f}" for r in results.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import json

    from toolkit.data import load_mnist
    from toolkit.predict import prepare
    from toolkit.runtimes.ort_session import Model

    folder = Path(argv[0] if argv else "exported")
    manifest = json.loads((folder / "manifest.json").read_text())
    rule = manifest.get("ood")
    mnist = load_mnist(log=lambda s: None)
    digits, others = build_sets(mnist.test_images, mnist.test_labels)
    results = {}
    for a in manifest["artifacts"]:
        if a["format"] == "onnx":
            model = Model(folder / a["file"], "cpu", fmt="onnx")
            results[f"{a['precision']} with the rule"] = evaluate(digits, others, model.logits, rule, prepare)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
