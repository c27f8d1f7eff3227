"""The detection task: how the shared Trainer builds, batches, trains and evaluates Mask R-CNN on LVIS."""

from __future__ import annotations

import logging
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn
from torchvision.models.detection.roi_heads import paste_masks_in_image

from ltcls.config import Config
from ltcls.data.base import DataSplits
from ltcls.detection.build import build_detection_data, build_detection_loss, build_detector
from ltcls.detection.evaluation import METRICS, LVISGroundTruth, lvis_evaluate_all
from ltcls.detection.model import LTMaskRCNN, compact_masks
from ltcls.detection.results import Detections, Masks, Shards, ShardWriter
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


def encode_detections(output: Mapping[str, torch.Tensor], image_id: int, image_size: tuple[int, int],
                      cat_ids: Sequence[int] | np.ndarray, mask_threshold: float = 0.5, rows: np.ndarray | None = None,
                      chunk: int = 32) -> Detections:
    """One image's detections (rows ``rows`` of the model's output, default all) as LVIS result columns: boxes
    x, y, w, h, scores, category ids and masks pasted ``chunk`` at a time and RLE-encoded, so at most ``chunk``
    full-image masks exist at once (torchvision pastes all 300 as float tensors); masks of rows not asked for are
    never pasted."""
    labels = output["labels"].detach().cpu()
    index = torch.arange(len(labels)) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    boxes = output["boxes"].detach().float().cpu()[index]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).numpy().astype(np.float64)
    cats = np.asarray(cat_ids, dtype=np.int64)[labels[index].numpy() - 1]
    scores = output["scores"].detach().float().cpu()[index].numpy().astype(np.float64)
    probs = output.get("mask_probs")
    if probs is None and "masks" in output:  # torchvision's full-image masks
        probs = output["masks"]
    dets = Detections(np.full(len(cats), image_id, dtype=np.int64), cats, scores, xywh.reshape(-1, 4))
    if probs is None:
        return dets
    probs = probs.detach().float().cpu()[index]
    h, w = image_size
    rles = []
    for start in range(0, len(boxes), chunk):
        p = probs[start:start + chunk]
        if p.shape[-2:] != (h, w):
            p = paste_masks_in_image(p, boxes[start:start + chunk], (h, w), padding=1)
        binary = (p[:, 0] > mask_threshold).numpy().astype(np.uint8)
        rles += mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    dets.masks = Masks.from_rles(rles)
    return dets


class LVISEvaluator(DatasetEvaluator):
    """LVIS bbox and segm AP (``SEGM_KEYS`` + ``BBOX_KEYS``) of a split's detections, in bounded memory.

    ``process`` keeps the detections of an image that LVIS evaluation can use (its top ``max_dets``, then the
    federated filter: about half on LVIS-shaped data; only their masks are pasted and RLE-encoded) and writes them
    to ``.npz`` shards (:class:`~ltcls.detection.results.ShardWriter`) in ``shard_dir``, by default a temporary
    folder removed after the evaluation. ``evaluate`` has rank 0 read every rank's shards a chunk at a time and
    evaluate bbox and segm (:func:`~ltcls.detection.evaluation.lvis_evaluate_all`); the metrics are broadcast and
    each rank removes its shards. Nothing is gathered in memory. With processes on several machines, ``shard_dir``
    must be a folder they share (the run directory). ``gt``: the split's index, when already built."""

    def __init__(self, dataset: Any, mask_threshold: float = 0.5, max_dets: int = 300,
                 shard_dir: str | Path | None = None, gt: LVISGroundTruth | None = None) -> None:
        self.facts = {"num_images": len(dataset), "num_classes": int(dataset.num_classes),
                      "frequency_groups": {f: dataset.frequency.count(f) for f in ("r", "c", "f")}}
        self.gt = gt if gt is not None else LVISGroundTruth(dataset.gt)
        self.cat_ids = np.asarray(dataset.cat_ids, dtype=np.int64)
        self.mask_threshold = mask_threshold
        self.max_dets = max_dets
        self.shard_dir = None if shard_dir is None else Path(shard_dir)
        self._writer: ShardWriter | None = None
        self.num_detections = 0

    def reset(self) -> None:
        """Remove this rank's shards, if any, and start again."""
        if self._writer is not None:
            self._writer.discard()
        self._writer, self.num_detections = None, 0

    def writer(self) -> ShardWriter:
        if self._writer is None:
            temporary = self.shard_dir is None
            folder = Path(tempfile.mkdtemp(prefix="ltcls_lvis_")) if temporary else self.shard_dir
            self._writer = ShardWriter(folder, prefix=f"rank{info().rank:03d}", owns_folder=temporary)
            weakref.finalize(self, self._writer.discard)  # an evaluation that fails leaves no temporary shards
        return self._writer

    def process(self, batch: Any, outputs: list[dict[str, torch.Tensor]]) -> None:
        images, targets = batch
        for out, target, image in zip(outputs, targets, images):
            image_id = int(target["image_id"])
            cats = self.cat_ids[out["labels"].detach().cpu().numpy() - 1]
            scores = out["scores"].detach().float().cpu().numpy().astype(np.float64)
            rows = np.flatnonzero(self.gt.kept(np.full(len(cats), image_id), cats, scores, self.max_dets))
            dets = encode_detections(out, image_id, tuple(image.shape[-2:]), self.cat_ids, self.mask_threshold, rows)
            self.writer().add(dets, [image_id])
            self.num_detections += len(cats)

    def evaluate(self) -> Evaluation:
        """Rank 0 evaluates every rank's shards (bbox and segm, one after the other) and broadcasts the metrics."""
        return Evaluation(sections=(lvis_section(self.metrics()),))

    def metrics(self) -> dict[str, object]:
        """The LVIS metrics (segm keys, ``bbox_`` keys), the number of detections and the split's facts."""
        try:
            paths = gather_objects([str(p) for p in self.writer().close()])
            num_detections = sum(gather_objects([self.num_detections]) or [0])
            out: dict[str, float | int | None] = {}
            if info().is_main:
                shards = Shards(tuple(Path(p) for p in paths))
                metrics = lvis_evaluate_all(self.gt, {"segm": shards, "bbox": shards}, self.max_dets,
                                            shards.image_ids())
                out.update(metrics["segm"])
                out.update({f"bbox_{k}": v for k, v in metrics["bbox"].items()})
                out["num_detections"] = num_detections
            out = broadcast_object(out)  # also: every rank waits here until rank 0 has read the shards
        finally:
            self.reset()
        return {**out, **self.facts}


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
        return LVISEvaluator(dataset, self.mask_threshold, self.max_dets, ctx.scratch_dir)

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
