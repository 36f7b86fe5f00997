import numpy as np
import pytest

from toolkit.metrics import classification_metrics, confusion_matrix, mcnemar_exact_p, paired_accuracy_diff


def test_confusion_and_macro_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    m = classification_metrics(labels, preds, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision per class: 2/2, 1/2, 1/2 ; recall: 2/3, 1/2, 1/1
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)


def test_class_never_predicted_scores_zero_precision():
    m = classification_metrics(np.array([0, 1]), np.array([0, 0]), 2)
    assert m["macro_precision"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["macro_recall"] == pytest.approx((1.0 + 0.0) / 2)


def test_mcnemar_exact():
    assert mcnemar_exact_p(0, 0) == 1.0
    # b=0, c=6: two-sided 2 * (1/2)^6
    assert mcnemar_exact_p(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact_p(5, 5) == 1.0


def test_paired_interval():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 10000)
    ref = labels.copy()
    ref[:300] = (labels[:300] + 1) % 10  # reference wrong on 300
    cand = ref.copy()
    cand[:40] = labels[:40]  # candidate fixes 40 ...
    cand[5000:5010] = (labels[5000:5010] + 1) % 10  # ... and breaks 10
    d = paired_accuracy_diff(labels, cand, ref)
    assert d["fixed"] == 40 and d["broken"] == 10
    assert d["diff"] == pytest.approx(30 / 10000)
    lo, hi = d["ci95"]
    assert lo < d["diff"] < hi and lo > 0  # 40 vs 10 is a real improvement
    # about ±1.96·sqrt(50)/10000 around the point estimate
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(50) / 10000, rel=0.25)
    same = paired_accuracy_diff(labels, ref, ref)
    assert same["ci95"] == [0.0, 0.0] and same["mcnemar_p"] == 1.0
