"""Top-1 accuracy overall, per class, and over many / medium / few-shot class groups.

Groups follow Kang et al. (ICLR 2020): many = more than ``many_threshold`` (100) training images,
few = fewer than ``few_threshold`` (20), medium = the rest. A group's accuracy is the mean of its
classes' accuracies (classes without test samples are left out), as in classifier-balancing's
``shot_acc``; overall is the plain top-1 over all test samples. Calibration (ECE, NLL), the confusion
matrix and a per-class table (precision, recall) for evaluating a trained model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import precision_recall_fscore_support

from ltcls.results import GROUPS, Accuracy

__all__ = ["GROUPS", "Accuracy", "accuracy_report", "calibration_report", "confusion_matrix", "per_class_table",
           "shot_groups"]


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
                    few_threshold: int = 20) -> Accuracy:
    """Overall / many / medium / few top-1 (percent), per-class accuracy and the size of every group.

    ``mean_per_class`` is the class-balanced accuracy (equal to ``overall`` on a balanced split). A
    group with no class (or no tested class) reports ``None``.
    """
    counts = np.asarray(class_counts)
    per_class = per_class_accuracy(preds, labels, len(counts))
    groups = shot_groups(counts, many_threshold, few_threshold)
    overall = float(100.0 * np.mean(np.asarray(preds) == np.asarray(labels))) if len(labels) else None
    means = {g: _mean(per_class[groups == g]) for g in GROUPS}
    return Accuracy(overall=overall, mean_per_class=_mean(per_class), many=means["many"], medium=means["medium"],
                    few=means["few"], per_class=tuple(None if np.isnan(a) else float(a) for a in per_class),
                    class_counts=tuple(int(c) for c in counts),
                    group_sizes={g: int((groups == g).sum()) for g in GROUPS},
                    thresholds={"many": f">{many_threshold}", "few": f"<{few_threshold}"})


# ----------------------------------------------------------------------------------------- calibration


def _ece(confidence: np.ndarray, correct: np.ndarray, edges: np.ndarray) -> float | None:
    """Expected calibration error (percent) of the samples given; ``None`` for no sample."""
    if confidence.size == 0:
        return None
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, len(edges) - 2)
    gap = 0.0
    for b in np.unique(which):
        sel = which == b
        gap += sel.sum() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(100.0 * gap / confidence.size)


def calibration_report(probs: np.ndarray, labels: np.ndarray, class_counts: Sequence[int], many_threshold: int = 100,
                       few_threshold: int = 20, bins: int = 15) -> dict:
    """Expected calibration error and negative log-likelihood of class probabilities ``probs`` (N, C).

    ``ece``: Guo et al. (ICML 2017): the confidence (top probability) of each sample falls into one of
    ``bins`` equal-width bins ``(lo, hi]`` of [0, 1] (0 into the first); ECE = sum over bins of
    ``|bin| / N * |accuracy(bin) - mean confidence(bin)|``, in percent. ``ece_many`` / ``ece_medium`` /
    ``ece_few``: the same over the test samples whose true class is in that shot group (``None`` if none).
    ``nll``: mean ``-log p[label]`` (p clipped at 1e-12). ``bins``: per bin ``lower``, ``upper``, ``count``
    and (``None`` when empty) ``accuracy`` / ``confidence`` in percent, for a reliability diagram.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    counts = np.asarray(class_counts)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0] or probs.shape[1] != counts.shape[0]:
        raise ValueError(f"expected probs (N, C), labels (N,) and class_counts (C,), got {probs.shape}, "
                         f"{labels.shape} and {counts.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    confidence = probs.max(axis=1) if len(labels) else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64) if len(labels) else np.zeros(0)
    groups = shot_groups(counts, many_threshold, few_threshold)
    sample_group = groups[labels]
    report: dict = {"ece": _ece(confidence, correct, edges)}
    for g in GROUPS:
        sel = sample_group == g
        report[f"ece_{g}"] = _ece(confidence[sel], correct[sel], edges)
    picked = probs[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
    report["nll"] = float(-np.log(np.clip(picked, 1e-12, None)).mean()) if len(labels) else None
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    report["bins"] = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        report["bins"].append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
                               "accuracy": float(100.0 * correct[sel].mean()) if n else None,
                               "confidence": float(100.0 * confidence[sel].mean()) if n else None})
    return report


# ----------------------------------------------------------------------------------------- per class


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class (scikit-learn's convention)."""
    return sk_confusion_matrix(np.asarray(labels), np.asarray(preds), labels=np.arange(num_classes))


def per_class_table(preds: np.ndarray, labels: np.ndarray, class_counts: Sequence[int],
                    class_names: Sequence[str] | None = None, many_threshold: int = 100,
                    few_threshold: int = 20) -> list[dict]:
    """One row per class: ``name``, ``train_count``, ``group``, ``test_count``, ``accuracy``, ``precision``,
    ``recall`` (percent).

    ``accuracy`` is the per-class top-1 of :func:`per_class_accuracy` (the same number as ``recall``, kept
    under the name the other reports use); ``None`` where undefined (no test sample; precision: never
    predicted). Precision and recall come from scikit-learn.
    """
    counts = np.asarray(class_counts)
    num_classes = len(counts)
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    preds, labels = np.asarray(preds), np.asarray(labels)
    precision, recall, _, support = precision_recall_fscore_support(
        labels, preds, labels=np.arange(num_classes), zero_division=np.nan)
    predicted = np.bincount(preds, minlength=num_classes) if len(preds) else np.zeros(num_classes, dtype=int)
    accuracy = per_class_accuracy(preds, labels, num_classes)
    groups = shot_groups(counts, many_threshold, few_threshold)

    def pct(value: float, defined: bool) -> float | None:
        return float(100.0 * value) if defined and not np.isnan(value) else None

    return [{"name": names[c], "train_count": int(counts[c]), "group": str(groups[c]), "test_count": int(support[c]),
             "accuracy": None if np.isnan(accuracy[c]) else float(accuracy[c]),
             "precision": pct(precision[c], predicted[c] > 0), "recall": pct(recall[c], support[c] > 0)}
            for c in range(num_classes)]
