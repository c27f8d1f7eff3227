"""The loss registry and the small interface every loss follows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ltcls.registries import LOSSES


class LTLoss(nn.Module):
    """Base class of ltcls losses: ``loss(logits, labels)`` -> scalar (mean over the batch unless
    the loss's reference says otherwise).

    Hooks with safe defaults, so the trainer never needs to know which loss it runs:

    * ``set_epoch(epoch, epochs)``: called at the start of every epoch (schedules such as DRW).
    * ``init_classifier(classifier)``: called once on a freshly built classifier (Gumbel's init).
    * ``scores(logits)``: inference class scores (softmax by default; Gumbel probabilities differ).
    * ``parts(logits, labels)``: the named terms whose sum is the loss (one term by default), for logs.

    Losses keep their state (e.g. Seesaw's cumulative counts) in registered buffers so that it is
    saved and restored with the checkpoint.
    """

    def set_epoch(self, epoch: int, epochs: int) -> None:  # noqa: B027 - optional hook
        """Start-of-epoch hook (0-based ``epoch`` out of ``epochs``)."""

    def init_classifier(self, classifier: nn.Module) -> None:  # noqa: B027 - optional hook
        """Adjust a freshly initialized classifier to what this loss expects."""

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class scores used at inference."""
        return logits.softmax(dim=-1)

    def parts(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss as named terms (their sum is ``self(logits, labels)``); one call, one update of any state."""
        return {"loss": self(logits, labels)}


def as_counts(class_counts, num_classes: int | None = None) -> torch.Tensor:
    """Class counts as a float64-safe float tensor, checked against ``num_classes``."""
    if class_counts is None:
        raise ValueError("this loss needs class_counts (the builder derives them from the training data)")
    counts = torch.as_tensor(class_counts, dtype=torch.float)
    if counts.ndim != 1:
        raise ValueError(f"class_counts must be 1-D, got shape {tuple(counts.shape)}")
    if num_classes is not None and counts.numel() != num_classes:
        raise ValueError(f"class_counts has {counts.numel()} entries but num_classes is {num_classes}")
    return counts


def build_loss(name: str, num_classes: int | None = None, class_counts: Sequence[int] | None = None,
               **hyperparams) -> LTLoss:
    """Build a registered loss; runtime facts (``num_classes``, ``class_counts``) come from the data."""
    return LOSSES.build(name, hyperparams, num_classes=num_classes, class_counts=class_counts)
