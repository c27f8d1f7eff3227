"""Long-tailed instance segmentation: torchvision's Mask R-CNN on LVIS with ltcls's losses and classifiers.

* :mod:`ltcls.detection.data`: the ``lvis`` dataset (LVIS v1 json, COCO 2017 images);
* :mod:`ltcls.detection.heads` / :mod:`ltcls.detection.model`: the adapter (subclasses of torchvision's
  ``RoIHeads``, ``FastRCNNPredictor``, ``MaskRCNNPredictor``, ``GeneralizedRCNNTransform``, ``MaskRCNN``);
* :mod:`ltcls.detection.evaluation`: LVIS's federated evaluation on pycocotools;
* :mod:`ltcls.detection.task`: the :class:`DetectionTask` the shared Trainer runs;
* :mod:`ltcls.detection.simcal`: SimCal calibration and dual-head inference (``--stage2 simcal``).

This file stays light (``ltcls.data`` imports :mod:`ltcls.detection.data` to register ``lvis``); the rest
is imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ltcls.data.base import DATASETS

_LAZY = {"build_detection_run": "build", "build_detector": "build", "DetectionTask": "task",
         "run_simcal": "simcal", "LTMaskRCNN": "model", "LTRoIHeads": "model", "LVISEval": "evaluation"}

__all__ = ["is_detection", *_LAZY]


def is_detection(cfg: Mapping[str, Any]) -> bool:
    """Whether a resolved config's ``data`` is a detection dataset (its builder says ``task = 'detection'``)."""
    name = cfg["data"]["name"]
    return name in DATASETS and getattr(DATASETS.get(name), "task", "classification") == "detection"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ltcls.detection.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ltcls.detection' has no attribute '{name}'")
