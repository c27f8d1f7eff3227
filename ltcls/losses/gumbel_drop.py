"""DropLoss-weighted Gumbel loss: the classification loss of GOL's headline detector.

GOL (Alexandridis et al., ECCV 2022, Eq. 10) combines the Gumbel activation with DropLoss (Hsieh et
al., AAAI 2021); this follows kostas1515/GOL's ``DropLoss`` with ``use_classif='gumbel'``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ltcls.losses.base import LOSSES, as_counts
from ltcls.losses.gumbel import GumbelActivationLoss, gumbel_bce


@LOSSES.register("gumbel_drop")
class GumbelDropLoss(GumbelActivationLoss):
    """Gumbel BCE weighted by DropLoss: ``sum(BCE * w) / N`` over C class channels, no clamp.

    Called as ``loss(logits (N, C), labels (N,))`` with labels 0..C-1 for foreground RoIs and
    ``C`` (= ``num_classes``) for background RoIs (mmdetection's convention; there is no background
    logit: a background row's target is all zeros).

    ``w = 1 - T * (1 - target)`` with ``T[n, c] = tail[c] * (fg_n + bg_n * [U[n, c] > ratio])``:

    * ``tail[c]``: the class frequency ``class_counts[c] / sum(class_counts)`` is below
      ``tail_threshold``. GOL divides per-class *image counts* by the number of training images
      (about 100k on LVIS v1 with lambda = 0.0011: fewer than ~110 images); ltcls only receives the
      class counts, so it normalizes by their sum: rescale the threshold by
      ``num_images / sum(class_counts)`` to select the reference's tail set;
    * ``ratio``: the fraction of this batch's foreground RoIs whose class is a tail class (without
      foreground RoIs nothing is dropped, as the reference's NaN ratio makes every comparison false);
    * ``U ~ Uniform(0, 1)`` drawn per element (N, C) with ``torch.rand``, as the reference's
      ``torch.rand_like`` on the expanded (N, C) background mask does.

    So foreground RoIs never push down tail classes other than their own, and background RoIs push
    each tail class down with probability ``ratio``.
    """

    def __init__(self, tail_threshold: float = 0.0011, num_classes: int | None = None,
                 class_counts: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        if not 0.0 <= tail_threshold <= 1.0:
            raise ValueError(f"tail_threshold is a frequency in [0, 1], got {tail_threshold}")
        counts = as_counts(class_counts, num_classes).double()
        self.num_classes = counts.numel()
        self.tail_threshold = tail_threshold
        freqs = counts / counts.sum().clamp(min=1)
        self.register_buffer("tail", freqs < tail_threshold, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, c = logits.shape
        if c != self.num_classes:
            raise ValueError(f"logits must have {self.num_classes} columns, got {c}")
        labels = labels.long()
        target = F.one_hot(labels, c + 1)[:, :c].bool()
        fg = labels < c
        tail = self.tail.to(logits.device)
        # Fraction of foreground RoIs of a tail class; 1 (U > 1 never holds) without foreground. No host sync.
        num_fg = fg.sum()
        tail_fg = (tail[labels.clamp(max=c - 1)] & fg).sum()
        ratio = torch.where(num_fg > 0, tail_fg / num_fg.clamp(min=1), 1.0).to(logits.dtype)
        drop_bg = torch.rand(n, c, dtype=logits.dtype, device=logits.device) > ratio
        drop = tail[None, :] & (fg[:, None] | drop_bg) & ~target
        loss = gumbel_bce(logits, target).masked_fill(drop, 0.0)
        return loss.sum() / max(n, 1)

    def extra_repr(self) -> str:
        return f"tail_threshold={self.tail_threshold}, tail classes={int(self.tail.sum())}/{self.num_classes}"
