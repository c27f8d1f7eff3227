"""SimCal (Wang et al., ECCV 2020) for the Mask R-CNN adapter: ``ltcls-train --stage2 simcal --from RUN_DIR``.

Calibration: the trained detector is frozen (backbone, RPN, box regression, mask branch: its parameters
do not train and it stays in eval mode). A calibrated classification head, a copy of the detector's box
head (two fc layers) and classifier ("initialized with the original head", the paper's best 3fc_ft choice),
is trained with bi-level sampling: a batch draws classes uniformly (each class once per epoch,
``batch_size`` classes per
batch; 16 in the paper), then one training image containing each; of that image's proposals (RPN at
test settings plus the ground-truth boxes, matched at IoU 0.5) only those of the drawn class are kept,
with as many background proposals drawn at random (1:1).

Dual-head inference, 'sel': classes with at most ``stage2.dual_head_threshold`` (T) training
*instances* take the calibrated head's scores, the others (and background) the original head's; boxes
and masks stay the original model's. 'avg' (the Seesaw LVIS challenge report's score averaging): every
class scored ``(1 - w) * original + w * calibrated``. Evaluation reports the original, calibrated, combined
('sel') and averaged models; ``stage2.combine`` says which is the run's result.

This is a plug-in stage-2 method (declared in :mod:`ltcls.detection` with its preset); the shared stage-2
runner loads the finished run and calls :class:`SimCal`'s ``plan``.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ltcls.config import Config
from ltcls.data.base import SplitBase, sample_seed
from ltcls.detection.build import build_detection_loss
from ltcls.detection.data import LVISDataset
from ltcls.detection.evaluation import LVISGroundTruth
from ltcls.detection.heads import BoxClassification, build_box_classification
from ltcls.detection.model import LTMaskRCNN, LTRoIHeads, select_detections
from ltcls.detection.task import BBOX_KEYS, SEGM_KEYS, DetectionTask, LVISEvaluator, summary_line, write_scalars
from ltcls.engine.checkpoint import Checkpoint
from ltcls.engine.evaluation import DatasetEvaluator, EvalContext
from ltcls.engine.stage import Stage
from ltcls.engine.tasks import Task
from ltcls.models.classifiers import build_classifier
from ltcls.models.dual_head import dual_head_average, dual_head_select
from ltcls.registries import METHODS
from ltcls.results import EvalReport, Evaluation, Values
from ltcls.stage2.runner import Plan, Rows, Stage2Context, Stage2Method

log = logging.getLogger("ltcls")

MODES = ("original", "calibrated", "combined", "averaged")


def simcal_modes(threshold: int | None) -> tuple[str, ...]:
    """The models evaluated: SimCal's selection ('combined') needs T; score averaging is always reported."""
    return tuple(m for m in MODES if m != "combined" or threshold is not None)


def selected_mode(combine: str, threshold: int | None) -> str:
    """The model whose metrics are the run's top-level AP (``stage2.combine``)."""
    if combine == "avg":
        return "averaged"
    return "combined" if threshold is not None else "calibrated"


class BiLevelDataset(SplitBase):
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
            gen = torch.Generator().manual_seed(sample_seed(self.aug_seed, self.epoch, k, stream=1))
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


