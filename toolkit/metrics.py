"""Classification metrics and paired comparisons, numpy only (the edge side uses them)."""

from __future__ import annotations

import numpy as np

from toolkit.contract import NUM_CLASSES


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """cm[true, predicted] counts."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def classification_metrics(labels: np.ndarray, preds: np.ndarray, num_classes: int | None = None) -> dict:
    """Accuracy, macro precision and macro recall (a class never predicted scores precision 0,
    as torchmetrics and scikit-learn do) and the confusion matrix (C×C: `num_classes`, else the
    highest label or prediction + 1, at least MNIST's 10)."""
    if num_classes is None:
        num_classes = max(NUM_CLASSES, int(np.max(labels, initial=0)) + 1, int(np.max(preds, initial=0)) + 1)
    cm = confusion_matrix(labels, preds, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    present = actual > 0  # macro over the classes that occur in the labels
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "confusion_matrix": cm.tolist(),
        "n": int(cm.sum()),
    }


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b vs c discordant pairs: 2·P(X ≤ min(b, c)),
    X ~ Binomial(b + c, 1/2), in exact integer arithmetic (no overflow at any n)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    term = tail = 1  # C(n, 0)
    for i in range(k):
        term = term * (n - i) // (i + 1)  # C(n, i + 1), exact
        tail += term
    return min(1.0, (2 * tail) / (1 << n))  # int / int: correctly rounded, 0.0 on underflow


def paired_accuracy_diff(
    labels: np.ndarray, preds: np.ndarray, ref_preds: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> dict:
    """Accuracy(preds) - accuracy(ref_preds) on the same images, with a 95% paired bootstrap
    interval (images resampled jointly) and the exact McNemar p-value."""
    labels = np.asarray(labels)
    a = np.asarray(preds) == labels
    r = np.asarray(ref_preds) == labels
    diff = a.astype(np.int8) - r.astype(np.int8)  # +1 fixed, -1 broken, 0 same
    n = len(diff)
    b = int((diff == -1).sum())  # ref right, candidate wrong
    c = int((diff == 1).sum())
    point = float(diff.mean()) if n else 0.0
    nz = np.flatnonzero(diff)
    if len(nz) == 0:
        lo = hi = 0.0
    else:
        # Only the discordant images move the difference: resampling counts of
        # them with a multinomial is exact and needs no N-sized draws.
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, [b / n, c / n, 1 - (b + c) / n], size=n_boot)
        boot = (counts[:, 1] - counts[:, 0]) / n
        lo, hi = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
    return {"diff": point, "ci95": [lo, hi], "broken": b, "fixed": c, "mcnemar_p": mcnemar_exact_p(b, c)}
