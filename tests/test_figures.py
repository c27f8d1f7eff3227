"""Evaluation figures: per-class bars, confusion matrix, reliability diagram, tau sweep; the per-class CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import Rectangle

from ltcls.metrics import calibration_report, per_class_table
from ltcls.reporting import (
    confusion_matrix_figure,
    per_class_figure,
    reliability_figure,
    tau_sweep_figure,
    write_per_class_csv,
)

COUNTS = np.array([3, 500, 40, 150, 8])  # sorted: 500 (b), 150 (d), 40 (c), 8 (e), 3 (a)
NAMES = ["a", "b", "c", "d", "e"]


def _bars(ax: plt.Axes) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_per_class_bars_have_gaps_zero_markers_and_names() -> None:
    values = np.array([10.0, 90.0, 0.0, 80.0, np.nan])
    fig = per_class_figure(values, COUNTS, "top-1", "t", class_names=NAMES)
    ax = fig.axes[0]
    bars = _bars(ax)
    assert len(bars) == 5
    xs = sorted((b.get_x(), b.get_x() + b.get_width()) for b in bars)
    assert all(right < nxt_left for (_, right), (nxt_left, _) in zip(xs, xs[1:]))  # a gap between neighbours
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "d", "c", "e", "a"]
    markers = {line.get_marker(): line.get_xydata().tolist() for line in ax.get_lines()}
    assert markers["^"] == [[2.0, 0.0]]  # class c (0%) at position 2
    assert markers["x"] == [[3.0, 0.0]]  # class e has no value
    plt.close(fig)


def test_per_class_without_names_above_50_classes() -> None:
    counts = np.arange(60, 0, -1)
    fig = per_class_figure(np.full(60, 50.0), counts, "top-1", "t", class_names=[f"n{i}" for i in range(60)])
    assert not any(t.get_text().startswith("n") for t in fig.axes[0].get_xticklabels())
    plt.close(fig)


def test_confusion_matrix_sorted_by_training_count() -> None:
    cm = np.diag([1, 2, 3, 4, 5]).astype(float)
    cm[0, 1] = 1  # class a: one of two samples predicted as b
    fig = confusion_matrix_figure(cm, COUNTS, NAMES)
    ax = fig.axes[0]
    shown = ax.images[0].get_array()
    order = [1, 3, 2, 4, 0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [NAMES[i] for i in order]
    assert shown[4, 4] == pytest.approx(50.0) and shown[4, 0] == pytest.approx(50.0)  # row a, columns a and b
    assert shown[0, 0] == pytest.approx(100.0)
    plt.close(fig)


def test_confusion_matrix_1000_classes_is_an_image_without_ticks() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 1000, 1000)
    fig = confusion_matrix_figure(np.eye(1000), counts, [str(i) for i in range(1000)])
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (1000, 1000)
    assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0
    plt.close(fig)
    with pytest.raises(ValueError, match="for 3 classes"):
        confusion_matrix_figure(np.eye(2), [1, 2, 3])


def test_reliability_figure_bars_are_bin_accuracies() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7]])
    r = calibration_report(probs, np.array([0, 1, 1]), [150, 150], bins=10)
    fig = reliability_figure(r["bins"], r["ece"])
    ax = fig.axes[0]
    acc_bars = [b for b in _bars(ax) if b.get_y() == 0]
    assert sorted((round(b.get_x()), round(b.get_height())) for b in acc_bars) == [(60, 100), (80, 50)]
    assert "ECE" in ax.get_title()
    plt.close(fig)


def test_tau_sweep_marks_chosen_tau_and_criterion() -> None:
    sweep = [{"tau": t, "overall": 50 + t, "mean_per_class": 40 + 10 * t - 8 * t * t, "many": 60 - t,
              "medium": 45.0, "few": 20 + 5 * t} for t in (0.0, 0.5, 1.0, 1.5)]
    fig = tau_sweep_figure(sweep, chosen_tau=0.5, criterion="mean_per_class", selected_on="val")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["mean_per_class (criterion)"].get_ydata().tolist() == [r["mean_per_class"] for r in sweep]
    star = next(v for k, v in lines.items() if k.startswith("chosen tau = 0.5"))
    assert star.get_xydata().tolist() == [[0.5, 43.0]]
    assert any(list(line.get_xdata()) == [0.5, 0.5] for line in ax.get_lines())  # the vertical line
    assert {"overall", "many", "medium", "few"} <= set(lines)
    plt.close(fig)
    with pytest.raises(KeyError, match="'top5'"):
        tau_sweep_figure(sweep, 0.5, "top5")


def test_write_per_class_csv(tmp_path: Path) -> None:
    rows = per_class_table(np.array([0, 1, 1]), np.array([0, 1, 2]), [150, 50, 5], ["x", "y", "z"])
    write_per_class_csv(tmp_path / "per_class.csv", rows)
    with open(tmp_path / "per_class.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == ["name", "train_count", "group", "test_count", "accuracy", "precision", "recall"]
    assert read[1] == {"name": "y", "train_count": "50", "group": "medium", "test_count": "1",
                       "accuracy": "100.0000", "precision": "50.0000", "recall": "100.0000"}
    assert read[2]["precision"] == "" and read[2]["accuracy"] == "0.0000"
