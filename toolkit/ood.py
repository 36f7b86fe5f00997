""""Not a digit" as an answer: a rule, calibrated at export on MNIST digits only, that an image fed to
the model (28×28, preprocessed as MNIST was made) is out of what the model was trained for.

It uses what any integrator has on the device — the logits and the image itself — so a C, C++ or
mobile integrator can apply the same rule from the JSON stored in the manifest and in the ONNX
metadata (`mnisttk_ood`):
- `energy`: log-sum-exp of the logits; low when no class fits;
- `logit_distance`: squared Mahalanobis distance of the logits to the mean logits of the predicted
  class (one covariance shared by the classes), on the calibration digits; far when the pattern of
  scores is unlike any digit's, even a confident one;
- `ink_fraction`: share of the 28×28 pixels that are ink (> 127); MNIST digits cover a band of it,
  blobs and noise far more;
- `thickness`: share of ink pixels whose 3×3 neighbourhood is all ink; pen strokes are thin;
- `page_ink`: share of the image predict received (after its background removal and denoising)
  above Otsu's ink threshold; a digit on paper is a small part of its page, noise and textures half.
  For a 28×28 image (MNIST, the calibration digits) it is measured on the image itself;
- the strokes' shape (rule version 2), on the 28×28 ink (> 127): `euler`, its Euler number with
  8-connected ink (pieces minus holes: a digit has at most two holes, a scribble that crosses itself
  many), from Gray's 2×2 bit-quad counts (Q1 − Q3 − 2·Q_diagonal) / 4 on the image padded by one
  pixel; `endpoints` and `junctions` of its skeleton (Zhang–Suen thinning, both sub-iterations, until
  nothing changes): skeleton pixels with exactly one skeleton neighbour of eight, and those whose
  clockwise ring of eight neighbours has three or more background→skeleton steps. Pen strokes that end
  or meet more often than any digit's are a scribble's.
Each limit is a quantile of the calibration digits, chosen so that together they keep the asked
share of them (`keep`, 99% by default); the kept share measured on the calibration digits is stored
beside the limits. Nothing here is tuned on non-digits. Edge side: numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toolkit.contract import MAX_CLASSES
from toolkit.errors import ToolkitError

RULE_VERSION = 2
RULE_VERSIONS = (1, 2)  # version 1 (no stroke checks) is still read and applied as it was written
INK = 127  # a pixel is ink above this (uint8, light ink on dark)
# How the 1% a rule may reject of the calibration digits is shared between its checks (each a one-sided
# quantile; the ink fraction two-sided): the logit checks get most, as they see every kind of image.
# The stroke counts are integers: a limit at a quantile rejects at most its share (ties are kept).
BUDGET = {"energy": 0.225, "logit_distance": 0.225, "ink_fraction_low": 0.05, "ink_fraction_high": 0.1,
          "thickness": 0.1, "page_ink": 0.05, "euler": 0.08, "endpoints": 0.09, "junctions": 0.08}
STROKE_LIMITS = ("euler_min", "endpoints_max", "junctions_max")


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]


def otsu_levels(images: np.ndarray) -> np.ndarray:
    """Otsu's threshold on 0-255 values of each of N images (N×…): the level that best splits ink from
    paper, image by image, computed for all of them at once (10,000 test images in a quarter second)."""
    n = len(images)
    v = np.clip(np.asarray(images), 0, 255).astype(np.int64).reshape(n, -1)
    hist = np.bincount((v + 256 * np.arange(n)[:, None]).ravel(), minlength=256 * n).reshape(n, 256).astype(np.float64)
    p = hist / hist.sum(1, keepdims=True)
    w0 = np.cumsum(p, axis=1)
    mu = np.cumsum(p * np.arange(256), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[:, -1:] * w0 - mu) ** 2 / (w0 * (1 - w0))
    return np.argmax(np.where(np.isfinite(between), between, -1), axis=1).astype(np.float64)


def otsu(img: np.ndarray) -> float:
    """Otsu's threshold on 0-255 values of one image."""
    return float(otsu_levels(np.asarray(img)[None])[0])


