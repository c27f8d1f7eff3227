"""The detection task: how the shared Trainer batches, trains and evaluates Mask R-CNN on LVIS."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Subset

from ltcls.detection.evaluation import METRICS, lvis_evaluate, predict_lvis
from ltcls.engine.loops import autocast
from ltcls.losses import LTLoss

if TYPE_CHECKING:
    from ltcls.engine.trainer import Stage, Trainer

log = logging.getLogger("ltcls")

#: Report keys: mask (segm) metrics under the plain names (LVIS's headline is mask AP), box metrics prefixed.
SEGM_KEYS = METRICS
BBOX_KEYS = tuple(f"bbox_{k}" for k in METRICS)


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[tuple[torch.Tensor, ...], tuple[dict, ...]]:
    """A list of (image, target) -> (images, targets): images of different sizes stay a list."""
    return tuple(zip(*batch))  # type: ignore[return-value]


def to_device(target: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


class DetectionTask:
    """Mask R-CNN: ``loss = sum(model(images, targets).values())``; LVIS bbox / segm AP for evaluation.

    ``evaluate`` writes ``det/AP``, ``det/APr``, ... (mask) and ``det/bbox_AP``, ... (box) to TensorBoard and
    returns them with ``split``, ``epoch`` and ``stage`` (the Trainer writes metrics.json).
    """

    collate_fn = staticmethod(collate)
    summary_keys = SEGM_KEYS + BBOX_KEYS

    def __init__(self, mask_threshold: float = 0.5, max_dets: int = 300, amp_dtype: str = "float16") -> None:
        self.mask_threshold = mask_threshold
        self.max_dets = max_dets
        self.amp_dtype = amp_dtype

    def train_step(self, loss_fn: LTLoss, device: torch.device, amp: bool):
        """``step(model, batch) -> (summed loss dict, images)``; ``loss_fn`` lives inside the model's RoI heads."""

        def step(module: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
            images, targets = batch
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [to_device(t, device) for t in targets]
            with autocast(device, amp, self.amp_dtype):
                losses = module(images, targets)
            return sum(losses.values()), len(images)

        return step

    def predict_and_score(self, trainer: Trainer, module: nn.Module, dataset: Any, desc: str) -> dict[str, Any]:
        """LVIS bbox and segm metrics of ``module`` on ``dataset`` (``SEGM_KEYS`` + ``BBOX_KEYS``).

        With N processes each predicts the shard ``dataset[rank::N]``; rank 0 gathers the (RLE-encoded)
        results, evaluates and broadcasts the metrics."""
        d = trainer.dist
        shard = Subset(dataset, range(d.rank, len(dataset), d.world_size)) if d.enabled else dataset
        loader = trainer._loader(shard, trainer.cfg["eval"]["batch_size"])
        bbox, segm, img_ids = predict_lvis(module, loader, trainer.device, dataset.cat_ids, self.mask_threshold,
                                           amp=trainer.cfg["train"]["amp"], amp_dtype=self.amp_dtype, desc=desc,
                                           progress=d.is_main)
        if d.enabled:
            parts: list[Any] = [None] * d.world_size if d.is_main else None
            dist.gather_object((bbox, segm, img_ids), parts, dst=0)
            if d.is_main:
                bbox, segm, img_ids = ([x for p in parts for x in p[i]] for i in range(3))
        out: dict[str, Any] = {}
        if d.is_main:
            out.update(lvis_evaluate(dataset.gt, segm, "segm", self.max_dets, img_ids))
            bbox_metrics = lvis_evaluate(dataset.gt, bbox, "bbox", self.max_dets, img_ids)
            out.update({f"bbox_{k}": v for k, v in bbox_metrics.items()})
            out["num_detections"] = len(bbox)
        if d.enabled:
            box = [out]
            dist.broadcast_object_list(box, src=0)
            out = box[0]
        return out

    def evaluate(self, trainer: Trainer, stage: Stage, step: int, epoch: int) -> dict[str, Any]:
        split, dataset = trainer.eval_split(stage)
        report = self.predict_and_score(trainer, trainer.module(stage), dataset, f"eval {split}")
        report.update(split=split, epoch=epoch, stage=stage.name, num_images=len(dataset),
                      num_classes=int(dataset.num_classes),
                      frequency_groups={f: dataset.frequency.count(f) for f in ("r", "c", "f")})
        log.info("%s epoch %d  %s  %s", stage.name, epoch, split, summary_line(report))
        if trainer.reporter is not None:
            write_scalars(trainer.reporter, report, step)
        return report


def write_scalars(reporter: Any, report: Mapping[str, Any], step: int, prefix: str = "det") -> None:
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
