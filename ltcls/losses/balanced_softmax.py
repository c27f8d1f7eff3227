"""Balanced softmax (Ren et al., NeurIPS 2020, Eq. 4): cross-entropy on logits plus the log prior."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ltcls.losses.base import LOSSES, LTLoss, as_counts
from ltcls.losses.logit_adjusted import log_prior


@LOSSES.register("balanced_softmax")
class BalancedSoftmaxLoss(LTLoss):
    """Mean cross-entropy on ``z + log(n_j / n)``: trains for the balanced test distribution.

    Counts are clamped at 1 (a class without samples would get ``-inf``).
    """

    def __init__(self, num_classes: int | None = None,
                 class_counts: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("log_prior", log_prior(as_counts(class_counts, num_classes)), persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.log_prior.to(logits.dtype), labels)
