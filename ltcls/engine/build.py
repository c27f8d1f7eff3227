"""Turn a resolved config into data, model and loss, passing the runtime facts (class counts,
number of classes, feature dimension) from the data and the model, never from yaml."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ltcls.data import DataSplits, build_data
from ltcls.detection import is_detection
from ltcls.engine.tasks import ClassificationTask
from ltcls.losses import LTLoss, build_loss
from ltcls.models import LTModel, build_classifier, create_backbone


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _params(section: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "name"}


def build_model(cfg: Mapping[str, Any], num_classes: int) -> LTModel:
    m = cfg["model"]
    backbone = create_backbone(m["name"], pretrained=m["pretrained"], drop_rate=m["drop_rate"],
                               drop_path_rate=m["drop_path_rate"], **m["kwargs"])
    classifier = build_classifier(cfg["classifier"]["name"], backbone.num_features, num_classes,
                                  **_params(cfg["classifier"]))
    return LTModel(backbone, classifier)


def build_stage_loss(cfg: Mapping[str, Any], data: DataSplits) -> LTLoss:
    return build_loss(cfg["loss"]["name"], num_classes=data.num_classes, class_counts=data.class_counts.tolist(),
                      **_params(cfg["loss"]))


def build_task(cfg: Mapping[str, Any]) -> ClassificationTask:
    """The task of a run (how batches become losses, how a stage is evaluated)."""
    t = cfg["train"]
    if is_detection(cfg):
        from ltcls.detection.task import DetectionTask

        d = cfg["detection"]
        return DetectionTask(mask_threshold=d["mask_threshold"], max_dets=d["detections_per_img"],
                             amp_dtype=t["amp_dtype"])
    return ClassificationTask(amp_dtype=t["amp_dtype"], channels_last=t["channels_last"])


def build_run(cfg: Mapping[str, Any]) -> tuple[DataSplits, LTModel, LTLoss]:
    """Seed, then build the data splits, the model (backbone + head) and the loss of a run.

    A detection dataset (``lvis``) gives the LVIS splits, the Mask R-CNN adapter and its box loss."""
    if is_detection(cfg):
        from ltcls.detection.build import build_detection_run

        return build_detection_run(cfg)
    seed_everything(cfg["train"]["seed"])
    data = build_data(cfg["data"])
    model = build_model(cfg, data.num_classes)
    loss = build_stage_loss(cfg, data)
    loss.init_classifier(model.classifier)
    return data, model, loss
