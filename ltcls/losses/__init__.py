"""Loss registry. This file is the only registration site: it imports every loss module."""

from __future__ import annotations

from collections.abc import Sequence

from ltcls.losses import cross_entropy  # noqa: F401  (registers 'ce')
from ltcls.losses.base import LOSSES, LTLoss, as_counts

__all__ = ["LOSSES", "LTLoss", "as_counts", "build_loss"]


def build_loss(
    name: str, num_classes: int | None = None, class_counts: Sequence[int] | None = None, **hyperparams
) -> LTLoss:
    """Build a registered loss; runtime facts (``num_classes``, ``class_counts``) come from the data."""
    return LOSSES.build(name, hyperparams, num_classes=num_classes, class_counts=class_counts)
