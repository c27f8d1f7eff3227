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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ltcls.config import Config
from ltcls.data.base import SplitBase, sample_seed
from ltcls.detection.build import build_detection_loss
from ltcls.detection.data import LVISDataset
from ltcls.detection.heads import BoxClassification, build_box_classification
from ltcls.detection.model import LTMaskRCNN
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


class _DualScoring(nn.Module):
    """Scores of the original head, the calibrated head, or SimCal's selection between them."""

    def __init__(self, original: BoxClassification, calibrated: BoxClassification, width: int, mode: str,
                 counts: torch.Tensor, threshold: int | None, weight: float) -> None:
        super().__init__()
        self.original, self.calibrated = original, calibrated
        self.width, self.mode, self.counts, self.threshold, self.weight = width, mode, counts, threshold, weight

    def scores(self, packed: torch.Tensor) -> torch.Tensor:
        s_cal = self.calibrated.scores(packed[:, self.width:])
        if self.mode == "calibrated":
            return s_cal
        s_orig = self.original.scores(packed[:, : self.width])
        if self.mode == "averaged":
            return dual_head_average(s_orig, s_cal, self.weight)
        return dual_head_select(s_orig, s_cal, self.counts.to(packed.device), self.threshold)


class SimCalModel(nn.Module):
    """The frozen detector (``detector``) and the calibrated head (``head``).

    Training forward: the calibration loss dict on bi-level-sampled proposals. Eval forward: ``{mode:
    detections}`` for each of :func:`simcal_modes` (``original``, ``calibrated``, ``combined`` with threshold T,
    ``averaged`` with the calibrated head's weight ``weight``).
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
        self.mode = self.modes[-1]
        for p in detector.parameters():
            p.requires_grad_(False)

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None):
        if self.training:
            return self.calibration_losses(images, targets)
        out = {}
        for mode in self.modes:
            self.mode = mode
            if mode == "original":
                out[mode] = self.detector(images)
                continue
            with self._dual_heads():
                out[mode] = self.detector(images)
        self.mode = self.modes[-1]
        return out

    @contextmanager
    def _dual_heads(self) -> Iterator[None]:
        rh = self.detector.roi_heads
        saved = rh.box_head, rh.box_predictor, rh.box_classification
        width = saved[2].packed_width
        rh.box_head = _DualBoxHead(saved[0], self.head)
        rh.box_predictor = _DualBoxPredictor(saved[1])
        rh.box_classification = _DualScoring(saved[2], self.head.box_classification, width, self.mode, self.counts,
                                             self.threshold, self.weight)
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
    """One LVIS evaluator per model (original, calibrated, combined, averaged); the report's headline AP keys
    are the ``selected`` model's, each model's metrics under its name."""

    def __init__(self, dataset: Any, modes: tuple[str, ...], selected: str, mask_threshold: float,
                 max_dets: int, threshold: int | None, weight: float) -> None:
        self.evaluators = {m: LVISEvaluator(dataset, mask_threshold, max_dets) for m in modes}
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
                               self.max_dets, self.threshold, self.weight)

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
