"""The Mask R-CNN adapter: torchvision's Mask R-CNN, extended by subclassing, with its box classification
loss built from ltcls's loss registry and its classifier from the classifier registry.

* :class:`LTRoIHeads` subclasses torchvision's ``RoIHeads``. Training runs torchvision's ``forward``
  unchanged (proposal sampling, box regression loss, mask branch) and replaces its cross-entropy
  ``loss_classifier`` by the registry loss on the same sampled RoIs: the sampled labels come from an
  override of ``select_training_samples`` (which calls torchvision's), the logits from a forward hook
  on the box predictor held for the duration of the call. ``postprocess_detections`` is overridden to
  score RoIs with the loss's inference rule instead of softmax (same selection steps as torchvision).
* :class:`~ltcls.detection.heads.LTBoxPredictor` / :class:`~ltcls.detection.heads.NormalizedMaskPredictor`
  subclass ``FastRCNNPredictor`` / ``MaskRCNNPredictor``.
* :class:`LTRCNNTransform` subclasses ``GeneralizedRCNNTransform`` so that evaluation can keep the 28 x 28
  mask probabilities (``mask_probs``) instead of pasting 300 full-image float masks per image.

Written against torchvision 0.29.2 (pinned in setup.cfg): the adapter relies on ``RoIHeads``' method
names and on ``forward`` computing ``fastrcnn_loss`` from the box predictor's output.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import timm
import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ltcls.detection.heads import BoxClassification, LTBoxPredictor, NormalizedMaskPredictor

log = logging.getLogger("ltcls")

#: The torchvision release the adapter is written and tested against (setup.cfg pins it).
TORCHVISION_VERSION = "0.29.2"

#: torchvision ResNet-family backbones (built with torchvision, ImageNet weights ``IMAGENET1K_V1``); other
#: names are timm models.
TORCHVISION_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                         "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


def select_detections(box_coder, scores: torch.Tensor, box_regression: torch.Tensor, proposals: list[torch.Tensor],
                      image_shapes: list[tuple[int, int]], score_thresh: float, nms_thresh: float,
                      detections_per_img: int
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """torchvision's ``RoIHeads.postprocess_detections`` on given ``scores`` (N, C+1), column 0 background; per
    image the boxes, scores, labels and, for each detection, the index of its RoI among the image's proposals.

    The steps are torchvision's (decode, clip, drop background, score threshold, drop empty boxes,
    per-class NMS, top ``detections_per_img``); only the softmax is left to the caller. A detection is a (RoI,
    label) pair: its box depends on nothing else.
    """
    num_classes = scores.shape[-1]
    boxes_per_image = [p.shape[0] for p in proposals]
    pred_boxes = box_coder.decode(box_regression, proposals)
    all_boxes, all_scores, all_labels, all_rois = [], [], [], []
    for boxes, image_scores, shape in zip(pred_boxes.split(boxes_per_image, 0), scores.split(boxes_per_image, 0),
                                          image_shapes):
        boxes = box_ops.clip_boxes_to_image(boxes, shape)
        labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(image_scores)
        rois = torch.arange(len(image_scores), device=scores.device).view(-1, 1).expand_as(image_scores)
        boxes = boxes[:, 1:].reshape(-1, 4)
        image_scores = image_scores[:, 1:].reshape(-1)
        labels, rois = labels[:, 1:].reshape(-1), rois[:, 1:].reshape(-1)
        keep = torch.where(image_scores > score_thresh)[0]
        keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
        keep = keep[box_ops.batched_nms(boxes[keep], image_scores[keep], labels[keep], nms_thresh)[:detections_per_img]]
        all_boxes.append(boxes[keep])
        all_scores.append(image_scores[keep])
        all_labels.append(labels[keep])
        all_rois.append(rois[keep])
    return all_boxes, all_scores, all_labels, all_rois


class LTRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with the classification loss and scores of a :class:`BoxClassification`."""

    def __init__(self, *args: Any, box_classification: BoxClassification, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.box_classification = box_classification
        self._sampled_labels: list[torch.Tensor] | None = None

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, box_classification: BoxClassification) -> LTRoIHeads:
        """The same heads, matcher, sampler, box coder and test settings as ``heads``."""
        return cls(heads.box_roi_pool, heads.box_head, heads.box_predictor,
                   heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold,
                   heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction,
                   heads.box_coder.weights, heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
                   mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head, mask_predictor=heads.mask_predictor,
                   box_classification=box_classification)

    def select_training_samples(self, proposals, targets):
        """torchvision's sampling; the sampled RoIs' labels are kept for the classification loss."""
        proposals, matched_idxs, labels, regression_targets = super().select_training_samples(proposals, targets)
        self._sampled_labels = labels
        return proposals, matched_idxs, labels, regression_targets

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        captured: dict[str, torch.Tensor] = {}

        def keep_logits(module: nn.Module, inputs: Any, output: tuple[torch.Tensor, torch.Tensor]) -> None:
            captured["class_logits"] = output[0]

        handle = self.box_predictor.register_forward_hook(keep_logits)
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            handle.remove()
            labels, self._sampled_labels = self._sampled_labels, None
        if labels is None or "class_logits" not in captured:
            raise RuntimeError("LTRoIHeads: torchvision's RoIHeads.forward did not sample RoIs or call the box "
                               f"predictor as expected (written for torchvision {TORCHVISION_VERSION})")
        del losses["loss_classifier"]  # torchvision's cross-entropy on the packed logits: replaced
        losses.update(self.box_classification.losses(captured["class_logits"], torch.cat(labels, dim=0)))
        return result, losses

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """Detections scored by the loss's inference rule (softmax, Seesaw objectness product, Gumbel)."""
        scores = self.box_classification.scores(class_logits)
        boxes, scores, labels, _ = select_detections(self.box_coder, scores, box_regression, proposals, image_shapes,
                                                     self.score_thresh, self.nms_thresh, self.detections_per_img)
        return boxes, scores, labels


class LTRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's transform; with ``paste_masks = False`` (see :func:`compact_masks`) the test-time output
    keeps the RoI mask probabilities as ``mask_probs`` (N, 1, 28, 28) next to the boxes in original image
    coordinates, instead of ``masks`` pasted into (N, 1, H, W) full-image float tensors."""

    paste_masks = True

    @classmethod
    def from_transform(cls, t: GeneralizedRCNNTransform) -> LTRCNNTransform:
        return cls(t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=t.size_divisible,
                   fixed_size=t.fixed_size, _skip_resize=t._skip_resize)

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training or self.paste_masks:
            return super().postprocess(result, image_shapes, original_image_sizes)
        probs = [r.pop("masks", None) for r in result]
        result = super().postprocess(result, image_shapes, original_image_sizes)
        for r, p in zip(result, probs):
            if p is not None:
                r["mask_probs"] = p
        return result


@contextmanager
def compact_masks(model: nn.Module) -> Iterator[None]:
    """Within the block, Mask R-CNN outputs ``mask_probs`` (RoI resolution) instead of full-image ``masks``."""
    transforms = [m for m in model.modules() if isinstance(m, LTRCNNTransform)]
    for t in transforms:
        t.paste_masks = False
    try:
        yield
    finally:
        for t in transforms:
            t.paste_masks = True


class LTMaskRCNN(MaskRCNN):
    """torchvision's ``MaskRCNN`` with :class:`LTRoIHeads`, a registry classifier and an optional normalized
    mask predictor. ``kwargs`` go to ``MaskRCNN`` (min_size, rpn_* and box_* settings, ...)."""

    def __init__(self, backbone: nn.Module, num_classes: int, classifier: nn.Module,
                 box_classification: BoxClassification, box_head_dim: int = 1024,
                 mask_head_layers: Sequence[int] = (256, 256, 256, 256), normalized_mask: bool = False,
                 mask_tau: float = 20.0, **kwargs: Any) -> None:
        out = backbone.out_channels
        layers = tuple(mask_head_layers)
        if not layers:
            raise ValueError("mask_head_layers needs at least one layer")
        box_predictor = LTBoxPredictor(box_head_dim, num_classes, classifier, box_classification)
        mask_predictor = (NormalizedMaskPredictor(layers[-1], layers[-1], num_classes + 1, tau=mask_tau)
                          if normalized_mask else MaskRCNNPredictor(layers[-1], layers[-1], num_classes + 1))
        super().__init__(backbone, num_classes=None, box_head=TwoMLPHead(out * 7 * 7, box_head_dim),
                         box_predictor=box_predictor, mask_head=MaskRCNNHeads(out, layers, 1),
                         mask_predictor=mask_predictor, **kwargs)
        self.roi_heads = LTRoIHeads.from_roi_heads(self.roi_heads, box_classification)
        self.transform = LTRCNNTransform.from_transform(self.transform)
        self.num_classes = int(num_classes)

    @property
    def box_classification(self) -> BoxClassification:
        return self.roi_heads.box_classification


class TimmFPN(nn.Module):
    """A timm ``features_only`` model (strides 4, 8, 16, 32) under torchvision's FPN (+ max-pool level)."""

    def __init__(self, body: nn.Module, fpn_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.feature_info.channels()), fpn_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def build_fpn_backbone(name: str, pretrained: bool = False, fpn_channels: int = 256,
                       trainable_layers: int | None = None, **kwargs: Any) -> nn.Module:
    """A backbone with FPN for Mask R-CNN: a torchvision ResNet (``TORCHVISION_BACKBONES``) with torchvision's
    ``BackboneWithFPN`` (frozen BatchNorm and ImageNet ``IMAGENET1K_V1`` weights when ``pretrained``; the
    first ``5 - trainable_layers`` of conv1, layer1..4 frozen, as ``resnet_fpn_backbone``), or any timm
    model through ``features_only`` (frozen BatchNorm when ``pretrained``)."""
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_backbone_layers must be in [0, 5], got {trainable_layers}")
    if name in TORCHVISION_BACKBONES:
        norm = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
        body = torchvision.models.get_model(name, weights="IMAGENET1K_V1" if pretrained else None, norm_layer=norm,
                                            **kwargs)
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            train.append("bn1")
        for child_name, child in body.named_children():
            if not any(child_name.startswith(t) for t in train):
                child.requires_grad_(False)  # as torchvision's resnet_fpn_backbone
        stage2 = body.inplanes // 8
        return BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)},
                               [stage2 * 2 ** (i - 1) for i in range(1, 5)], fpn_channels,
                               extra_blocks=LastLevelMaxPool())
    if not timm.is_model(name):
        raise KeyError(f"unknown detection backbone '{name}': a torchvision ResNet ({', '.join(TORCHVISION_BACKBONES)})"
                       " or a timm model name")
    if trainable_layers != 5 and not pretrained:
        log.warning("trainable_backbone_layers is not applied to timm backbones; all layers train")
    body = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=(1, 2, 3, 4), **kwargs)
    if pretrained:
        body = timm.layers.freeze_batch_norm_2d(body)
    return TimmFPN(body, fpn_channels)


def check_torchvision_version() -> None:
    """Warn when torchvision is not the release the adapter was written against."""
    if torchvision.__version__.split("+")[0] != TORCHVISION_VERSION:
        log.warning("ltcls.detection is written for torchvision %s, found %s: the RoIHeads adapter may not fit",
                    TORCHVISION_VERSION, torchvision.__version__)
