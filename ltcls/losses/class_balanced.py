"""Class-balanced loss (Cui et al., CVPR 2019): per-class weights from the effective number of samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ltcls.losses.base import LOSSES, LTLoss, as_counts
from ltcls.losses.focal import softmax_focal


def effective_number_weights(class_counts: Sequence[float] | torch.Tensor, beta: float) -> torch.Tensor:
    """Weights ``(1 - beta) / (1 - beta**n_j)`` normalized to sum to C (Cui et al., Eq. 4-5), float64.

    Counts are clamped at 1 so a class without samples gets the weight of a single sample instead of
    an infinite one. ``beta = 0`` gives all ones.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = torch.as_tensor(class_counts, dtype=torch.float64).clamp(min=1)
    weights = (1.0 - beta) / (1.0 - torch.pow(beta, n))
    return weights / weights.sum() * n.numel()


class _ClassBalanced(LTLoss):
    """Holds the effective-number weights (a non-persistent buffer: derived from the data)."""

    def __init__(self, beta: float, num_classes: int | None,
                 class_counts: Sequence[float] | torch.Tensor | None) -> None:
        super().__init__()
        self.beta = beta
        self.register_buffer("class_weights", effective_number_weights(as_counts(class_counts, num_classes), beta),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@LOSSES.register("class_balanced")
class ClassBalancedLoss(_ClassBalanced):
    """Class-balanced softmax cross-entropy: mean over samples of ``w[y] * CE`` (Cui et al., 2019).

    The reduction is the paper's (and its code's): a plain mean of the weighted per-sample losses, not
    ``F.cross_entropy(weight=w)``, which divides by the sum of the batch's weights instead.
    """

    def __init__(self, beta: float = 0.9999, num_classes: int | None = None,
                 class_counts: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(beta, num_classes, class_counts)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = self.class_weights.to(logits.dtype)[labels]
        return (w * F.cross_entropy(logits, labels, reduction="none")).mean()


@LOSSES.register("class_balanced_focal")
class ClassBalancedFocalLoss(_ClassBalanced):
    """Class-balanced softmax focal loss: mean over samples of ``w[y] * FL_gamma`` (Cui et al., 2019).

    The focal term is :func:`ltcls.losses.focal.softmax_focal` (Lin et al., 2017).
    """

    def __init__(self, beta: float = 0.9999, gamma: float = 1.0, num_classes: int | None = None,
                 class_counts: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(beta, num_classes, class_counts)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = self.class_weights.to(logits.dtype)[labels]
        return (w * softmax_focal(logits, labels, self.gamma)).mean()

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}"