MIN_INK_LEVEL = 12  # below this no pixel is ink, whatever Otsu says (half predict's blank-image contrast)


def pages_ink(images: np.ndarray) -> np.ndarray:
    """page_ink of each of N images at once."""
    n = len(images)
    if n == 0:
        return np.zeros(0)
    threshold = np.maximum(otsu_levels(images), MIN_INK_LEVEL)
    return (np.asarray(images, dtype=np.float64).reshape(n, -1) > threshold[:, None]).mean(1)


def page_ink(img: np.ndarray) -> float:
    """Share of an image (light ink on dark, background removed) above Otsu's threshold."""
    return float((img > max(otsu(img), MIN_INK_LEVEL)).mean())


_RING = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))  # P2..P9: north, then clockwise


def _ring_codes(padded: np.ndarray) -> np.ndarray:
    """Each inner pixel's eight neighbours (P2..P9) as the bits 0..7 of a uint8; `padded`: N×(H+2)×(W+2)
    uint8 0/1 with a zero border."""
    h, w = padded.shape[1] - 2, padded.shape[2] - 2
    code = np.zeros((len(padded), h, w), np.uint8)
    for bit, (dy, dx) in enumerate(_RING):
        code |= padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] << bit
    return code


def _padded(b: np.ndarray) -> np.ndarray:
    return np.pad(np.asarray(b, dtype=np.uint8), ((0, 0), (1, 1), (1, 1)))


