"""The detection task: how the shared Trainer builds, batches, trains and evaluates Mask R-CNN on LVIS."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from ltcls.config import Config
from ltcls.data.base import DataSplits
from ltcls.detection.build import build_detection_data, build_detection_loss, build_detector
from ltcls.detection.evaluation import METRICS, encode_detections, federated_subset, lvis_evaluate_all
from ltcls.detection.model import LTMaskRCNN, compact_masks
from ltcls.engine.distributed import broadcast_object, gather_objects, info
from ltcls.engine.evaluation import DatasetEvaluator, EvalContext
from ltcls.engine.loops import autocast
from ltcls.engine.tasks import Run, StepOutput, Task, seed_everything
from ltcls.losses.base import LTLoss
from ltcls.registries import TASKS
from ltcls.reporting import Reporter
from ltcls.results import EvalReport, Evaluation, Values

log = logging.getLogger("ltcls")

#: Report keys: mask (segm) metrics under the plain names (LVIS's headline is mask AP), box metrics prefixed.
SEGM_KEYS = METRICS
BBOX_KEYS = tuple(f"bbox_{k}" for k in METRICS)


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[tuple[torch.Tensor, ...], tuple[dict, ...]]:
    """A list of (image, target) -> (images, targets): images of different sizes stay a list."""
    return tuple(zip(*batch))  # type: ignore[return-value]


def to_device(target: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


class LVISEvaluator(DatasetEvaluator):
    """LVIS bbox and segm AP (``SEGM_KEYS`` + ``BBOX_KEYS``) of a split's detections.

    Detections are RLE-encoded image by image (``process``), so memory holds only what is kept; with N
    processes rank 0 gathers the results, evaluates and broadcasts the metrics."""

    def __init__(self, dataset: Any, mask_threshold: float = 0.5, max_dets: int = 300) -> None:
        self.facts = {"num_images": len(dataset), "num_classes": int(dataset.num_classes),
                      "frequency_groups": {f: dataset.frequency.count(f) for f in ("r", "c", "f")}}
        self.gt = dataset.gt
        self.cat_ids = dataset.cat_ids
        self.mask_threshold = mask_threshold
        self.max_dets = max_dets
        self.reset()

    def reset(self) -> None:
        self.bbox: list[dict[str, Any]] = []
        self.segm: list[dict[str, Any]] = []
        self.img_ids: list[int] = []

    def process(self, batch: Any, outputs: list[dict[str, torch.Tensor]]) -> None:
        images, targets = batch
        for out, target, image in zip(outputs, targets, images):
            b, s = encode_detections(out, int(target["image_id"]), tuple(image.shape[-2:]), self.cat_ids,
                                     self.mask_threshold)
            self.bbox += b
            self.segm += s
            self.img_ids.append(int(target["image_id"]))

    def evaluate(self) -> Evaluation:
        """Each rank keeps only the detections LVIS evaluation uses (its images' top ``max_dets``, the federated
        filter) before rank 0 gathers them, evaluates bbox and segm in one pass and broadcasts the metrics."""
        return Evaluation(sections=(lvis_section(self.metrics()),))

    def metrics(self) -> dict[str, object]:
        """The LVIS metrics (segm keys, ``bbox_`` keys), the number of detections and the split's facts."""
        local_ids, local_count = self.img_ids, len(self.bbox)
        kept = {t: federated_subset(self.gt, r, t, self.max_dets, local_ids)
                for t, r in (("segm", self.segm), ("bbox", self.bbox))}
        self.reset()  # the unfiltered lists are no longer needed
        gathered = {t: gather_objects(r) for t, r in kept.items()}
        img_ids = gather_objects(local_ids)
        num_detections = sum(gather_objects([local_count]) or [0])
        out: dict[str, Any] = {}
        if info().is_main:
            metrics = lvis_evaluate_all(self.gt, gathered, self.max_dets, img_ids)
            out.update(metrics["segm"])
            out.update({f"bbox_{k}": v for k, v in metrics["bbox"].items()})
            out["num_detections"] = num_detections
        return {**broadcast_object(out), **self.facts}


