"""Classifier heads on top of backbone features, chosen by ``classifier.name``.

A head is a separate module so that a second stage can replace or transform it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltcls.models.text_head import without_init_keys
from ltcls.registries import CLASSIFIERS


@CLASSIFIERS.register("linear")
class LinearClassifier(nn.Linear):
    """Plain linear classifier ``z = W x + b`` (PyTorch's default initialization)."""

    def __init__(self, in_features: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(in_features, num_classes, bias=bias)


def l2_normalize(t: torch.Tensor, dim: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """``t / (||t|| + eps)`` along ``dim``: mmdetection's ``NormedLinear`` / ``NormedConv2d`` normalization
    (``eps`` added to the norm, not ``F.normalize``'s ``max(||t||, eps)``)."""
    return t / (t.norm(dim=dim, keepdim=True) + eps)


def cosine_logits(x: torch.Tensor, weight: torch.Tensor, tau: float, eps: float = 1e-6,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine logits ``tau * (x / ||x||) (W / ||W_row||)^T + b`` of (N, D) features and a (C, D) weight.

    The one copy of the normalized-linear formula (Seesaw Sec. 3.3, mmdetection's ``NormedLinear``). Its
    gradient with respect to a weight row is ``tau / ||W_row||`` times a unit-scale vector orthogonal to
    the row: scaling a row by k leaves the logits unchanged and divides the row's gradient by k.
    """
    return F.linear(tau * l2_normalize(x, 1, eps), l2_normalize(weight, 1, eps), bias)


@CLASSIFIERS.register("normalized")
class NormalizedClassifier(nn.Module):
    """Normalized (cosine) linear classifier, mmdetection's ``NormedLinear`` (formula: :func:`cosine_logits`).

    The bias is kept (from 0). ``init_norm=None`` draws the weights from N(0, 0.01) as mmdetection and the
    Seesaw paper do (Sec. 3.3; tau = 20); a number rescales every initial row to that L2 norm (LDAM's
    ``NormedLinear`` starts from unit rows). The logits do not depend on ``||W_row||``, but SGD's step
    does (see :func:`cosine_logits`), so the initial row norm sets the head's effective learning rate.
    """

    def __init__(self, in_features: int, num_classes: int, tau: float = 20.0, bias: bool = True,
                 eps: float = 1e-6, init_norm: float | None = None) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if init_norm is not None and init_norm <= 0:
            raise ValueError(f"init_norm must be positive (or None for N(0, 0.01)), got {init_norm}")
        self.tau = tau
        self.eps = eps
        self.init_norm = init_norm
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        nn.init.normal_(self.weight, 0.0, 0.01)
        if init_norm is not None:
            with torch.no_grad():
                self.weight.mul_(init_norm / self.weight.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cosine_logits(x, self.weight, self.tau, self.eps, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, tau={self.tau}, " \
               f"bias={self.bias is not None}, init_norm={self.init_norm}"


def build_classifier(name: str, in_features: int, num_classes: int, **hyperparams) -> nn.Module:
    """Build a registered classifier head for ``in_features``-dim features and ``num_classes`` classes.

    The keys every classifier section has about how the head starts (``init``, ``templates``, ...:
    :class:`ltcls.models.text_head.HeadInit`) are not the constructor's: they are dropped here and applied by
    :func:`ltcls.models.text_head.init_head` where a run starts training."""
    return CLASSIFIERS.build(name, without_init_keys(hyperparams), in_features=in_features, num_classes=num_classes)
