"""Seesaw loss in its detection form (Wang et al., CVPR 2021, Sec. 3.3), matching the values of
mmdetection's ``SeesawLoss`` as its ``BBoxHead`` calls it, in torchvision's label convention.

mmdetection packs C class logits and 2 objectness logits into C+2 channels with labels 0..C-1 for the
classes and C for background. Here the two heads are separate tensors and labels follow torchvision
(0 = background, 1..C = classes); the objectness logits are ordered (background, foreground).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ltcls.losses.base import LOSSES, LTLoss
from ltcls.losses.seesaw import check_seesaw_params, seesaw_cross_entropy, update_counts


def seesaw_det_scores(class_logits: torch.Tensor, objectness_logits: torch.Tensor) -> torch.Tensor:
    """Detection scores (N, C+1), column 0 background (torchvision order); rows sum to 1.

    Class i scores ``softmax(class_logits)[i] * softmax(objectness)[foreground]`` and background
    scores ``softmax(objectness)[background]`` (mmdetection's ``SeesawLoss.get_activation``).
    """
    obj = objectness_logits.softmax(dim=-1)
    return torch.cat([obj[..., :1], class_logits.softmax(dim=-1) * obj[..., 1:2]], dim=-1)


@LOSSES.register("seesaw_det")
class SeesawDetLoss(LTLoss):
    """Seesaw loss with an objectness branch for a two-stage detector's box head.

    Called as ``loss(logits (N, C + 2), labels (N,))`` over all sampled RoIs, the logits packed as C class
    logits then 2 objectness logits (background, foreground), like any ``LTLoss``; :meth:`parts` gives
    ``{"loss_cls_classes", "loss_cls_objectness"}`` (their sum is the loss) for the detector's loss dict.

    * ``cum_samples`` (C+1,) int64 buffer, index = label (0 = background), updated with every label
      (all-reduced across ranks) before the loss; mitigation uses the C class entries.
    * class term: classification Seesaw (:func:`ltcls.losses.seesaw.seesaw_cross_entropy`) on the foreground
      RoIs, summed and divided by ``max(#sampled RoIs, 1)`` (mmdetection's ``avg_factor``); 0 without
      foreground.
    * objectness term: foreground-vs-background cross-entropy over all RoIs, same normalization.

    Recent mmdetection versions divide by ``avg_factor`` plus float32's eps (1.2e-7, a relative difference
    below 1e-7 at any RoI count); this divides by ``avg_factor``.
    """

    def __init__(self, num_classes: int, p: float = 0.8, q: float = 2.0, eps: float = 1e-2) -> None:
        super().__init__()
        check_seesaw_params(p, q, eps)
        if num_classes is None or num_classes < 1:
            raise ValueError(f"seesaw_det needs num_classes >= 1 (foreground classes), got {num_classes}")
        self.num_classes = int(num_classes)
        self.p, self.q, self.eps = p, q, eps
        self.register_buffer("cum_samples", torch.zeros(self.num_classes + 1, dtype=torch.long))

    def split(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed logits ``(N, C + 2)`` -> class logits ``(N, C)`` and objectness logits ``(N, 2)``."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes + 2:
            raise ValueError(f"seesaw_det logits must be (N, {self.num_classes + 2}) (C class logits, then background "
                             f"and foreground objectness), got {tuple(logits.shape)}")
        return logits[:, : self.num_classes], logits[:, self.num_classes:]

    def parts(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss_cls_classes", "loss_cls_objectness"}`` of packed logits ``(N, C + 2)`` (labels 0 = background);
        updates the counts once."""
        class_logits, objectness_logits = self.split(logits)
        labels = labels.long()
        update_counts(self.cum_samples, labels)
        avg_factor = max(labels.numel(), 1)
        fg = labels > 0
        fg_labels = labels[fg] - 1
        loss_classes = seesaw_cross_entropy(class_logits[fg], fg_labels, self.cum_samples[1:], self.p, self.q,
                                            self.eps, reduction="sum") / avg_factor
        loss_objectness = F.cross_entropy(objectness_logits, fg.long(), reduction="sum") / avg_factor
        return {"loss_cls_classes": loss_classes, "loss_cls_objectness": loss_objectness}

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The classification loss: the sum of :meth:`parts`."""
        parts = self.parts(logits, labels)
        return parts["loss_cls_classes"] + parts["loss_cls_objectness"]

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Inference scores (N, C+1) of packed logits, column 0 background: see :func:`seesaw_det_scores`."""
        return seesaw_det_scores(*self.split(logits))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, p={self.p}, q={self.q}, eps={self.eps}"