def _ring_tables() -> dict:
    """Per 8-bit neighbour code: its count, its 0→1 steps around the ring, and Zhang–Suen's removals."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    count = bits.sum(1)
    steps = ((bits == 0) & (np.roll(bits, -1, axis=1) == 1)).sum(1)
    p2, p4, p6, p8 = bits[:, 0], bits[:, 2], bits[:, 4], bits[:, 6]
    base = (count >= 2) & (count <= 6) & (steps == 1)
    return {"count": count.astype(np.uint8), "steps": steps.astype(np.uint8),
            "remove": (base & ~(p2 & p4 & p6).astype(bool) & ~(p4 & p6 & p8).astype(bool),
                       base & ~(p2 & p4 & p8).astype(bool) & ~(p2 & p6 & p8).astype(bool))}


_TABLES = _ring_tables()


def skeleton(ink: np.ndarray) -> np.ndarray:
    """Zhang–Suen thinning of N×H×W boolean ink, both sub-iterations until nothing changes (each image
    on its own: one that stopped changing is left out of the next passes)."""
    p = _padded(ink)
    active = np.arange(len(p))
    while len(active):
        changed = np.zeros(len(active), bool)
        for remove in _TABLES["remove"]:
            q = p[active]
            rm = q[:, 1:-1, 1:-1].astype(bool) & remove[_ring_codes(q)]
            hit = rm.any((1, 2))
            if hit.any():
                q[:, 1:-1, 1:-1] &= ~rm
                p[active] = q
                changed |= hit
        active = active[changed]
    return p[:, 1:-1, 1:-1].astype(bool)


def euler_number(ink: np.ndarray) -> np.ndarray:
    """Pieces minus holes of N×H×W boolean ink, 8-connected (Gray's bit quads, padded by one pixel)."""
    p = _padded(ink)
    a, b, c, d = p[:, :-1, :-1], p[:, :-1, 1:], p[:, 1:, :-1], p[:, 1:, 1:]
    s = a + b + c + d
    diagonal = (s == 2) & (a == d)
    return ((s == 1).sum((1, 2)) - (s == 3).sum((1, 2)) - 2 * diagonal.sum((1, 2))) // 4


def stroke_features(images_u8: np.ndarray) -> dict:
    """euler, endpoints and junctions of each 28×28 image's ink (float arrays, one value an image)."""
    ink = np.asarray(images_u8) > INK
    sk = skeleton(ink)
    code = _ring_codes(_padded(sk))
    return {"euler": euler_number(ink).astype(np.float64),
            "endpoints": (sk & (_TABLES["count"][code] == 1)).sum((1, 2)).astype(np.float64),
            "junctions": (sk & (_TABLES["steps"][code] >= 3)).sum((1, 2)).astype(np.float64)}


def image_features(images_u8: np.ndarray, page: np.ndarray | None = None) -> dict:
    """ink_fraction, thickness, page_ink and the stroke features of each 28×28 image (uint8 N×28×28);
    `page`: page_ink as predict measured it on the image it received (None: measured on the 28×28 images)."""
    ink = np.asarray(images_u8) > INK
    n = len(ink)
    frac = ink.reshape(n, -1).mean(1)
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    core = np.ones_like(ink)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            core &= padded[:, dy:dy + ink.shape[1], dx:dx + ink.shape[2]]
    n_ink = ink.reshape(n, -1).sum(1)
    thick = np.where(n_ink > 0, core.reshape(n, -1).sum(1) / np.maximum(n_ink, 1), 0.0)
    if page is None:
        page = pages_ink(images_u8)
    return {"ink_fraction": frac, "thickness": thick, "page_ink": np.asarray(page, dtype=np.float64),
            **stroke_features(images_u8)}


MAX_DISTANCE_CLASSES = 64  # past this the C×C logit model (C² numbers in the manifest and the ONNX metadata)
# is left out: a 1000-class rule would be 2 million numbers; such a rule judges by the energy alone


def rule_classes(rule: dict) -> int:
    """The class count a rule was made for: its logit model's, or (a rule without one) its `classes`."""
    model = rule["logit_model"]
    return len(model["means"]) if "means" in model else int(model["classes"])


def has_image_checks(rule: dict) -> bool:
    """Whether a rule judges the image itself (MNIST-shaped digits: ink and strokes) besides the logits.
    A rule made for any other input (RGB, another size) judges by the logits alone."""
    return rule.get("image_checks", True) is not False


def rule_features(rule: dict, images_u8: np.ndarray, page: np.ndarray | None = None) -> dict:
    """The image features `rule` judges by (none for a logits-only rule): computed once, for `decide`."""
    return image_features(images_u8, page) if has_image_checks(rule) else {}


def logit_features(logits: np.ndarray, model: dict | None = None) -> dict:
    z = np.asarray(logits, dtype=np.float64)
    out = {"energy": _logsumexp(z)}
    if model is not None and "means" in model:
        means, prec = np.asarray(model["means"]), np.asarray(model["precision"])
        d = z - means[z.argmax(1)]
        out["logit_distance"] = np.einsum("ni,ij,nj->n", d, prec, d)
    return out


def calibrate(images_u8: np.ndarray, logits: np.ndarray, keep: float = 0.99, classes: tuple | None = None,
              preprocessing: str | None = None) -> dict:
    """The rule, from MNIST digits only (the training split at export): limits at quantiles of the
    digits' own features, sized so that about `keep` of them pass every check. Images of another shape
    than MNIST's grey 28×28 (another data set's) get a rule of the logits alone, its whole budget shared
    by the energy and the logit distance: ink and pen strokes mean nothing on a photo or a spectrogram."""
    z = np.asarray(logits, dtype=np.float64)
    digits = np.ndim(images_u8) == 3 and tuple(np.shape(images_u8)[1:]) == (28, 28)
    pred = z.argmax(1)
    c_n = z.shape[1]  # the classes: 10 on MNIST
    miss = 1.0 - keep
    if c_n > MAX_DISTANCE_CLASSES:
        energy = logit_features(z)["energy"]
        rule: dict[str, Any] = {"version": RULE_VERSION, "image_checks": False, "keep_target": keep,
                                "limits": {"energy_min": float(np.quantile(energy, miss))},
                                "logit_model": {"classes": c_n},
                                "calibration": {"images": int(len(z)), "split": "train"}}
        return _finish(rule, images_u8, z, classes, preprocessing)
    means = np.stack([z[pred == c].mean(0) if (pred == c).any() else z.mean(0) for c in range(c_n)])
    centred = z - means[pred]
    cov = centred.T @ centred / max(len(z) - c_n, 1) + 1e-6 * np.eye(c_n)
    model = {"means": means.round(6).tolist(), "precision": np.linalg.inv(cov).round(8).tolist()}
    if not digits:
        f = logit_features(z, model)
        limits: dict[str, Any] = {"energy_min": float(np.quantile(f["energy"], miss / 2)),
                                  "logit_distance_max": float(np.quantile(f["logit_distance"], 1 - miss / 2))}
        rule = {"version": RULE_VERSION, "image_checks": False, "keep_target": keep, "limits": limits,
                                "logit_model": model, "calibration": {"images": int(len(z)), "split": "train"}}
        return _finish(rule, images_u8, z, classes, preprocessing)
    f = {**logit_features(z, model), **image_features(images_u8)}
    q = {k: v * miss for k, v in BUDGET.items()}
    limits = {
        "energy_min": float(np.quantile(f["energy"], q["energy"])),
        "logit_distance_max": float(np.quantile(f["logit_distance"], 1 - q["logit_distance"])),
        "ink_fraction": [float(np.quantile(f["ink_fraction"], q["ink_fraction_low"])),
                         float(np.quantile(f["ink_fraction"], 1 - q["ink_fraction_high"]))],
        "thickness_max": float(np.quantile(f["thickness"], 1 - q["thickness"])),
        "page_ink_max": float(np.quantile(f["page_ink"], 1 - q["page_ink"])),
        "euler_min": float(np.quantile(f["euler"], q["euler"], method="lower")),
        "endpoints_max": float(np.quantile(f["endpoints"], 1 - q["endpoints"], method="higher")),
        "junctions_max": float(np.quantile(f["junctions"], 1 - q["junctions"], method="higher")),
    }
    rule = {"version": RULE_VERSION, "keep_target": keep, "limits": limits, "logit_model": model,
            "calibration": {"images": int(len(z)), "split": "train"}}
    return _finish(rule, images_u8, z, classes, preprocessing)


def _finish(rule: dict, images_u8: np.ndarray, z: np.ndarray, classes: tuple | None, preprocessing: str | None) -> dict:
    """The rule's measured keep on its own calibration images, and the names and preprocessing it carries."""
    rule["calibration"]["kept"] = float(decide(rule, images_u8, z)["accepted"].mean())
    if classes is not None and tuple(classes) != tuple(str(d) for d in range(10)):
        rule["classes"] = list(classes)  # the dataset's class names: predict speaks of them, not of digits
    if preprocessing is not None:
        rule["preprocessing"] = preprocessing  # how predict turns a picture into the model's input
    return rule


def decide(rule: dict, images_u8: np.ndarray, logits: np.ndarray, page: np.ndarray | None = None, *,
           features: dict | None = None) -> dict:
    """Per image: `accepted` (bool), `failed` (the checks it failed, by name) and its features.
    `features`: the images' `image_features`, when the same images are judged with several logits."""
    lim = rule["limits"]
    width, made_for = np.shape(logits)[-1], rule_classes(rule)
    if width != made_for:  # a rule from a file (manifest, model metadata) made for another model
        raise ToolkitError(f"the not-a-digit rule was made for {made_for} classes, but the model gives {width} "
                           "logits per image; re-export to make a rule for this model")
    image = has_image_checks(rule)
    f = {**logit_features(logits, rule["logit_model"]),
         **((features or image_features(images_u8, page)) if image else {})}
    checks = {"energy": f["energy"] >= lim["energy_min"]}
    if "logit_distance" in f:
        checks["logit_distance"] = f["logit_distance"] <= lim["logit_distance_max"]
    if image:
        checks.update({
            "ink_fraction": (f["ink_fraction"] >= lim["ink_fraction"][0]) & (f["ink_fraction"] <= lim["ink_fraction"][1]),
            "thickness": f["thickness"] <= lim["thickness_max"],
            "page_ink": f["page_ink"] <= lim["page_ink_max"],
        })
    if image and rule["version"] >= 2:  # the stroke checks (a version-1 rule's other keys are never read)
        checks.update(euler=f["euler"] >= lim["euler_min"], endpoints=f["endpoints"] <= lim["endpoints_max"],
                      junctions=f["junctions"] <= lim["junctions_max"])
    ok = np.ones(len(f["energy"]), dtype=bool)
    for v in checks.values():
        ok &= v
    failed = [[name for name, v in checks.items() if not v[i]] for i in range(len(ok))]
    return {"accepted": ok, "failed": failed, "features": f}


def explain(rule: dict, decision: dict, i: int) -> dict:
    """Image i's rejection in numbers: each failed check with its value and the limit it missed."""
    f, lim = decision["features"], rule["limits"]
    limits = {"energy": ("≥", lim["energy_min"]), "logit_distance": ("≤", lim.get("logit_distance_max")),
              "ink_fraction": ("in", lim.get("ink_fraction")), "thickness": ("≤", lim.get("thickness_max")),
              "page_ink": ("≤", lim.get("page_ink_max")), "euler": ("≥", lim.get("euler_min")),
              "endpoints": ("≤", lim.get("endpoints_max")), "junctions": ("≤", lim.get("junctions_max"))}
    return {"failed": [{"check": name, "value": round(float(f[name][i]), 4), "limit": limits[name][1],
                        "rule": limits[name][0]} for name in decision["failed"][i]]}


def check_rule(rule) -> dict:
    """A rule read from a manifest or model metadata (untrusted): its shape, or ValueError."""
    if not isinstance(rule, dict) or type(rule.get("version")) is not int or rule["version"] not in RULE_VERSIONS:
        raise ValueError(f"not a version {' or '.join(map(str, RULE_VERSIONS))} not-a-digit rule")
    lim, model = rule.get("limits"), rule.get("logit_model")
    if not isinstance(lim, dict) or not isinstance(model, dict):
        raise ValueError("its limits or logit model are missing")
    if rule.get("image_checks", True) not in (True, False):
        raise ValueError("its image_checks is neither true nor false")
    image = has_image_checks(rule)
    distance = "means" in model or "precision" in model or "classes" not in model
    scalars = ["energy_min", *(("logit_distance_max",) if distance else ()),
               *(("thickness_max", "page_ink_max") if image else ()),
               *(STROKE_LIMITS if image and rule["version"] >= 2 else ())]
    for key in scalars:  # a number, as export writes it: never a string, a list or a bool
        if not _number(lim.get(key)):
            raise ValueError(f"its limit {key} is {_kind(lim.get(key))}, not a number")
    ink = lim.get("ink_fraction") if image else [0, 1]
    if not (isinstance(ink, list) and len(ink) == 2 and all(_number(v) for v in ink) and ink[0] <= ink[1]):
        raise ValueError(f"its limit ink_fraction is {_kind(ink)}, not a [low, high] range of two numbers")
    try:
        vals = [float(lim[k]) for k in scalars] + [float(v) for v in ink]
        if distance:
            means, prec = np.asarray(model["means"], dtype=np.float64), np.asarray(model["precision"], dtype=np.float64)
            c_n = means.shape[0] if means.ndim == 2 else 0
        else:  # a rule for many classes: the energy alone
            c_n = model["classes"] if type(model["classes"]) is int and not image else 0
            means = prec = np.zeros((c_n, c_n))
    except (KeyError, TypeError, ValueError):
        raise ValueError("its limits or logit model are malformed") from None
    names = rule.get("classes")
    if names is not None and not (isinstance(names, list) and len(names) == c_n
                                  and all(isinstance(n, str) and 0 < len(n) <= 64 and n.isprintable() for n in names)):
        raise ValueError("its class names are not one printable name per class")
    if rule.get("preprocessing", "digit") not in ("digit", "plain", "resize"):
        raise ValueError("its preprocessing is none of digit, plain and resize")
    if not 2 <= c_n <= MAX_CLASSES or means.shape != (c_n, c_n) or prec.shape != (c_n, c_n) or \
            not np.isfinite(vals + [means.sum(), prec.sum()]).all():
        raise ValueError("its limits or logit model are malformed")
    return rule


def rule_words(classes) -> tuple[str, str, str]:
    """The rule's name, what it keeps and what it rejects, in the data set's language: MNIST's digits,
    or the C classes of any other data set."""
    classes = list(classes or (str(d) for d in range(10)))
    if classes == [str(d) for d in range(10)]:
        return "not-a-digit", "digits", "non-digits"
    return f"not-one-of-the-{len(classes)}-classes", "test images", "synthetic non-class images"


def class_names(rule: dict | None, n: int) -> tuple:
    """The class names a rule carries (a dataset other than MNIST's digits), else 0..n-1."""
    names = (rule or {}).get("classes")
    return tuple(names) if isinstance(names, list) and len(names) == n else tuple(str(k) for k in range(n))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v) -> str:
    return "missing" if v is None else f"a {type(v).__name__}" if not isinstance(v, list) else f"a list of {len(v)}"