@dataclass
class DualScoring:
    """Each mode's scores (N, C+1) from the packed logits of both heads (the original's first ``width`` columns,
    then the calibrated head's): the original head, the calibrated head, SimCal's selection ('combined', with T)
    and score averaging ('averaged', weight ``weight`` on the calibrated head)."""

    original: BoxClassification
    calibrated: BoxClassification
    width: int
    counts: torch.Tensor
    threshold: int | None
    weight: float
    modes: tuple[str, ...]

    def __call__(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        s_orig = self.original.scores(packed[:, : self.width])
        s_cal = self.calibrated.scores(packed[:, self.width:])
        out = {"original": s_orig, "calibrated": s_cal}
        if "combined" in self.modes:
            out["combined"] = dual_head_select(s_orig, s_cal, self.counts.to(packed.device), self.threshold)
        if "averaged" in self.modes:
            out["averaged"] = dual_head_average(s_orig, s_cal, self.weight)
        return {m: out[m] for m in self.modes}


class DualHeadRoIHeads(LTRoIHeads):
    """A detector's RoI heads that score each RoI under every SimCal mode in one pass.

    torchvision's ``RoIHeads.forward`` runs once: RoI pooling, then the original box head and predictor with the
    calibrated head's logits appended (``box_head`` / ``box_predictor``), then :meth:`postprocess_detections`,
    which selects each mode's detections with torchvision's steps on that mode's scores and returns their union
    per image. A detection is a (RoI, label) pair whose box (the original box regression) and mask do not depend
    on the scores, so the mask branch runs once, on the union; :meth:`split` then gives each mode's detections
    in the order and with the scores of a pass of that mode alone."""

    scoring: DualScoring
    _rows: dict[str, list[torch.Tensor]]
    _scores: dict[str, list[torch.Tensor]]

    @classmethod
    def wrap(cls, heads: LTRoIHeads, calibrated: CalibratedHead, scoring: DualScoring) -> DualHeadRoIHeads:
        """``heads``' modules, matcher and test settings (shared, not copied), in eval mode."""
        out = cls.from_roi_heads(heads, heads.box_classification)
        out.box_head = _DualBoxHead(heads.box_head, calibrated)
        out.box_predictor = _DualBoxPredictor(heads.box_predictor)
        out.scoring = scoring
        out.training = False
        return out

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        per_mode = {mode: select_detections(self.box_coder, scores, box_regression, proposals, image_shapes,
                                            self.score_thresh, self.nms_thresh, self.detections_per_img)
                    for mode, scores in self.scoring(class_logits).items()}
        labels_per_roi = class_logits.shape[1] + 1
        boxes, labels = [], []
        self._rows = {m: [] for m in per_mode}
        self._scores = {m: sel[1] for m, sel in per_mode.items()}
        for i in range(len(proposals)):
            parts = [(sel[0][i], sel[2][i], sel[3][i]) for sel in per_mode.values()]
            keys = torch.cat([rois * labels_per_roi + lab for _, lab, rois in parts])
            unique, inverse = torch.unique(keys, return_inverse=True)
            first = torch.empty(len(unique), dtype=torch.long, device=keys.device)
            first.scatter_(0, inverse, torch.arange(len(keys), device=keys.device))  # a row of each (RoI, label)
            boxes.append(torch.cat([b for b, _, _ in parts])[first])
            labels.append(torch.cat([lab for _, lab, _ in parts])[first])
            for mode, rows in zip(per_mode, inverse.split([len(lab) for _, lab, _ in parts])):
                self._rows[mode].append(rows)
        return boxes, [torch.zeros(len(b), device=b.device) for b in boxes], labels

    def split(self, union: list[dict[str, torch.Tensor]]) -> dict[str, list[dict[str, torch.Tensor]]]:
        """Each mode's detections (boxes, labels, scores, masks) from the union's, image by image."""
        return {mode: [{**{k: v[r] for k, v in image.items()}, "scores": s}
                       for image, r, s in zip(union, self._rows[mode], self._scores[mode])]
                for mode in self._rows}


class SimCalModel(nn.Module):
    """The frozen detector (``detector``) and the calibrated head (``head``).

    Training forward: the calibration loss dict on bi-level-sampled proposals. Eval forward: ``{mode:
    detections}`` for each of :func:`simcal_modes` (``original``, ``calibrated``, ``combined`` with threshold T,
    ``averaged`` with the calibrated head's weight ``weight``), all from one pass of the detector
    (:meth:`detect`).
    """

    def __init__(self, detector: LTMaskRCNN, head: CalibratedHead, instance_counts: np.ndarray,
                 threshold: int | None, weight: float = 0.5) -> None:
        super().__init__()
        self.detector = detector
        self.head = head
        background = np.iinfo(np.int64).max  # background always takes the original head's score
        self.register_buffer("counts", torch.as_tensor(np.concatenate([[background], instance_counts])),
                             persistent=False)
        self.threshold, self.weight = threshold, weight
        self.modes = simcal_modes(threshold)
        for p in detector.parameters():
            p.requires_grad_(False)

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None):
        if self.training:
            return self.calibration_losses(images, targets)
        return self.detect(images)

    def scoring(self) -> DualScoring:
        original = self.detector.roi_heads.box_classification
        return DualScoring(original, self.head.box_classification, original.packed_width, self.counts,
                           self.threshold, self.weight, self.modes)

    def detect(self, images: list[torch.Tensor]) -> dict[str, list[dict[str, torch.Tensor]]]:
        """Every mode's detections from one pass: the backbone, the RPN, the box head of both heads and the mask
        branch (on the union of the modes' detections) run once per image (torchvision's ``GeneralizedRCNN``
        steps, with :class:`DualHeadRoIHeads`)."""
        det = self.detector
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        image_list, _ = det.transform(list(images))
        features = det.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = det.rpn(image_list, features)
        heads = DualHeadRoIHeads.wrap(det.roi_heads, self.head, self.scoring())
        union, _ = heads(features, proposals, image_list.image_sizes)
        return heads.split(det.transform.postprocess(union, image_list.image_sizes, sizes))

    def calibration_losses(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None
                           ) -> dict[str, torch.Tensor]:
        """Proposals of the frozen detector, the drawn class's and as many background ones per image, classified
        by the calibrated head."""
        if targets is None:
            raise ValueError("SimCal calibration needs targets")
        det = self.detector
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


