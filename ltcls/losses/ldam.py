"""LDAM loss with deferred re-weighting, LDAM-DRW (Cao et al., NeurIPS 2019; kaidic/LDAM-DRW)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ltcls.losses.base import LOSSES, LTLoss, as_counts
from ltcls.losses.class_balanced import effective_number_weights


@LOSSES.register("ldam")
class LDAMLoss(LTLoss):
    """Label-distribution-aware margins ``m_j ∝ n_j**(-1/4)`` (largest = ``max_m``), logits scaled by ``s``.

    Loss = ``CE(s * (z - m_y * onehot), y)`` (Cao et al., Eq. 13; the reference scales every logit by s).
    DRW: from epoch ``drw_epoch`` on (0-based, via ``set_epoch``; the reference uses 160 of 200) the
    cross-entropy is weighted by the effective-number weights with ``beta`` (Cui et al., 2019) as
    ``F.cross_entropy(weight=w)``, i.e. divided by the batch's summed weights, as the reference does.
    ``drw_epoch=None`` never re-weights (plain LDAM). Counts are clamped at 1 for the margins.
    """

    def __init__(self, max_m: float = 0.5, s: float = 30.0, drw_epoch: int | None = 160, beta: float = 0.9999,
                 num_classes: int | None = None, class_counts: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        if max_m <= 0 or s <= 0:
            raise ValueError(f"max_m and s must be positive, got max_m={max_m}, s={s}")
        if drw_epoch is not None and drw_epoch < 0:
            raise ValueError(f"drw_epoch must be >= 0 or None, got {drw_epoch}")
        counts = as_counts(class_counts, num_classes)
        margins = counts.double().clamp(min=1).pow(-0.25)
        self.register_buffer("margins", margins * (max_m / margins.max()), persistent=False)
        self.register_buffer("drw_weights", effective_number_weights(counts, beta), persistent=False)
        self.max_m, self.s, self.drw_epoch, self.beta = max_m, s, drw_epoch, beta
        self.drw_active = False

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Switch the class-balanced weights on at ``drw_epoch`` (and off before it, e.g. on resume)."""
        self.drw_active = self.drw_epoch is not None and epoch >= self.drw_epoch

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.margins.to(logits.dtype)[labels]
        z = logits.scatter_add(1, labels[:, None], -m[:, None])
        weight = self.drw_weights.to(logits.dtype) if self.drw_active else None
        return F.cross_entropy(self.s * z, labels, weight=weight)

    def extra_repr(self) -> str:
        return f"max_m={self.max_m}, s={self.s}, drw_epoch={self.drw_epoch}, beta={self.beta}"
