"""SimCal (Wang et al., ECCV 2020) for the Mask R-CNN adapter: ``ltcls-train --stage2 simcal --from RUN_DIR``.

Calibration: the trained detector is frozen (backbone, RPN, box regression, mask branch: it is the
``backbone`` of :class:`SimCalModel`, so the Trainer's ``freeze_backbone`` freezes it and keeps it in
eval mode). A calibrated classification head, a copy of the detector's box head (two fc layers) and
classifier ("initialized with the original head", the paper's best 3fc_ft choice), is trained with
bi-level sampling: a batch draws classes uniformly (each class once per epoch, ``batch_size`` classes per
batch; 16 in the paper), then one training image containing each; of that image's proposals (RPN at
test settings plus the ground-truth boxes, matched at IoU 0.5) only those of the drawn class are kept,
with as many background proposals drawn at random (1:1).

Dual-head inference ('sel'): classes with at most ``stage2.dual_head_threshold`` (T) training
*instances* take the calibrated head's scores, the others (and background) the original head's; boxes
and masks stay the original model's. Evaluation reports the original, calibrated and combined models.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ltcls.detection.build import build_detection_data, build_detection_loss, build_detector
from ltcls.detection.data import LVISDataset
from ltcls.detection.heads import BoxClassification, build_box_classification
from ltcls.detection.model import LTMaskRCNN
from ltcls.detection.task import BBOX_KEYS, SEGM_KEYS, DetectionTask, summary_line, write_scalars
from ltcls.inference import dual_head_select
from ltcls.models import build_classifier

log = logging.getLogger("ltcls")

#: Overrides SimCal applies to the stage-1 config (then ``--set``): the paper's calibration schedule,
#: 12k steps of 16 classes with lr 0.01 decayed at 8k and 11k, expressed in epochs of LVIS v1's 1203
#: classes (75 steps per epoch); dual-head threshold T = 300 training instances.
PRESET: dict[str, dict[str, Any]] = {
    "sampler": {"name": "instance"},
    "train": {"epochs": 160, "batch_size": 16, "lr": 0.01, "schedule": "step", "milestones": [107, 147],
              "warmup_epochs": 0},
    "stage2": {"dual_head_threshold": 300},
}
MODES = ("original", "calibrated", "combined")


def simcal_base_config(stage1_cfg: Mapping[str, Any], stage1_dir: Path, method: str = "simcal") -> dict[str, Any]:
    """The stage-1 config with SimCal's preset (to be resolved with the user's ``--set``); SimCal is the
    second stage of detection runs, and only of them."""
    from ltcls.config import ConfigError
    from ltcls.detection import is_detection

    if not is_detection(stage1_cfg):
        raise ConfigError(f"--stage2 simcal calibrates a detector; {stage1_dir} is a '{stage1_cfg['data']['name']}' "
                         "classification run (its decoupled stage 2: crt, lws, tau_norm, ncm, gumbel)")
    if method != "simcal":
        raise ConfigError(f"{stage1_dir} is a detection run: its second stage is --stage2 simcal, not {method}")
    cfg = copy.deepcopy(dict(stage1_cfg))
    for section, values in PRESET.items():
        cfg[section] = {**cfg.get(section, {}), **values} if section != "sampler" else dict(values)
    cfg["stage2"].update(method="simcal", from_run=str(stage1_dir))
    return cfg


class BiLevelDataset(Dataset):
    """Item ``k`` is one training image containing class ``classes[k]`` (0-based), drawn uniformly among them.

    With the ``instance`` sampler an epoch visits every class once in random order, so a batch holds
    ``batch_size`` classes drawn uniformly (SimCal's first level); the image is the second level. The
    target carries ``simcal_class`` (the 1-based label whose proposals are kept). The draw uses a
    generator seeded by (seed, epoch, k) after ``seed_augmentation``.
    """

    def __init__(self, dataset: LVISDataset) -> None:
        self.dataset = dataset
        images_of: list[list[int]] = [[] for _ in range(dataset.num_classes)]
        for i, labels in enumerate(dataset.image_categories):
            for c in labels:
                images_of[int(c)].append(i)
        self.classes = np.array([c for c in range(dataset.num_classes) if images_of[c]], dtype=np.int64)
        self.images_of = [np.asarray(images_of[c], dtype=np.int64) for c in self.classes]
        self.targets = np.arange(len(self.classes), dtype=np.int64)
        self.aug_seed: int | None = None
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.classes)

    def seed_augmentation(self, seed: int | None) -> None:
        self.aug_seed = seed
        self.dataset.seed_augmentation(seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, dict[str, Any]]:
        gen = None
        if self.aug_seed is not None:
            gen = torch.Generator().manual_seed(((self.aug_seed * 7_919 + self.epoch) * 1_000_003 + k) % 2**63)
        images = self.images_of[k]
        image, target = self.dataset[int(images[int(torch.randint(len(images), (1,), generator=gen))])]
        return image, {**target, "simcal_class": int(self.classes[k]) + 1}


class CalibratedHead(nn.Module):
    """A box head (fc layers) and classifier of its own, with its own loss adapter."""

    def __init__(self, box_head: nn.Module, classifier: nn.Module, box_classification: BoxClassification) -> None:
        super().__init__()
        self.box_head = box_head
        self.classifier = classifier
        self.box_classification = box_classification

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.box_classification.pack(self.classifier(self.box_head(pooled).flatten(1)))


class _DualBoxHead(nn.Module):
    def __init__(self, original: nn.Module, calibrated: CalibratedHead) -> None:
        super().__init__()
        self.original, self.calibrated = original, calibrated

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.original(pooled), self.calibrated(pooled)  # type: ignore[return-value]


class _DualBoxPredictor(nn.Module):
    """Original predictor on the original features; calibrated logits appended to its packed logits."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original = original

    def forward(self, features: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        original, calibrated = features
        logits, boxes = self.original(original)
        return torch.cat([logits, calibrated], dim=1), boxes


class _DualScoring(nn.Module):
    """Scores of the original head, the calibrated head, or SimCal's selection between them."""

    def __init__(self, original: BoxClassification, calibrated: BoxClassification, width: int, mode: str,
                 counts: torch.Tensor, threshold: int | None) -> None:
        super().__init__()
        self.original, self.calibrated = original, calibrated
        self.width, self.mode, self.counts, self.threshold = width, mode, counts, threshold

    def scores(self, packed: torch.Tensor) -> torch.Tensor:
        s_cal = self.calibrated.scores(packed[:, self.width:])
        if self.mode == "calibrated":
            return s_cal
        s_orig = self.original.scores(packed[:, : self.width])
        return dual_head_select(s_orig, s_cal, self.counts.to(packed.device), self.threshold)


class SimCalModel(nn.Module):
    """The frozen detector (``backbone``) and the calibrated head (``head``).

    Training forward: the calibration loss dict on bi-level-sampled proposals. Eval forward: detections with
    the scores of ``mode`` (``original``, ``calibrated`` or ``combined`` with threshold T).
    """

    def __init__(self, detector: LTMaskRCNN, head: CalibratedHead, instance_counts: np.ndarray,
                 threshold: int | None) -> None:
        super().__init__()
        self.backbone = detector
        self.head = head
        background = np.iinfo(np.int64).max  # background always takes the original head's score
        self.register_buffer("counts", torch.as_tensor(np.concatenate([[background], instance_counts])),
                             persistent=False)
        self.threshold = threshold
        self.mode = "combined" if threshold is not None else "calibrated"

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None):
        if self.training:
            return self.calibration_losses(images, targets)
        if self.mode == "original":
            return self.backbone(images)
        with self._dual_heads():
            return self.backbone(images)

    @contextmanager
    def _dual_heads(self) -> Iterator[None]:
        rh = self.backbone.roi_heads
        saved = rh.box_head, rh.box_predictor, rh.box_classification
        width = saved[2].packed_width
        rh.box_head = _DualBoxHead(saved[0], self.head)
        rh.box_predictor = _DualBoxPredictor(saved[1])
        rh.box_classification = _DualScoring(saved[2], self.head.box_classification, width, self.mode, self.counts,
                                             self.threshold)
        try:
            yield
        finally:
            rh.box_head, rh.box_predictor, rh.box_classification = saved

    def calibration_losses(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None
                           ) -> dict[str, torch.Tensor]:
        """Proposals of the frozen detector, the drawn class's and as many background ones per image, classified
        by the calibrated head."""
        if targets is None:
            raise ValueError("SimCal calibration needs targets")
        det = self.backbone
        rh = det.roi_heads
        with torch.no_grad():
            plain = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            image_list, plain = det.transform(list(images), plain)
            features = det.backbone(image_list.tensors)
            proposals, _ = det.rpn(image_list, features)
            gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in plain]
            proposals = rh.add_gt_proposals(proposals, gt_boxes)
            _, labels = rh.assign_targets_to_proposals(proposals, gt_boxes, [t["labels"] for t in plain])
            kept_props, kept_labels = [], []
            for props, lab, t in zip(proposals, labels, targets):
                fg = torch.where(lab == int(t["simcal_class"]))[0]
                bg = torch.where(lab == 0)[0]
                bg = bg[torch.randperm(len(bg), device=bg.device)[: len(fg)]]
                idx = torch.cat([fg, bg])
                kept_props.append(props[idx])
                kept_labels.append(lab[idx])
            pooled = rh.box_roi_pool(features, kept_props, image_list.image_sizes)
        packed = self.head(pooled)
        return self.head.box_classification.losses(packed, torch.cat(kept_labels))