class SimCalEvaluator(DatasetEvaluator):
    """One LVIS evaluator per model (original, calibrated, combined, averaged), sharing the split's ground-truth
    index, with shards in ``shard_dir/<mode>`` (default: temporary folders); the report's headline AP keys are the
    ``selected`` model's, each model's metrics under its name."""

    def __init__(self, dataset: Any, modes: tuple[str, ...], selected: str, mask_threshold: float,
                 max_dets: int, threshold: int | None, weight: float, shard_dir: str | Path | None = None) -> None:
        gt = LVISGroundTruth(dataset.gt)
        self.evaluators = {m: LVISEvaluator(dataset, mask_threshold, max_dets,
                                            None if shard_dir is None else Path(shard_dir) / m, gt)
                           for m in modes}
        self.selected = selected
        self.settings = {"dual_head_threshold": threshold, "combine_weight": weight}

    def reset(self) -> None:
        for e in self.evaluators.values():
            e.reset()

    def process(self, batch: Any, outputs: dict[str, Any]) -> None:
        for mode, e in self.evaluators.items():
            e.process(batch, outputs[mode])

    def evaluate(self) -> Evaluation:
        results = {mode: e.metrics() for mode, e in self.evaluators.items()}
        selected = results[self.selected]
        values = {**{k: selected.get(k) for k in SEGM_KEYS + BBOX_KEYS}, **results, "selected": self.selected,
                  "num_images": selected["num_images"], **self.settings}
        return Evaluation(sections=(Values(values, headline=SEGM_KEYS + BBOX_KEYS),))


class SimCalTask(DetectionTask):
    """Detection evaluated as SimCal's original / calibrated / combined / averaged models in one pass over the
    split."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.threshold = cfg.stage2.dual_head_threshold
        self.weight = cfg.stage2.combine_weight
        self.selected = selected_mode(cfg.stage2.combine, self.threshold)

    def evaluator(self, dataset: Any, ctx: EvalContext) -> DatasetEvaluator:
        return SimCalEvaluator(dataset, simcal_modes(self.threshold), self.selected, self.mask_threshold,
                               self.max_dets, self.threshold, self.weight, ctx.scratch_dir)

    def report(self, report: EvalReport, ctx: EvalContext) -> None:
        values = report.to_json()
        for mode in MODES:
            if mode in values:
                log.info("simcal %s  %s", mode, summary_line(values[mode]))
        if ctx.reporter is not None:
            write_scalars(ctx.reporter, values, ctx.step)
            for mode in MODES:
                if mode in values:
                    write_scalars(ctx.reporter, values[mode], ctx.step, prefix=f"simcal/{mode}")


def simcal_model(cfg: Config, stage1_cfg: Config | None, detector: LTMaskRCNN, data: Any) -> SimCalModel:
    """The frozen detector with a calibrated head: a copy of the original box head and, where the classifier and
    its outputs are the stage-1 run's, of its classifier (SimCal: "initialized with the original head"); else a
    fresh classifier of the configured kind. ``stage1_cfg`` None: a model to load a finished run's weights into."""
    original = detector.roi_heads
    loss = build_detection_loss(cfg, data)
    box_classification = build_box_classification(cfg.loss.name, loss, data.num_classes)
    same = box_classification.classifier_outputs == original.box_classification.classifier_outputs
    if stage1_cfg is not None and cfg.classifier == stage1_cfg.classifier and same:
        classifier = copy.deepcopy(original.box_predictor.cls_score)  # SimCal: start from the original head
    else:
        if stage1_cfg is not None:
            log.info("simcal: the classifier or loss differs from stage 1; the calibrated classifier starts fresh")
        classifier = build_classifier(cfg.classifier.name, cfg.detection.box_head_dim,
                                      box_classification.classifier_outputs, **cfg.classifier.params)
        box_classification.init_classifier(classifier)
    head = CalibratedHead(copy.deepcopy(original.box_head), classifier, box_classification)
    return SimCalModel(detector, head, data.train.instance_counts, cfg.stage2.dual_head_threshold,
                       cfg.stage2.combine_weight)


@METHODS.register("simcal")
class SimCal(Stage2Method):
    """Calibrate the detector of the finished run: a calibrated head trained with bi-level sampling on the
    frozen detector; evaluation of the original, calibrated and combined models."""

    def plan(self, ctx: Stage2Context) -> Plan:
        cfg, data = ctx.cfg, ctx.data
        model = simcal_model(cfg, ctx.stage1_cfg, ctx.model, data)
        loss = model.head.box_classification.loss
        threshold = cfg.stage2.dual_head_threshold
        stage = Stage("simcal", loss, cfg.train, cfg.sampler, eval_modules=[ctx.model],
                      train_set=BiLevelDataset(data.train))

        def finish(report: EvalReport) -> tuple[EvalReport, Rows]:
            names = {"combined": f"combined sel (T = {threshold})",
                     "averaged": f"averaged (w = {cfg.stage2.combine_weight:g})"}
            values = report.to_json()
            return report, [(names.get(mode, mode), values[mode]) for mode in MODES if mode in values]

        return Plan(stage, model=model, task=SimCalTask(cfg), finish=finish,
                    title=f"{ctx.stage1_dir} -> SimCal (T = {threshold})")

    def inference_model(self, cfg: Config, stage1_model: nn.Module, data: Any, ckpt: Checkpoint) -> nn.Module:
        return simcal_model(cfg, None, stage1_model, data)

    def inference_task(self, cfg: Config, task: Task) -> Task:
        return SimCalTask(cfg)
