"""Softmax cross-entropy, optionally label-smoothed (Szegedy et al., 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ltcls.losses.base import LOSSES, LTLoss


@LOSSES.register("ce")
class CrossEntropyLoss(LTLoss):
    """Mean softmax cross-entropy; ``label_smoothing`` in [0, 1) spreads that mass uniformly."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
