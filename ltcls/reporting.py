"""TensorBoard scalars, shot-group accuracies and the per-class long-tail figures of a run."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from ltcls.io import AtomicFiles, atomic_write_bytes, atomic_write_text  # noqa: E402
from ltcls.metrics import GROUPS, shot_groups  # noqa: E402
from ltcls.results import EvalReport  # noqa: E402
from ltcls.rundir import RunDir  # noqa: E402

_GROUP_COLORS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}

#: Up to this many classes, figures label classes by name; above it a class is a pixel / bar without a tick.
MAX_NAMED_CLASSES = 50


def classifier_weight_norms(classifier: nn.Module) -> np.ndarray | None:
    """L2 norm of each class's weight vector (the classic picture of a head biased to frequent classes)."""
    weight = getattr(classifier, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return None
    return weight.detach().float().norm(dim=1).cpu().numpy()


def per_class_figure(values: np.ndarray, class_counts: np.ndarray, ylabel: str, title: str,
                     many_threshold: int = 100, few_threshold: int = 20,
                     class_names: Sequence[str] | None = None) -> plt.Figure:
    """Bars of ``values`` per class, classes sorted by training count (head left), on a count curve.

    Bars are narrower than their slot, so neighbouring classes of one group stay apart; a class at 0 gets a
    small marker on the axis (a bar of height 0 is invisible) and a class without a value (NaN: no test
    sample) a grey cross. With ``class_names`` and at most :data:`MAX_NAMED_CLASSES` classes the x axis is
    labelled with the names.
    """
    counts = np.asarray(class_counts)
    order = np.argsort(-counts, kind="stable")
    vals = np.asarray(values, dtype=float)[order]
    groups = shot_groups(counts, many_threshold, few_threshold)[order]
    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, 0.08 * len(counts) + 4)), 4))
    x = np.arange(len(counts))
    for g in GROUPS:
        sel = groups == g
        if sel.any():
            ax.bar(x[sel], np.nan_to_num(vals[sel]), width=0.8, color=_GROUP_COLORS[g], linewidth=0,
                   label=f"{g} ({sel.sum()})")
            zero = sel & (vals == 0)
            if zero.any():
                ax.plot(x[zero], np.zeros(zero.sum()), linestyle="none", marker="^", markersize=7,
                        color=_GROUP_COLORS[g], markeredgecolor="black", markeredgewidth=0.5, clip_on=False,
                        zorder=3)
    missing = np.isnan(vals)
    if missing.any():
        ax.plot(x[missing], np.zeros(missing.sum()), linestyle="none", marker="x", markersize=6, color="grey",
                clip_on=False, zorder=3, label=f"no value ({missing.sum()})")
    ax.set_xlim(-0.6, len(counts) - 0.4)
    ax.set_ylim(bottom=0)
    if class_names is not None and len(counts) <= MAX_NAMED_CLASSES:
        ax.set_xticks(x, [str(class_names[i]) for i in order], rotation=90, fontsize=7)
    ax.set_xlabel("class (sorted by training images)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    ax2 = ax.twinx()
    ax2.plot(x, counts[order], color="black", linewidth=1)
    ax2.set_yscale("log")
    ax2.set_ylabel("training images (log)")
    fig.tight_layout()
    return fig


class Reporter:
    """Writes a run's TensorBoard events (``DIR/tb``), ``metrics.json`` and per-class figures.

    ``prefix`` (e.g. ``'stage2/'``) is put in front of every tag so that several stages of one
    run sit side by side in TensorBoard. Only the main process should build one.
    """

    def __init__(self, run_dir: RunDir, prefix: str = "", purge_step: int | None = None) -> None:
        """``purge_step`` (on ``--resume``: the checkpoint's step + 1): TensorBoard drops the points an earlier
        writer logged at that step or later, so the epochs a resumed run repeats are not drawn twice."""
        self.work_dir = run_dir.path
        self.prefix = prefix
        self.writer = SummaryWriter(log_dir=str(run_dir.tensorboard_dir), purge_step=purge_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(self.prefix + tag, value, step)

    def config(self, text: str) -> None:
        self.writer.add_text(self.prefix + "config", "```yaml\n" + text + "\n```", 0)

    def evaluation(self, report: EvalReport, step: int, classifier: nn.Module | None = None,
                   many_threshold: int = 100, few_threshold: int = 20, tag: str = "acc") -> None:
        """Scalars ``acc/overall|many|medium|few`` and the per-class accuracy / weight-norm figures (classes
        named on the x axis by the report's class names where there are at most :data:`MAX_NAMED_CLASSES`)."""
        acc = report.accuracy
        if acc is None:
            return
        for key in ("overall", *GROUPS):
            if report.metric(key) is not None:
                self.scalar(f"{tag}/{key}", report.metric(key), step)
        counts = np.asarray(acc.class_counts)
        class_names = report.class_names or None
        per_class = np.array([np.nan if a is None else a for a in acc.per_class], dtype=float)
        fig = per_class_figure(per_class, counts, "top-1 accuracy (%)", f"per-class accuracy ({report.split})",
                               many_threshold, few_threshold, class_names)
        self.figure(f"{tag}/per_class_accuracy", fig, step)
        norms = classifier_weight_norms(classifier) if classifier is not None else None
        if norms is not None and len(norms) == len(counts):
            fig = per_class_figure(norms, counts, "classifier weight norm", "classifier weight norm per class",
                                   many_threshold, few_threshold, class_names)
            self.figure("classifier/weight_norm", fig, step)

    def figure(self, tag: str, fig: plt.Figure, step: int) -> None:
        """Save ``fig`` as RUN_DIR/<prefix_tag>.png (atomically: :func:`save_figure`) and log it to TensorBoard
        (the figure is closed)."""
        name = (self.prefix + tag).replace("/", "_") + ".png"
        try:
            save_figure(self.work_dir / name, fig, close=False)
        except BaseException:
            plt.close(fig)
            raise
        self.writer.add_figure(self.prefix + tag, fig, step, close=True)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_json(path: str | Path, data: Mapping[str, Any], files: AtomicFiles | None = None) -> None:
    """Write json atomically (:func:`ltcls.io.atomic_write_text`), so a crash never leaves half a file; with
    ``files``, as one file of that set (renamed when the set is complete)."""
    _write_text(path, json.dumps(data, indent=2) + "\n", files)


def _write_text(path: str | Path, text: str, files: AtomicFiles | None) -> None:
    if files is not None:
        files.write_text(path, text)
    else:
        atomic_write_text(path, text)


def figure_png(fig: plt.Figure, dpi: int = 100) -> bytes:
    """``fig`` rendered as PNG bytes (in memory: nothing is written)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(path: str | Path, fig: plt.Figure, files: AtomicFiles | None = None, close: bool = True) -> None:
    """Save ``fig`` as a PNG file, atomically (rendered in memory, then :func:`ltcls.io.atomic_write_bytes`; with
    ``files``, as one file of that set): a full disk or a kill never leaves a partial or empty image, and the
    previous one survives. ``close`` closes the figure (also when the write fails)."""
    try:
        png = figure_png(fig)
    finally:
        if close:
            plt.close(fig)
    if files is not None:
        files.write_bytes(path, png)
    else:
        atomic_write_bytes(path, png)


# ----------------------------------------------------------------------------------------- evaluation figures


def reliability_figure(bins: Sequence[Mapping[str, Any]], ece: float | None = None,
                       title: str = "reliability diagram") -> plt.Figure:
    """Accuracy per confidence bin against the diagonal (perfect calibration), with the bins' sample counts
    below. ``bins`` as :func:`ltcls.metrics.calibration_report` gives them (percent)."""
    lower = np.array([b["lower"] for b in bins]) * 100
    width = np.array([b["upper"] - b["lower"] for b in bins]) * 100
    acc = np.array([np.nan if b["accuracy"] is None else b["accuracy"] for b in bins], dtype=float)
    conf = np.array([np.nan if b["confidence"] is None else b["confidence"] for b in bins], dtype=float)
    count = np.array([b["count"] for b in bins])
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = count > 0
    ax.bar(lower[full], acc[full], width=width[full], align="edge", color="tab:blue", edgecolor="white",
           label="accuracy")
    ax.bar(lower[full], conf[full] - acc[full], bottom=acc[full], width=width[full], align="edge",
           color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap to mean confidence")
    ax.plot([0, 100], [0, 100], color="black", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title + (f" (ECE {ece:.2f}%)" if ece is not None else ""))
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(lower, count, width=width, align="edge", color="grey", edgecolor="white")
    axc.set_yscale("log" if count.max(initial=0) > 0 else "linear")
    axc.set_xlabel("confidence (%)")
    axc.set_ylabel("samples")
    fig.tight_layout()
    return fig


def confusion_matrix_figure(cm: np.ndarray, class_counts: Sequence[int], class_names: Sequence[str] | None = None,
                            many_threshold: int = 100, few_threshold: int = 20,
                            title: str = "confusion matrix") -> plt.Figure:
    """Row-normalized confusion matrix (row: true class, share of its test samples per predicted class),
    classes sorted by training count (head first) on both axes.

    Up to :data:`MAX_NAMED_CLASSES` classes the axes name the classes (and up to 15 each cell shows its
    percentage); above, the matrix is an image with the many / medium / few boundaries drawn as lines and no
    per-class ticks, so 1000 classes stay readable. Rows without test samples stay empty (white).
    """
    cm = np.asarray(cm, dtype=float)
    counts = np.asarray(class_counts)
    n = len(counts)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {n} classes (expected ({n}, {n}))")
    order = np.argsort(-counts, kind="stable")
    cm = cm[np.ix_(order, order)]
    totals = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, 100.0 * cm / np.maximum(totals, 1), np.nan)
    named = class_names is not None and n <= MAX_NAMED_CLASSES
    size = 6.0 if n <= 10 else (9.0 if n <= MAX_NAMED_CLASSES else 8.0)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100, interpolation="nearest" if n <= 200 else "antialiased")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's test samples (%)")
    if named:
        labels = [str(class_names[i]) for i in order]
        ax.set_xticks(np.arange(n), labels, rotation=90, fontsize=7 if n > 15 else 9)
        ax.set_yticks(np.arange(n), labels, fontsize=7 if n > 15 else 9)
    elif n > MAX_NAMED_CLASSES:
        ax.set_xticks([])
        ax.set_yticks([])
    if n <= 15:
        for i, j in zip(*np.nonzero(cm)):
            ax.text(j, i, f"{share[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 50 else "black")
    groups = shot_groups(counts, many_threshold, few_threshold)[order]
    for b in np.flatnonzero(groups[1:] != groups[:-1]):
        for line in (ax.axhline, ax.axvline):
            line(b + 0.5, color="tab:red", linewidth=0.8)
    ax.set_xlabel("predicted class (sorted by training images)")
    ax.set_ylabel("true class (sorted by training images)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def tau_sweep_figure(sweep: Sequence[Mapping[str, Any]], chosen_tau: float, criterion: str = "mean_per_class",
                     selected_on: str = "val") -> plt.Figure:
    """Top-1 against tau for ``criterion`` (the key tau was chosen on, drawn bold) and overall / many /
    medium / few, with the chosen tau marked by a vertical line and a point on the criterion curve."""
    taus = np.array([r["tau"] for r in sweep], dtype=float)
    if criterion not in sweep[0]:
        raise KeyError(f"criterion {criterion!r} is not a key of the sweep rows (keys: {', '.join(sweep[0])})")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    styles = {"overall": "tab:green", **_GROUP_COLORS}
    for key in ("overall", *GROUPS):
        if key != criterion and key in sweep[0] and all(r[key] is not None for r in sweep):
            ax.plot(taus, [r[key] for r in sweep], marker="o", markersize=3, linewidth=1, color=styles[key],
                    label=key)
    crit = np.array([np.nan if r[criterion] is None else r[criterion] for r in sweep], dtype=float)
    ax.plot(taus, crit, marker="o", markersize=4, linewidth=2.5, color="black", label=f"{criterion} (criterion)")
    ax.axvline(chosen_tau, color="black", linestyle="--", linewidth=1)
    at = int(np.argmin(np.abs(taus - chosen_tau)))
    ax.plot([taus[at]], [crit[at]], marker="*", markersize=14, color="gold", markeredgecolor="black", zorder=5,
            label=f"chosen tau = {chosen_tau:g} ({crit[at]:.2f})")
    ax.set_xlabel("tau")
    ax.set_ylabel(f"top-1 on {selected_on} (%)")
    ax.set_title(f"tau-norm sweep: tau chosen on {selected_on} by {criterion}")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


PER_CLASS_COLUMNS = ("name", "train_count", "group", "test_count", "accuracy", "precision", "recall")


def write_per_class_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], files: AtomicFiles | None = None
                        ) -> None:
    """Write :func:`ltcls.metrics.per_class_table` rows as CSV (undefined values as empty cells, percentages
    with 4 decimals), atomically (with ``files``: as one file of that set)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=PER_CLASS_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else (f"{row[k]:.4f}" if isinstance(row[k], float) else row[k])
                         for k in PER_CLASS_COLUMNS})
    _write_text(path, text.getvalue(), files)