class SimCalTask(DetectionTask):
    """Evaluates the original, calibrated and (with T) combined models; the report's top-level AP keys are the
    combined model's (the calibrated one's without T). The original model's metrics are computed once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._original: dict[str, Any] | None = None

    def evaluate(self, trainer, stage, step, epoch) -> dict[str, Any]:
        split, dataset = trainer.eval_split(stage)
        model: SimCalModel = trainer.model
        main_mode = model.mode
        results: dict[str, dict[str, Any]] = {}
        try:
            for mode in MODES:
                if mode == "combined" and model.threshold is None:
                    continue
                if mode == "original" and self._original is not None:
                    results[mode] = self._original
                    continue
                model.mode = mode
                results[mode] = self.predict_and_score(trainer, model, dataset, f"eval {split} ({mode})")
                log.info("simcal %s  %s", mode, summary_line(results[mode]))
        finally:
            model.mode = main_mode
        self._original = results["original"]
        report: dict[str, Any] = {k: results[main_mode].get(k) for k in SEGM_KEYS + BBOX_KEYS}
        report.update({mode: r for mode, r in results.items()})
        report.update(split=split, epoch=epoch, stage=stage.name, selected=main_mode,
                      dual_head_threshold=model.threshold, num_images=len(dataset))
        if trainer.reporter is not None:
            write_scalars(trainer.reporter, report, step)
            for mode, r in results.items():
                write_scalars(trainer.reporter, r, step, prefix=f"simcal/{mode}")
        return report


def comparison_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: segm AP / APr / APc / APf and bbox AP of each model."""
    cols = ("AP", "APr", "APc", "APf", "bbox_AP")
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join("n/a" if r.get(k) is None else f"{r[k]:.2f}" for k in cols) + " |")
    return "\n".join(lines) + "\n"