def non_digits(n: int = 400, seed: int = 0, shape: tuple = (28, 28)) -> dict:
    """Synthetic non-digit images (uint8, light on dark, as predict's preprocessing would hand them to
    the model), by kind: uniform noise, Gaussian noise, filled blobs, random lines, textures. `shape`: one
    image's, H×W (MNIST's 28×28 by default: the same images as ever) or H×W×C (each channel its own
    noise; the shapes in a random colour). For measuring, never for calibrating."""
    rng = np.random.default_rng(seed)
    k = n // 5
    h, w = shape[0], shape[1]
    yy, xx = np.mgrid[:h, :w]
    uniform = rng.integers(0, 256, (k, *shape))
    gauss = np.clip(rng.normal(128, 60, (k, *shape)), 0, 255)
    sy, sx = h / 28, w / 28  # the 28×28 recipe, scaled to the image
    blobs = np.zeros((k, h, w))
    for i in range(k):  # a filled ellipse or rectangle in the 20×20 box
        cy, cx, ry, rx = 14 + rng.uniform(-2, 2), 14 + rng.uniform(-2, 2), rng.uniform(6, 10), rng.uniform(6, 10)
        cy, cx, ry, rx = cy * sy, cx * sx, ry * sy, rx * sx
        blobs[i] = 255 * ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) if i % 2 else
                          ((abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)))
    lines = np.zeros((k, h, w))
    for i in range(k):  # 4-8 random strokes: a scribble
        for _ in range(rng.integers(4, 9)):
            y0, x0, y1, x1 = rng.uniform(4, 24, 4)
            t = np.linspace(0, 1, 60 if (h, w) == (28, 28) else max(60, 2 * max(h, w)))
            ys = np.rint((y0 + (y1 - y0) * t) * sy).astype(int)
            xs = np.rint((x0 + (x1 - x0) * t) * sx).astype(int)
            for dy in (0, 1):
                lines[i, np.clip(ys + dy, 0, h - 1), np.clip(xs, 0, w - 1)] = 255
    fx, fy = rng.uniform(0.5, 2, (k, 1, 1)), rng.uniform(0.5, 2, (k, 1, 1))
    texture = 255 * (np.sin(xx[None] * fx / sx + yy[None] * fy / sy) > 0)
    kinds = {"uniform noise": uniform, "gaussian noise": gauss, "filled blobs": blobs, "scribbles": lines,
             "textures": texture}
    if len(shape) == 3:  # the grey patterns in a random colour each (the noises are per channel already)
        tint = rng.uniform(0.3, 1.0, (k, 1, 1, shape[2]))
        for name in ("filled blobs", "scribbles", "textures"):
            kinds[name] = kinds[name][..., None] * tint
    return {name: np.asarray(v).astype(np.uint8) for name, v in kinds.items()}


def non_digit_images(shape: tuple = (28, 28)) -> np.ndarray:
    """All of `non_digits()` of one image `shape` as one uint8 array, in a fixed order (the reference
    stores the float model's logits on exactly these)."""
    return np.concatenate(list(non_digits(shape=shape).values()))
