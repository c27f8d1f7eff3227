"""What differs between tasks that share the Trainer: how a batch becomes a loss, how a stage is
evaluated, and how samples are batched. Classification is the default task; the detection adapter
provides another with the same three members."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ltcls.engine.loops import autocast
from ltcls.losses import LTLoss
from ltcls.losses.logit_adjusted import logit_adjust
from ltcls.metrics import GROUPS, accuracy_report

if TYPE_CHECKING:
    from ltcls.engine.trainer import Stage, Trainer

log = logging.getLogger("ltcls")

#: ``step(module, batch) -> (loss, number of samples)``
StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, int]]


class ClassificationTask:
    """Images and integer labels; ``loss(module(images), labels)``; top-1 overall / many / medium / few."""

    collate_fn = None
    #: Report keys kept in the run's evaluation history.
    summary_keys = ("overall", *GROUPS)

    def __init__(self, amp_dtype: str = "float16", channels_last: bool = False) -> None:
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last

    def train_step(self, loss_fn: LTLoss, device: torch.device, amp: bool) -> StepFn:
        memory_format = torch.channels_last if self.channels_last and device.type == "cuda" else None

        def step(module: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
            images, labels = batch
            images = images.to(device, non_blocking=True)
            if memory_format is not None and images.ndim == 4:
                images = images.contiguous(memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, amp, self.amp_dtype):
                return loss_fn(module(images), labels), labels.shape[0]

        return step

    def evaluate(self, trainer: Trainer, stage: Stage, step: int, epoch: int) -> dict[str, Any]:
        """Top-1 on the eval split, logged and written to TensorBoard (the Trainer writes metrics.json)."""
        e = trainer.cfg["eval"]
        split, dataset = trainer.eval_split(stage)
        logits, labels = trainer.predict_dataset(trainer.module(stage), dataset, desc=f"eval {split}")
        preds = self.predictions(trainer, stage.loss, logits)
        report = accuracy_report(preds.numpy(), labels.numpy(), trainer.class_counts, e["many_threshold"],
                                 e["few_threshold"])
        report.update(split=split, epoch=epoch, stage=stage.name, num_classes=int(len(trainer.class_counts)))
        log.info("%s epoch %d  %s top-1 %s", stage.name, epoch, split,
                 "  ".join(f"{k} {_fmt(report[k])}" for k in ("overall", *GROUPS)))
        if trainer.reporter is not None:
            trainer.reporter.evaluation(report, step, classifier=getattr(trainer.model, "classifier", None),
                                        many_threshold=e["many_threshold"], few_threshold=e["few_threshold"])
        return report

    @staticmethod
    def predictions(trainer: Trainer, loss: LTLoss, logits: torch.Tensor) -> torch.Tensor:
        """Predicted classes: argmax of the loss's inference scores, after post-hoc logit adjustment if asked."""
        tau = trainer.cfg["eval"]["logit_adjust_tau"]
        if tau:
            logits = logit_adjust(logits, trainer.class_counts, tau)
        return loss.scores(logits).argmax(dim=1)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
