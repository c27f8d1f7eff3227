"""Gumbel loss of GOL (Alexandridis et al., ECCV 2022, Eq. 7-9; kostas1515/GOL).

Each class is an independent binary problem with the Gumbel activation ``p = exp(-exp(-z))`` (the
CDF of the Gumbel distribution) instead of a sigmoid or a softmax. GOL clamps ``z`` to [-4, 10] before
the activation; in that range ``log p = -exp(-z)`` and ``log(1 - p) = log(-expm1(-exp(-z)))`` are
computed directly, which is exact where ``1 - exp(-exp(-z))`` would round (z near 10 in float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltcls.losses.base import LOSSES, LTLoss

#: GOL clamps the logits to this range before the Gumbel activation when training.
GUMBEL_CLAMP = (-4.0, 10.0)

#: The loss section of decoupled Gumbel re-training for classification (GOL Table 4; ``--stage2 gumbel``): the
#: softmax-trained classifier is fine-tuned with the Gumbel loss **without** the reduced-loss clamp. GOL's clamp
#: at 20 comes from its mmdetection box head (C+1 channels, GOL's init, background-dominated RoIs); summed over
#: C classes, a softmax head's loss is ~90 per sample at C = 100 and 700-900 at C = 1000 (synthetic features,
#: tests/test_scale_1000.py), so with the clamp the gradient is exactly zero and stage 2 is a no-op (issue 10).
#: Fine-tuning the softmax head (not GOL's constant init, which trains far slower and, with wide ReLU features,
#: starts above the clamp too) is what benchmarks/bench_decoupled_gumbel.py measures best. GOL publishes no
#: classification code; its paper re-trains "only the classifier" at lr 1e-4 / 1e-5, a fine-tuning rate.
DECOUPLED_GUMBEL: dict[str, object] = {"name": "gumbel", "clamp_max": None}


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
    """GOL's Gumbel loss as its box head reduces it: BCE summed over all N x C entries, divided by N.

    The reduced loss is then clamped to [0, ``clamp_max``] (20 in GOL; ``None`` for no upper bound);
    above the bound its gradient is zero, as with ``torch.clamp`` in the reference. The default is GOL's
    detection setting; classification with many classes needs ``clamp_max: null`` (:data:`DECOUPLED_GUMBEL`).
    """

    def __init__(self, clamp_max: float | None = 20.0) -> None:
        super().__init__()
        if clamp_max is not None and clamp_max <= 0:
            raise ValueError(f"clamp_max must be positive or None, got {clamp_max}")
        self.clamp_max = clamp_max

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = F.one_hot(labels.long(), logits.shape[-1])
        loss = gumbel_bce(logits, target).sum() / max(logits.shape[0], 1)
        return loss.clamp(min=0.0, max=self.clamp_max)

    def extra_repr(self) -> str:
        return f"clamp_max={self.clamp_max}"
