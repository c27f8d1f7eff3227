"""Box classification and mask prediction heads of the Mask R-CNN adapter.

A :class:`BoxClassification` says how a registry loss classifies RoIs: how many outputs its classifier
has, how torchvision's sampled RoI labels (0 = background, 1..C) become the loss's call, and how logits
become detection scores (column 0 background, as torchvision's post-processing expects):

* ``ce``: C+1 logits, softmax cross-entropy (torchvision's default), softmax scores;
* ``seesaw_det``: C class logits and 2 objectness logits (background, foreground) from one classifier
  (mmdetection's C+2 channel ``NormedLinear`` fc_cls), scores ``softmax(classes) * softmax(objectness)[fg]``;
* ``gumbel``: C+1 logits, column 0 a background channel (GOL's ``GumbelCE``, their Table 1: background RoIs
  train it with target 1, inside the summed, clamped loss); scores are Gumbel probabilities, not renormalized,
  and the background channel's score is dropped by post-processing (GOL: mmdetection's NMS drops that column);
* ``gumbel_drop``: C logits, no background logit (GOL's DropLoss head); a background RoI is all-zero
  targets; scores as ``gumbel``.

The classifier output goes through torchvision's ``RoIHeads.forward`` as its ``class_logits``;
torchvision computes a cross-entropy on it that :class:`~ltcls.detection.model.LTRoIHeads` discards, so
the packed logits always have at least C+1 columns (C-channel heads are padded with a zero column in
front, where torchvision's background column would be).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from ltcls.losses.base import LTLoss
from ltcls.losses.gumbel import gumbel_probs
from ltcls.models.classifiers import l2_normalize
from ltcls.registry import Registry

#: Box classification adapters by loss name (the config's ``loss.name`` picks one).
BOX_CLASSIFICATIONS = Registry("detection loss", runtime=("loss", "num_classes"))


class BoxClassification(nn.Module):
    """Base: the loss (a submodule, so its state such as Seesaw's counts is checkpointed with the model)."""

    #: Classifier outputs beyond the C classes (background or objectness logits).
    extra_outputs = 1

    def __init__(self, loss: LTLoss, num_classes: int) -> None:
        super().__init__()
        self.loss = loss
        self.num_classes = int(num_classes)

    @property
    def classifier_outputs(self) -> int:
        return self.num_classes + self.extra_outputs

    @property
    def packed_width(self) -> int:
        """Columns of :meth:`pack`'s output."""
        return self.classifier_outputs

    def pack(self, logits: torch.Tensor) -> torch.Tensor:
        """Classifier output -> what goes through torchvision's RoIHeads (at least C+1 columns)."""
        return logits

    def losses(self, packed: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def scores(self, packed: torch.Tensor) -> torch.Tensor:
        """Detection scores (N, C+1); column 0 is background (dropped by post-processing)."""
        raise NotImplementedError

    def init_classifier(self, classifier: nn.Module) -> None:
        self.loss.init_classifier(classifier)


@BOX_CLASSIFICATIONS.register("ce")
class SoftmaxClassification(BoxClassification):
    """C+1 logits (column 0 background), the registry loss called as torchvision calls cross-entropy."""

    def losses(self, packed: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss_classifier": self.loss(packed, labels)}

    def scores(self, packed: torch.Tensor) -> torch.Tensor:
        return F.softmax(packed, -1)


@BOX_CLASSIFICATIONS.register("seesaw_det")
class SeesawClassification(BoxClassification):
    """C class logits then 2 objectness logits (background, foreground), one classifier of C+2 outputs."""

    extra_outputs = 2

    def losses(self, packed: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.loss.parts(packed, labels)

    def scores(self, packed: torch.Tensor) -> torch.Tensor:
        return self.loss.scores(packed)


class GumbelActivationClassification(BoxClassification):
    """Scores are Gumbel probabilities of every column (GOL's ``get_activation``: no softmax, rows do not sum to 1)."""

    def scores(self, packed: torch.Tensor) -> torch.Tensor:
        return gumbel_probs(packed)


@BOX_CLASSIFICATIONS.register("gumbel")
class GumbelClassification(GumbelActivationClassification):
    """GOL's ``GumbelCE`` box loss (plain Gumbel, GOL Table 1): C+1 channels, the background one included.

    Column 0 is the background channel (torchvision's layout; mmdetection's puts it last), so torchvision's
    sampled labels (0 = background, 1..C) are the loss's one-hot targets as they are: a background RoI trains
    the background channel with target 1. The loss is the registry ``gumbel`` loss itself (its reduction and
    clamp: BCE summed over N x (C+1), divided by N, clamped to [0, clamp_max]), as GOL's box head reduces
    ``GumbelCE``. At test time the background channel's Gumbel probability is column 0 of the scores, which
    post-processing drops; the class scores are not divided by or multiplied with it (GOL).
    """

    def losses(self, packed: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss_classifier": self.loss(packed, labels)}


@BOX_CLASSIFICATIONS.register("gumbel_drop")
class GumbelDropClassification(GumbelActivationClassification):
    """The registry ``gumbel_drop`` loss on C logits without a background logit (GOL's DropLoss head), in its
    own label convention (0..C-1, background = C); packed with a zero column in front for torchvision."""

    extra_outputs = 0

    @property
    def packed_width(self) -> int:
        return self.num_classes + 1

    def pack(self, logits: torch.Tensor) -> torch.Tensor:
        return F.pad(logits, (1, 0))

    def losses(self, packed: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        labels = labels.long()
        mm_labels = torch.where(labels > 0, labels - 1, self.num_classes)
        return {"loss_classifier": self.loss(packed[:, 1:], mm_labels)}

    def scores(self, packed: torch.Tensor) -> torch.Tensor:
        """Gumbel probabilities of the C classes; column 0 (the zero padding, no background logit) scores 0."""
        return F.pad(gumbel_probs(packed[:, 1:]), (1, 0))


def build_box_classification(loss_name: str, loss: LTLoss, num_classes: int) -> BoxClassification:
    """The adapter of a registry loss for Mask R-CNN's box head (KeyError naming the supported losses)."""
    return BOX_CLASSIFICATIONS.build(loss_name, loss=loss, num_classes=num_classes)


class LTBoxPredictor(FastRCNNPredictor):
    """torchvision's ``FastRCNNPredictor`` with a registry classifier as ``cls_score``.

    Box regression stays torchvision's: class-specific, (C+1) x 4 outputs. ``forward`` returns
    ``(box_classification.pack(cls_score(x)), bbox_pred(x))``.
    """

    def __init__(self, in_channels: int, num_classes: int, classifier: nn.Module,
                 box_classification: BoxClassification) -> None:
        super().__init__(in_channels, num_classes + 1)
        self.cls_score = classifier
        self._pack = box_classification.pack  # a bound method, not a submodule (no duplicate loss state)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, bbox_deltas = super().forward(x)
        return self._pack(scores), bbox_deltas


class NormedConv2d(nn.Conv2d):
    """Normalized convolution (mmdetection's ``NormedConv2d``): each output channel's weights divided by
    their L2 norm over input channels, the input feature at each pixel by its L2 norm over channels,
    times ``tau``; the bias is kept."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, tau: float = 20.0,
                 eps: float = 1e-6, **kwargs) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = tau
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = l2_normalize(self.weight, eps=self.eps)
        x = self.tau * l2_normalize(x, eps=self.eps)
        return self._conv_forward(x, weight, self.bias)


class NormalizedMaskPredictor(MaskRCNNPredictor):
    """torchvision's ``MaskRCNNPredictor`` whose 1x1 mask-logits conv is a :class:`NormedConv2d`
    (normalized mask prediction, Seesaw Sec. 3.3; GOL's "normalised mask"). Starts from torchvision's init."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int, tau: float = 20.0) -> None:
        super().__init__(in_channels, dim_reduced, num_classes)
        plain = self.mask_fcn_logits
        normed = NormedConv2d(dim_reduced, num_classes, 1, tau=tau)
        with torch.no_grad():
            normed.weight.copy_(plain.weight)
            normed.bias.copy_(plain.bias)
        self.mask_fcn_logits = normed