def run_simcal(cfg: Mapping[str, Any], stage1_dir: Path, work_dir: Path, reporter: Any,
               resume: bool = False) -> dict[str, Any]:
    """Calibrate the detector of the finished run ``stage1_dir`` and evaluate original / calibrated / combined."""
    from ltcls import config as C
    from ltcls.engine.build import seed_everything
    from ltcls.engine.checkpoint import load_checkpoint
    from ltcls.engine.trainer import CHECKPOINT, Stage, Trainer

    for name in ("config.yaml", CHECKPOINT, "metrics.json"):
        if not (stage1_dir / name).is_file():
            raise FileNotFoundError(f"{stage1_dir} is not a finished detection run: {name} is missing")
    stage1_cfg = C.resolve(C.load_yaml(stage1_dir / "config.yaml"), source=str(stage1_dir / "config.yaml"))
    seed_everything(cfg["train"]["seed"])
    data = build_detection_data(cfg)
    detector = build_detector(stage1_cfg, data)
    detector.load_state_dict(load_checkpoint(stage1_dir / CHECKPOINT)["model"])
    original = detector.roi_heads
    loss = build_detection_loss(cfg, data)
    box_classification = build_box_classification(cfg["loss"]["name"], loss, data.num_classes)
    if (cfg["classifier"] == stage1_cfg["classifier"]
            and box_classification.classifier_outputs == original.box_classification.classifier_outputs):
        classifier = copy.deepcopy(original.box_predictor.cls_score)  # SimCal: start from the original head
    else:
        log.info("simcal: the classifier or loss differs from stage 1; the calibrated classifier starts fresh")
        c = {k: v for k, v in cfg["classifier"].items() if k != "name"}
        classifier = build_classifier(cfg["classifier"]["name"], cfg["detection"]["box_head_dim"],
                                      box_classification.classifier_outputs, **c)
        box_classification.init_classifier(classifier)
    head = CalibratedHead(copy.deepcopy(original.box_head), classifier, box_classification)
    threshold = cfg["stage2"]["dual_head_threshold"]
    model = SimCalModel(detector, head, data.train.instance_counts, threshold)
    d = cfg["detection"]
    task = SimCalTask(mask_threshold=d["mask_threshold"], max_dets=d["detections_per_img"],
                      amp_dtype=cfg["train"]["amp_dtype"])
    trainer = Trainer(model, data, cfg, work_dir, reporter, task=task)
    stage = Stage("simcal", loss, cfg["train"], cfg["sampler"], freeze_backbone=True,
                  train_set=BiLevelDataset(data.train))
    report = trainer.fit([stage], resume=resume)
    rows = {mode: report[mode] for mode in MODES if mode in report}
    stage1 = json.loads((stage1_dir / "metrics.json").read_text())
    table = comparison_table({"stage 1 (its metrics.json)": stage1, **rows})
    if trainer.dist.is_main:
        (work_dir / "comparison.md").write_text(
            f"# {stage1_dir} -> SimCal (T = {threshold})\n\nLVIS AP (%) on the {report['split']} split\n\n" + table)
    log.info("SimCal:\n%s", table)
    return report
