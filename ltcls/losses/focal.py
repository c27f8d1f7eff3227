"""Softmax focal loss (Lin et al., ICCV 2017, Eq. 5, in its multi-class softmax form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ltcls.losses.base import LOSSES, LTLoss


def softmax_focal(logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample focal loss ``-(1 - p_t)**gamma * log p_t`` with ``p_t = softmax(z)[y]``.

    ``1 - p_t`` is computed as ``-expm1(log p_t)``, accurate when ``p_t`` is close to 1.
    """
    log_pt = -F.cross_entropy(logits, labels, reduction="none")
    if gamma == 0:
        return -log_pt
    return -(-torch.expm1(log_pt)).pow(gamma) * log_pt


@LOSSES.register("focal")
class FocalLoss(LTLoss):
    """Mean softmax focal loss ``-alpha * (1 - p_t)**gamma * log p_t`` (Lin et al., 2017).

    ``gamma`` = 2 as in the paper; ``alpha`` is the paper's balancing factor, which in the softmax
    form is one constant for every sample (``None`` means 1).
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if alpha is not None and alpha <= 0:
            raise ValueError(f"alpha must be positive or None, got {alpha}")
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = softmax_focal(logits, labels, self.gamma).mean()
        return loss if self.alpha is None else self.alpha * loss

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"
