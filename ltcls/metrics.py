"""Top-1 accuracy overall, per class, and over many / medium / few-shot class groups.

Groups follow Kang et al. (ICLR 2020): many = more than ``many_threshold`` (100) training images,
few = fewer than ``few_threshold`` (20), medium = the rest. A group's accuracy is the mean of its
classes' accuracies (classes without test samples are left out), as in classifier-balancing's
``shot_acc``; overall is the plain top-1 over all test samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GROUPS = ("many", "medium", "few")


def shot_groups(class_counts: Sequence[int], many_threshold: int = 100, few_threshold: int = 20) -> np.ndarray:
    """Group name of every class from its training count: ``'many'``, ``'medium'`` or ``'few'``."""
    if few_threshold > many_threshold:
        raise ValueError(f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold})")
    counts = np.asarray(class_counts)
    return np.where(counts > many_threshold, "many", np.where(counts < few_threshold, "few", "medium"))


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class in percent; NaN for a class with no test sample."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    total = np.bincount(labels, minlength=num_classes).astype(float)
    correct = np.bincount(labels[preds == labels], minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * correct / np.maximum(total, 1), np.nan)


def _mean(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None


def accuracy_report(preds: np.ndarray, labels: np.ndarray, class_counts: Sequence[int], many_threshold: int = 100,
                    few_threshold: int = 20) -> dict:
    """Overall / many / medium / few top-1 (percent), per-class accuracy and the group of every class.

    ``mean_per_class`` is the class-balanced accuracy (equal to ``overall`` on a balanced split). A
    group with no class (or no tested class) reports ``None``.
    """
    counts = np.asarray(class_counts)
    per_class = per_class_accuracy(preds, labels, len(counts))
    groups = shot_groups(counts, many_threshold, few_threshold)
    report = {"overall": float(100.0 * np.mean(np.asarray(preds) == np.asarray(labels))) if len(labels) else None,
              "mean_per_class": _mean(per_class)}
    for g in GROUPS:
        report[g] = _mean(per_class[groups == g])
    report["group_sizes"] = {g: int((groups == g).sum()) for g in GROUPS}
    report["thresholds"] = {"many": f">{many_threshold}", "few": f"<{few_threshold}"}
    report["per_class"] = [None if np.isnan(a) else float(a) for a in per_class]
    report["class_counts"] = [int(c) for c in counts]
    return report
