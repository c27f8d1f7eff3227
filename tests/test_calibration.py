"""Calibration (ECE, NLL), confusion matrix and the per-class table, against hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ltcls.metrics import calibration_report, confusion_matrix, per_class_table

# class 0 many (200 > 100), class 1 medium, class 2 few (5 < 20)
COUNTS = [200, 50, 5]
PROBS = np.array([[0.9, 0.05, 0.05],   # label 0, right, confidence 0.9
                  [0.9, 0.05, 0.05],   # label 1, wrong, confidence 0.9
                  [0.1, 0.7, 0.2],     # label 1, right, confidence 0.7
                  [0.7, 0.2, 0.1]])    # label 2, wrong, confidence 0.7
LABELS = np.array([0, 1, 1, 2])


def test_ece_hand_made_case() -> None:
    r = calibration_report(PROBS, LABELS, COUNTS, many_threshold=100, few_threshold=20, bins=15)
    # bin (0.867, 0.933]: 2 samples, accuracy 0.5, confidence 0.9; bin (0.667, 0.733]: 2, 0.5, 0.7
    # ECE = (2 * |0.5 - 0.9| + 2 * |0.5 - 0.7|) / 4 = 0.3
    assert r["ece"] == pytest.approx(30.0)
    assert r["ece_many"] == pytest.approx(10.0)   # one right sample at 0.9
    assert r["ece_medium"] == pytest.approx(60.0)  # (|0 - 0.9| + |1 - 0.7|) / 2, different bins
    assert r["ece_few"] == pytest.approx(70.0)    # one wrong sample at 0.7
    assert r["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.05) + math.log(0.7) + math.log(0.1)) / 4)
    assert len(r["bins"]) == 15 and sum(b["count"] for b in r["bins"]) == 4
    full = [b for b in r["bins"] if b["count"]]
    assert [(b["count"], b["accuracy"], b["confidence"]) for b in full] == [
        (2, pytest.approx(50.0), pytest.approx(70.0)), (2, pytest.approx(50.0), pytest.approx(90.0))]
    assert full[1]["lower"] == pytest.approx(13 / 15) and full[1]["upper"] == pytest.approx(14 / 15)


def test_one_bin_pools_before_averaging() -> None:
    """ECE is |accuracy - confidence| of a bin, not the mean of per-sample gaps: 8 of 10 right at 0.8 is 0."""
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    r = calibration_report(probs, labels, [150, 150], bins=15)
    assert r["ece"] == pytest.approx(0.0, abs=1e-9)
    assert r["ece_few"] is None and r["ece_medium"] is None  # no test sample of those groups


def test_edges_confidence_one_and_equal_width_bins() -> None:
    r = calibration_report(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([0, 1]), [150, 150], bins=2)
    # confidence 1.0 goes to the last bin (0.5, 1]; 0.5 to the first [0, 0.5] (argmax 0: wrong)
    assert [b["count"] for b in r["bins"]] == [1, 1]
    assert r["ece"] == pytest.approx(100 * (abs(0 - 0.5) + abs(1 - 1.0)) / 2)
    with pytest.raises(ValueError, match="probs"):
        calibration_report(PROBS, LABELS, [1, 2], bins=15)


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 4)
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = expected[1, 0] = expected[1, 1] = expected[2, 2] = expected[0, 2] = 1
    np.testing.assert_array_equal(cm, expected)


def test_per_class_table() -> None:
    preds = np.array([0, 0, 0, 1, 0, 0])
    labels = np.array([0, 0, 1, 1, 1, 2])
    rows = per_class_table(preds, labels, COUNTS, ["cat", "dog", "emu"], many_threshold=100, few_threshold=20)
    assert [(r["name"], r["train_count"], r["group"], r["test_count"]) for r in rows] == [
        ("cat", 200, "many", 2), ("dog", 50, "medium", 3), ("emu", 5, "few", 1)]
    assert rows[0]["precision"] == pytest.approx(100 * 2 / 5) and rows[0]["recall"] == pytest.approx(100.0)
    assert rows[1]["precision"] == pytest.approx(100.0) and rows[1]["recall"] == pytest.approx(100 / 3)
    assert rows[1]["accuracy"] == pytest.approx(rows[1]["recall"])
    assert rows[2]["precision"] is None and rows[2]["recall"] == 0.0 and rows[2]["accuracy"] == 0.0
    unnamed = per_class_table(preds, labels, COUNTS + [7])  # a class without test samples
    assert unnamed[3]["name"] == "3" and unnamed[3]["accuracy"] is None and unnamed[3]["recall"] is None
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        per_class_table(preds, labels, COUNTS, ["a", "b"])
