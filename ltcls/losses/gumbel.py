"""Gumbel loss of GOL (Alexandridis et al., ECCV 2022, Eq. 7-9; kostas1515/GOL).

Each class is an independent binary problem with the Gumbel activation ``p = exp(-exp(-z))`` (the
CDF of the Gumbel distribution) instead of a sigmoid or a softmax. GOL clamps ``z`` to [-4, 10] before
the activation; in that range ``log p = -exp(-z)`` and ``log(1 - p) = log(-expm1(-exp(-z)))`` are
computed directly, which is exact where ``1 - exp(-exp(-z))`` would round (z near 10 in float32).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ltcls.losses.base import LOSSES, LTLoss

#: GOL clamps the logits to this range before the Gumbel activation when training.
GUMBEL_CLAMP = (-4.0, 10.0)

#: How the element-wise BCE is reduced: ``sum`` over all N x C entries divided by N (GOL's box head, the detection
#: form; kostas1515/GOL) or ``mean`` over all N x C entries (the first author's classification code,
#: kostas1515/iif ``classification/custom.py`` ``GombitLoss``, whose ``--reduction`` defaults to ``mean``; its
#: ``sum`` is also sum / N). At C classes ``sum`` is C times ``mean``: a C-times larger step at the same lr.
GumbelReduction = Literal["sum", "mean"]

#: The loss section of decoupled Gumbel re-training for classification (GOL Table 4; ``--stage2 gumbel``), as the
#: first author's classification code runs it (kostas1515/iif, e.g. commit 8cc3e99, ``classification/custom.py``
#: ``GombitLoss`` with ``train.py``'s default ``--reduction mean``): logits clamped to [-4, 10], the element-wise
#: BCE averaged over all N x C entries, no clamp of the reduced loss (``GombitLoss`` has none; GOL's clamp at 20
#: belongs to its mmdetection box head). The rest of the recipe (the stage-1 head fine-tuned, instance sampler,
#: warm-up, constant lr) is the ``gumbel`` preset in :mod:`ltcls.registries`.
DECOUPLED_GUMBEL: dict[str, object] = {"name": "gumbel", "reduction": "mean", "clamp_max": None}


def gumbel_probs(logits: torch.Tensor) -> torch.Tensor:
    """Gumbel class probabilities ``exp(-exp(-z))`` (independent per class, not summing to 1).

    No clamp, as GOL's ``get_activation`` at inference; detection post-processing must use these
    scores as they are rather than re-applying a softmax.
    """
    return torch.exp(-torch.exp(-logits))


def gumbel_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Element-wise binary cross-entropy of ``gumbel_probs(clamp(z, -4, 10))`` against ``target``.

    ``target`` has the shape of ``logits`` with values in [0, 1] (one-hot rows for classification).
    The clamp is ``torch.clamp``: zero gradient outside [-4, 10], as in GOL.
    """
    z = logits.clamp(*GUMBEL_CLAMP)
    e = torch.exp(-z)  # -log p
    neg_log_1mp = -torch.log(-torch.expm1(-e))  # -log(1 - p)
    target = target.to(z.dtype)
    return target * e + (1 - target) * neg_log_1mp


class GumbelActivationLoss(LTLoss):
    """Shared behaviour of losses on Gumbel probabilities: GOL's classifier init and Gumbel scores."""

    def init_classifier(self, classifier: nn.Module) -> None:
        """Weights constant 0.001 and bias -2.0 (GOL, Sec. 4; initial p ~ exp(-e^2) ~ 6e-4) for stable training."""
        weight = getattr(classifier, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{type(classifier).__name__} has no .weight tensor to initialize for a Gumbel loss")
        with torch.no_grad():
            weight.fill_(0.001)
            bias = getattr(classifier, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.fill_(-2.0)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Gumbel probabilities (no softmax): :func:`gumbel_probs`."""
        return gumbel_probs(logits)


@LOSSES.register("gumbel")
class GumbelLoss(GumbelActivationLoss):
    """GOL's Gumbel loss: the element-wise BCE of :func:`gumbel_bce` reduced by ``reduction``, then clamped.

    ``reduction``: ``sum`` (default; GOL's box head: summed over all N x C entries, divided by N) or ``mean``
    (averaged over all N x C entries: the first author's classification code, :data:`DECOUPLED_GUMBEL`). The
    reduced loss is then clamped to [0, ``clamp_max``] (20 in GOL's detector; ``None`` for no upper bound); above
    the bound its gradient is zero, as with ``torch.clamp`` in the reference. The defaults are GOL's detection
    setting; ``--stage2 gumbel`` uses :data:`DECOUPLED_GUMBEL`.
    """

    def __init__(self, reduction: GumbelReduction = "sum", clamp_max: float | None = 20.0) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' (sum / N) or 'mean' (mean over N x C), got {reduction!r}")
        if clamp_max is not None and clamp_max <= 0:
            raise ValueError(f"clamp_max must be positive or None, got {clamp_max}")
        self.reduction = reduction
        self.clamp_max = clamp_max

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = F.one_hot(labels.long(), logits.shape[-1])
        bce = gumbel_bce(logits, target)
        loss = bce.mean() if self.reduction == "mean" else bce.sum() / max(logits.shape[0], 1)
        return loss.clamp(min=0.0, max=self.clamp_max)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, clamp_max={self.clamp_max}"
