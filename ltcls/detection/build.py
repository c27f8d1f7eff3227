"""Config -> LVIS data, Mask R-CNN adapter and its loss (what the ``detection`` task builds). Runtime facts
(number of categories, per-category image counts, number of images) come from the data, never from yaml."""

from __future__ import annotations

import numpy as np

from ltcls.config import Config, ConfigError
from ltcls.data.base import DataSplits
from ltcls.data.build import TRANSFORM_KEYS
from ltcls.detection.data import DetectionFlip
from ltcls.detection.heads import build_box_classification
from ltcls.detection.model import LTMaskRCNN, build_fpn_backbone, check_torchvision_version
from ltcls.losses.base import LTLoss, build_loss
from ltcls.models.classifiers import build_classifier
from ltcls.registries import DATASETS


def build_detection_data(cfg: Config) -> DataSplits:
    """The detection dataset of ``cfg['data']``; of the image-classification transform keys only ``hflip``
    (the training flip probability) applies; Mask R-CNN resizes (``detection.min_size`` / ``max_size``) and
    normalizes (``data.mean`` / ``data.std``) in its own transform."""
    d = cfg.data
    params = {k: v for k, v in d.params.items() if k not in TRANSFORM_KEYS}
    return DATASETS.build(d.name, params, train_transform=DetectionFlip(d.get("hflip", 0.5)), eval_transform=None)


def build_detection_loss(cfg: Config, data: DataSplits) -> LTLoss:
    """The registry loss of ``cfg['loss']`` with the data's runtime facts.

    ``class_counts`` are per-category training image counts (LVIS's ``image_count``). For ``gumbel_drop``
    ``loss.tail_threshold`` is GOL's lambda, a fraction of training *images*; the loss normalizes by the sum
    of the counts, so the builder rescales it by ``num_images / sum(counts)`` to select GOL's tail set.
    """
    params = dict(cfg.loss.params)
    counts = np.asarray(data.class_counts, dtype=np.float64)
    if cfg.loss.name == "gumbel_drop" and counts.sum() > 0:
        params["tail_threshold"] = float(params["tail_threshold"] * len(data.train) / counts.sum())
    return build_loss(cfg.loss.name, num_classes=data.num_classes, class_counts=counts.tolist(), **params)


def build_detector(cfg: Config, data: DataSplits) -> LTMaskRCNN:
    """Mask R-CNN with the configured backbone, registry classifier, loss adapter and mask predictor.

    ``model.name``: a torchvision ResNet (``resnet50`` for the LVIS configs) or a timm model; ``model.kwargs``
    go to torchvision's ``MaskRCNN`` (``rpn_*``, ``box_*`` settings).
    """
    check_torchvision_version()
    d, m = cfg.detection, cfg.model
    if m.drop_rate or m.drop_path_rate is not None:
        raise ConfigError(f"model.drop_rate / model.drop_path_rate apply to classification backbones; the Mask R-CNN "
                          f"of data.name '{cfg.data.name}' has no dropout (got {m.drop_rate}, {m.drop_path_rate})")
    if m.frozen_backbone or m.pretrained_file is not None:
        raise ConfigError("model.peft, model.freeze and model.pretrained_file apply to classification models; a "
                          "detector's backbone trains detection.trainable_backbone_layers (model.pretrained: "
                          "torchvision's / timm's weights)")
    num_classes = data.num_classes
    loss = build_detection_loss(cfg, data)
    box_classification = build_box_classification(cfg.loss.name, loss, num_classes)
    classifier = build_classifier(cfg.classifier.name, d.box_head_dim, box_classification.classifier_outputs,
                                  **cfg.classifier.params)
    box_classification.init_classifier(classifier)
    backbone = build_fpn_backbone(m.name, pretrained=m.pretrained, fpn_channels=d.fpn_channels,
                                  trainable_layers=d.trainable_backbone_layers)
    return LTMaskRCNN(backbone, num_classes, classifier, box_classification, box_head_dim=d.box_head_dim,
                      mask_head_layers=d.mask_head_layers, normalized_mask=d.normalized_mask,
                      mask_tau=d.mask_tau, min_size=tuple(d.min_size), max_size=d.max_size,
                      image_mean=list(cfg.data.mean), image_std=list(cfg.data.std),
                      box_score_thresh=d.score_thresh, box_nms_thresh=d.nms_thresh,
                      box_detections_per_img=d.detections_per_img,
                      box_batch_size_per_image=d.box_batch_size_per_image, **m.kwargs)
