"""Classifier heads on top of backbone features, chosen by ``classifier.name``.

A head is a separate module so that a second stage can replace or transform it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltcls.registries import CLASSIFIERS


@CLASSIFIERS.register("linear")
class LinearClassifier(nn.Linear):
    """Plain linear classifier ``z = W x + b`` (PyTorch's default initialization)."""

    def __init__(self, in_features: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(in_features, num_classes, bias=bias)


@CLASSIFIERS.register("normalized")
class NormalizedClassifier(nn.Module):
    """Normalized (cosine) linear classifier, mmdetection's ``NormedLinear``.

    ``w = W / (||W_row|| + eps)``, ``x = tau * x / (||x|| + eps)``, ``z = x w^T + b``; the bias is
    kept, weights start from N(0, 0.01) and the bias from 0 (Seesaw paper, Sec. 3.3; tau = 20).
    """

    def __init__(self, in_features: int, num_classes: int, tau: float = 20.0, bias: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = tau
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        nn.init.normal_(self.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight / (self.weight.norm(dim=1, keepdim=True) + self.eps)
        x = self.tau * x / (x.norm(dim=1, keepdim=True) + self.eps)
        return F.linear(x, w, self.bias)


def build_classifier(name: str, in_features: int, num_classes: int, **hyperparams) -> nn.Module:
    """Build a registered classifier head for ``in_features``-dim features and ``num_classes`` classes."""
    return CLASSIFIERS.build(name, hyperparams, in_features=in_features, num_classes=num_classes)