@TASKS.register("detection")
class DetectionTask(Task):
    """Mask R-CNN: ``loss = sum(model(images, targets).values())``, each part logged; LVIS bbox / segm AP.

    ``report`` writes ``det/AP``, ``det/APr``, ... (mask) and ``det/bbox_AP``, ... (box) to TensorBoard."""

    collate_fn = staticmethod(collate)
    summary_keys = SEGM_KEYS + BBOX_KEYS
    comparison_keys = ("AP", "APr", "APc", "APf", "bbox_AP")
    metric_title = "LVIS AP (%)"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.mask_threshold = cfg.detection.mask_threshold
        self.max_dets = cfg.detection.detections_per_img

    def build_data(self, cfg: Config) -> DataSplits:
        return build_detection_data(cfg)

    def build_model(self, cfg: Config, data: DataSplits) -> LTMaskRCNN:
        return build_detector(cfg, data)

    def build(self, cfg: Config, init_weights: bool = True) -> Run:
        """Seed, then the LVIS splits, the detector and its loss (the same object the RoI heads use).
        (``init_weights``: see :meth:`Task.build`; the detector has no text-initialized head.)"""
        if cfg.classifier.get("init", "default") != "default":
            raise ValueError(f"classifier.init: {cfg.classifier.init} applies to classification runs; detection heads "
                             "start from their default initialization")
        seed_everything(cfg.train.seed)
        data = self.build_data(cfg)
        model = self.build_model(cfg, data)
        return Run(data, model, model.box_classification.loss)

    def describe_data(self, cfg: Config, data: DataSplits) -> str:
        return (f"data {cfg.data.name}: {data.num_classes} categories, {len(data.train)} train images, "
                f"{len(data.get(cfg.eval.split))} {cfg.eval.split} images")

    def train_step(self, module: nn.Module, batch: Any, loss_fn: LTLoss, device: torch.device, amp: bool
                   ) -> StepOutput:
        """The loss dict of the detector (``loss_fn`` lives inside its RoI heads), summed; parts kept for logs."""
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [to_device(t, device) for t in targets]
        with autocast(device, amp, self.amp_dtype):
            losses = module(images, targets)
        return StepOutput(sum(losses.values()), len(images), {k: v.detach() for k, v in losses.items()})

    def inference_step(self, module: nn.Module, batch: Any, device: torch.device, amp: bool) -> Any:
        with autocast(device, amp, self.amp_dtype):
            return module([im.to(device, non_blocking=True) for im in batch[0]])

    def inference_context(self, module: nn.Module) -> AbstractContextManager:
        return compact_masks(module)

    def evaluator(self, dataset: Any, ctx: EvalContext) -> DatasetEvaluator:
        return LVISEvaluator(dataset, self.mask_threshold, self.max_dets)

    def build_loss(self, cfg: Config, data: DataSplits) -> LTLoss:
        return build_detection_loss(cfg, data)

    def report(self, report: EvalReport, ctx: EvalContext) -> None:
        metrics = report.metrics()
        log.info("%s epoch %d  %s  %s", ctx.stage, ctx.epoch, ctx.split, summary_line(metrics))
        if ctx.reporter is not None:
            write_scalars(ctx.reporter, metrics, ctx.step)


def lvis_section(metrics: Mapping[str, object]) -> Values:
    """LVIS metrics as a report section: the segm and ``bbox_`` keys are its headline metrics."""
    return Values(dict(metrics), headline=SEGM_KEYS + BBOX_KEYS)


def write_scalars(reporter: Reporter, report: Mapping[str, Any], step: int, prefix: str = "det") -> None:
    for key in SEGM_KEYS + BBOX_KEYS:
        if report.get(key) is not None:
            reporter.scalar(f"{prefix}/{key}", report[key], step)


def summary_line(report: Mapping[str, Any]) -> str:
    """``segm AP x (APr / APc / APf)  bbox AP y`` with n/a for groups without ground truth."""
    def f(k: str) -> str:
        v = report.get(k)
        return "n/a" if v is None else f"{v:.2f}"

    return (f"segm AP {f('AP')} (APr {f('APr')} / APc {f('APc')} / APf {f('APf')})  "
            f"bbox AP {f('bbox_AP')} (APr {f('bbox_APr')} / APc {f('bbox_APc')} / APf {f('bbox_APf')})")
