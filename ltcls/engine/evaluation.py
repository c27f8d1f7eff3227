"""Evaluators (detectron2's ``DatasetEvaluator`` idea: ``reset`` / ``process`` / ``evaluate``) and the one
inference loop that feeds them. A task says which evaluator a split gets; the Trainer runs the loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ltcls.engine.distributed import gather_shards, info
from ltcls.losses.logit_adjusted import logit_adjust
from ltcls.metrics import accuracy_report


@dataclass
class EvalContext:
    """What an evaluation is told by the Trainer (a task never reads the Trainer itself)."""

    class_counts: np.ndarray
    many_threshold: int = 100
    few_threshold: int = 20
    logit_adjust_tau: float = 0.0
    #: ``scores(logits)``: the stage loss's inference scores (softmax, Gumbel probabilities, ...).
    scores: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: The model being evaluated (figures read its classifier's weight norms).
    model: nn.Module | None = None
    reporter: Any = None
    step: int = 0
    epoch: int = 0
    stage: str = ""
    split: str = "test"


class DatasetEvaluator:
    """Accumulates a split's outputs batch by batch (``process``), then computes the metrics (``evaluate``).

    With N processes each sees its shard (``dataset[rank::N]``); ``evaluate`` gathers them and returns the
    same metrics on every rank."""

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, batch: Any, outputs: Any) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        raise NotImplementedError


def classification_predictions(logits: torch.Tensor, class_counts: Sequence[int], logit_adjust_tau: float = 0.0,
                               scores: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Predicted classes: argmax of the loss's inference scores, after post-hoc logit adjustment if asked."""
    if logit_adjust_tau:
        logits = logit_adjust(logits, class_counts, logit_adjust_tau)
    return (scores(logits) if scores is not None else logits).argmax(dim=1)


class ClassificationEvaluator(DatasetEvaluator):
    """Top-1 overall / many / medium / few (Kang et al.'s groups) of a split's logits."""

    def __init__(self, num_samples: int, ctx: EvalContext) -> None:
        self.num_samples = num_samples
        self.ctx = ctx
        self.reset()

    def reset(self) -> None:
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def process(self, batch: Any, outputs: torch.Tensor) -> None:
        self._logits.append(outputs.float().cpu())
        self._labels.append(batch[1])

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of the whole split, in dataset order, on every rank."""
        logits, labels = torch.cat(self._logits), torch.cat(self._labels)
        return gather_shards(logits, self.num_samples), gather_shards(labels, self.num_samples)

    def evaluate(self) -> dict[str, Any]:
        c = self.ctx
        logits, labels = self.outputs()
        preds = classification_predictions(logits, c.class_counts, c.logit_adjust_tau, c.scores)
        report = accuracy_report(preds.numpy(), labels.numpy(), c.class_counts, c.many_threshold, c.few_threshold)
        report["num_classes"] = int(len(c.class_counts))
        return report


@torch.no_grad()
def inference_on_dataset(module: nn.Module, loader: DataLoader, evaluator: DatasetEvaluator,
                         step: Callable[[nn.Module, Any], Any], desc: str = "eval", progress: bool = True
                         ) -> dict[str, Any]:
    """Run ``step(module, batch)`` (eval mode) over ``loader`` into ``evaluator``; returns its metrics."""
    was_training = module.training
    module.eval()
    evaluator.reset()
    try:
        for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
                          disable=not (progress and info().is_main)):
            evaluator.process(batch, step(module, batch))
    finally:
        module.train(was_training)
    return evaluator.evaluate()
