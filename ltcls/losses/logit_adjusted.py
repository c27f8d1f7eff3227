"""Logit-adjusted loss and post-hoc logit adjustment (Menon et al., ICLR 2021, Eq. 9-10)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ltcls.losses.base import LOSSES, LTLoss, as_counts


def log_prior(class_counts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``log(n_j / sum(n))`` in float64, with counts clamped at 1 so an unseen class stays finite."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    return counts.clamp(min=1).log() - counts.sum().clamp(min=1).log()


def logit_adjust(logits: torch.Tensor, class_counts: Sequence[float] | torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit adjustment ``z - tau * log(prior)`` (Menon et al., Eq. 9) for balanced predictions.

    ``class_counts`` are the training counts (clamped at 1, see :func:`log_prior`).
    """
    prior = log_prior(class_counts).to(device=logits.device, dtype=logits.dtype)
    return logits - tau * prior


@LOSSES.register("logit_adjusted")
class LogitAdjustedLoss(LTLoss):
    """Logit-adjusted softmax cross-entropy: CE on ``z + tau * log(prior)`` (Menon et al., Eq. 10), tau = 1."""

    def __init__(self, tau: float = 1.0, num_classes: int | None = None,
                 class_counts: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        self.tau = tau
        self.register_buffer("log_prior", log_prior(as_counts(class_counts, num_classes)), persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.tau * self.log_prior.to(logits.dtype), labels)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
