"""TensorBoard scalars, shot-group accuracies and the per-class long-tail figures of a run."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from ltcls.metrics import GROUPS, shot_groups  # noqa: E402

_GROUP_COLORS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}


def classifier_weight_norms(classifier: nn.Module) -> np.ndarray | None:
    """L2 norm of each class's weight vector (the classic picture of a head biased to frequent classes)."""
    weight = getattr(classifier, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return None
    return weight.detach().float().norm(dim=1).cpu().numpy()


def per_class_figure(values: np.ndarray, class_counts: np.ndarray, ylabel: str, title: str,
                     many_threshold: int = 100, few_threshold: int = 20) -> plt.Figure:
    """Bars of ``values`` per class, classes sorted by training count (head left), on a count curve."""
    counts = np.asarray(class_counts)
    order = np.argsort(-counts, kind="stable")
    vals = np.asarray(values, dtype=float)[order]
    groups = shot_groups(counts, many_threshold, few_threshold)[order]
    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, 0.08 * len(counts) + 4)), 4))
    x = np.arange(len(counts))
    for g in GROUPS:
        sel = groups == g
        if sel.any():
            ax.bar(x[sel], np.nan_to_num(vals[sel]), width=1.0, color=_GROUP_COLORS[g], label=f"{g} ({sel.sum()})")
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

    def __init__(self, work_dir: str | Path, prefix: str = "") -> None:
        self.work_dir = Path(work_dir)
        self.prefix = prefix
        self.writer = SummaryWriter(log_dir=str(self.work_dir / "tb"))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(self.prefix + tag, value, step)

    def config(self, text: str) -> None:
        self.writer.add_text(self.prefix + "config", "```yaml\n" + text + "\n```", 0)

    def evaluation(self, report: Mapping[str, Any], step: int, classifier: nn.Module | None = None,
                   many_threshold: int = 100, few_threshold: int = 20, tag: str = "acc") -> None:
        """Scalars ``acc/overall|many|medium|few`` and the per-class accuracy / weight-norm figures."""
        for key in ("overall", *GROUPS):
            if report.get(key) is not None:
                self.scalar(f"{tag}/{key}", report[key], step)
        counts = np.asarray(report["class_counts"])
        per_class = np.array([np.nan if a is None else a for a in report["per_class"]], dtype=float)
        fig = per_class_figure(per_class, counts, "top-1 accuracy (%)", f"per-class accuracy ({report.get('split')})",
                               many_threshold, few_threshold)
        self.figure(f"{tag}/per_class_accuracy", fig, step)
        norms = classifier_weight_norms(classifier) if classifier is not None else None
        if norms is not None and len(norms) == len(counts):
            fig = per_class_figure(norms, counts, "classifier weight norm", "classifier weight norm per class",
                                   many_threshold, few_threshold)
            self.figure("classifier/weight_norm", fig, step)

    def figure(self, tag: str, fig: plt.Figure, step: int) -> None:
        """Save ``fig`` as RUN_DIR/<prefix_tag>.png and log it to TensorBoard (the figure is closed)."""
        name = (self.prefix + tag).replace("/", "_") + ".png"
        fig.savefig(self.work_dir / name, dpi=100)
        self.writer.add_figure(self.prefix + tag, fig, step, close=True)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write json atomically (temporary file + rename), so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def tau_sweep_figure(sweep: list[dict[str, Any]], chosen_tau: float, criterion: str, selected_on: str) -> plt.Figure:
    """tau-norm's sweep: overall / many / medium / few and the selection ``criterion`` against tau, the chosen
    tau marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    taus = [r["tau"] for r in sweep]
    for k in ("overall", *GROUPS, criterion):
        if all(r.get(k) is not None for r in sweep):
            style = {"linestyle": "--", "color": "black"} if k == criterion else {}
            ax.plot(taus, [r[k] for r in sweep], marker="o", markersize=3, label=k, **style)
    ax.axvline(chosen_tau, color="gray", linestyle=":", label=f"chosen tau = {chosen_tau:g}")
    ax.set_xlabel("tau")
    ax.set_ylabel(f"top-1 on {selected_on} (%)")
    ax.set_title(f"tau-norm sweep (chosen by {criterion})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
