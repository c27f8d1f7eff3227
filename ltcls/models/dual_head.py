"""Dual-head inference: how the scores of a stage-1 head and a stage-2 (calibrated) head combine (SimCal's
'sel' rule), for classification and detection alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def dual_head_select(scores_original: torch.Tensor, scores_calibrated: torch.Tensor,
                     class_counts: Sequence[int] | torch.Tensor, threshold: int) -> torch.Tensor:
    """SimCal's dual-head ('sel') inference (Wang et al., ECCV 2020).

    Classes with at most ``threshold`` training samples take the calibrated (second-stage) head's
    scores, every other class the original head's; scores are not renormalized. Column ``c`` of
    both inputs is class ``c``; ``class_counts`` has one entry per column.
    """
    if scores_original.shape != scores_calibrated.shape:
        raise ValueError(f"score shapes differ: {tuple(scores_original.shape)} vs {tuple(scores_calibrated.shape)}")
    counts = torch.as_tensor(class_counts, device=scores_original.device)
    if counts.shape != scores_original.shape[-1:]:
        raise ValueError(f"{counts.numel()} class counts for {scores_original.shape[-1]} score columns")
    return torch.where(counts <= threshold, scores_calibrated, scores_original)



def dual_head_average(scores_original: torch.Tensor, scores_calibrated: torch.Tensor,
                      weight: float = 0.5) -> torch.Tensor:
    """Score averaging ('avg'; the Seesaw LVIS challenge report): ``(1 - weight) * original + weight *
    calibrated`` for every class, ``weight`` 0.5 being the plain mean of the two heads' scores."""
    if scores_original.shape != scores_calibrated.shape:
        raise ValueError(f"score shapes differ: {tuple(scores_original.shape)} vs {tuple(scores_calibrated.shape)}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the averaging weight must be in [0, 1], got {weight}")
    return (1.0 - weight) * scores_original + weight * scores_calibrated


def dual_head_rule(combine: str, threshold: int | None) -> str | None:
    """The dual head a stage-2 config reports as its result: ``'sel'`` (``stage2.combine: sel`` with a threshold
    T), ``'avg'`` (``combine: avg``, with or without T), ``None`` (no dual head asked for: ``sel`` without T)."""
    if combine == "avg":
        return "avg"
    return "sel" if threshold is not None else None
