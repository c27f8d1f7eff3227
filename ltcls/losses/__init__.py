"""Loss registry. This file is the only registration site: it imports every loss module."""

from __future__ import annotations

from collections.abc import Sequence

from ltcls.losses import (
    balanced_softmax,  # noqa: F401  (registers 'balanced_softmax')
    class_balanced,  # noqa: F401  (registers 'class_balanced', 'class_balanced_focal')
    cross_entropy,  # noqa: F401  (registers 'ce')
    focal,  # noqa: F401  (registers 'focal')
    gumbel,  # noqa: F401  (registers 'gumbel')
    gumbel_drop,  # noqa: F401  (registers 'gumbel_drop')
    ldam,  # noqa: F401  (registers 'ldam')
    logit_adjusted,  # noqa: F401  (registers 'logit_adjusted')
    seesaw,  # noqa: F401  (registers 'seesaw')
    seesaw_det,  # noqa: F401  (registers 'seesaw_det')
)
from ltcls.losses.base import LOSSES, LTLoss, as_counts

__all__ = ["LOSSES", "LTLoss", "as_counts", "build_loss"]


def build_loss(
    name: str, num_classes: int | None = None, class_counts: Sequence[int] | None = None, **hyperparams
) -> LTLoss:
    """Build a registered loss; runtime facts (``num_classes``, ``class_counts``) come from the data."""
    return LOSSES.build(name, hyperparams, num_classes=num_classes, class_counts=class_counts)
