"""Long-tailed instance segmentation, a plug-in: torchvision's Mask R-CNN on LVIS with ltcls's losses and
classifiers.

* :mod:`ltcls.detection.data`: the ``lvis`` dataset (LVIS v1 json, COCO 2017 images);
* :mod:`ltcls.detection.heads` / :mod:`ltcls.detection.model`: the adapter (subclasses of torchvision's
  ``RoIHeads``, ``FastRCNNPredictor``, ``MaskRCNNPredictor``, ``GeneralizedRCNNTransform``, ``MaskRCNN``);
* :mod:`ltcls.detection.evaluation`: LVIS's federated evaluation;
* :mod:`ltcls.detection.task`: the ``detection`` task the shared Trainer runs;
* :mod:`ltcls.detection.simcal`: SimCal calibration and dual-head inference (``--stage2 simcal``).

Importing this package declares the plug-in's names (the ``detection`` config section, the ``lvis`` dataset, the
``detection`` task, the ``simcal`` stage-2 method) in :mod:`ltcls.registries`, without importing torch;
:mod:`ltcls.plugins` lists it.
"""

from __future__ import annotations

from ltcls.registries import CONFIG_SECTIONS, DATASETS, METHODS, TASKS

CONFIG_SECTIONS.declare("detection", "ltcls.detection.config", task="detection")
# Of the image transforms' keys, Mask R-CNN uses only the flip probability and the normalization (it resizes in
# its own transform: detection.min_size / max_size); the others would be ignored, so lvis does not take them.
DATASETS.declare("lvis", "ltcls.detection.data", task="detection", common_keys=("hflip", "mean", "std"))
TASKS.declare("detection", "ltcls.detection.task")
METHODS.declare(
    "simcal", "ltcls.detection.simcal", task="detection",
    summary="detection (lvis) runs: SimCal calibration of the box classifier with bi-level sampling on the frozen "
            "Mask R-CNN, dual-head evaluation (T = stage2.dual_head_threshold, 300)",
    # The paper's calibration schedule, 12k steps of 16 classes with lr 0.01 decayed at 8k and 11k, expressed in
    # epochs of LVIS v1's 1203 classes (75 steps per epoch); dual-head threshold T = 300 training instances.
    preset={"sampler": {"name": "instance"},
            "train": {"epochs": 160, "batch_size": 16, "lr": 0.01, "schedule": "step", "milestones": [107, 147],
                      "warmup_epochs": 0},
            "stage2": {"dual_head_threshold": 300}})
