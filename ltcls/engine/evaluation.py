"""Evaluators (detectron2's ``DatasetEvaluator`` idea: ``reset`` / ``process`` / ``evaluate``). A task says which
evaluator a split gets; :class:`ltcls.engine.inference.InferenceRunner` feeds it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ltcls.engine.distributed import gather_shards
from ltcls.losses.logit_adjusted import logit_adjust
from ltcls.metrics import accuracy_report
from ltcls.reporting import Reporter
from ltcls.results import Evaluation


@dataclass
class EvalContext:
    """What an evaluation is told (a task never reads the Trainer itself)."""

    class_counts: np.ndarray
    many_threshold: int = 100
    few_threshold: int = 20
    logit_adjust_tau: float = 0.0
    #: ``scores(logits)``: the stage loss's inference scores (softmax, Gumbel probabilities, ...).
    scores: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: The model being evaluated (figures read its classifier's weight norms).
    model: nn.Module | None = None
    reporter: Reporter | None = None
    step: int = 0
    epoch: int = 0
    stage: str = ""
    split: str = "test"
    #: A folder for an evaluator's intermediate files that every process can reach (LVIS detections as shards);
    #: None: a temporary folder (one machine only).
    scratch_dir: Path | None = None


class DatasetEvaluator:
    """Accumulates a split's outputs batch by batch (``process``), then computes the metrics (``evaluate``).

    With N processes each sees its shard (``dataset[rank::N]``); ``evaluate`` gathers them and returns the
    same result on every rank."""

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, batch: Sequence[object], outputs: object) -> None:
        raise NotImplementedError

    def evaluate(self) -> Evaluation:
        raise NotImplementedError


class OutputsEvaluator(DatasetEvaluator):
    """Collects a split's outputs (logits, scores or features) and labels, in dataset order on every rank."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.reset()

    def reset(self) -> None:
        self._outputs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def process(self, batch: Sequence[object], outputs: torch.Tensor) -> None:
        self._outputs.append(outputs.float().cpu())
        self._labels.append(torch.as_tensor(batch[1]))

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and labels of the whole split, in dataset order, on every rank."""
        outputs, labels = torch.cat(self._outputs), torch.cat(self._labels)
        return gather_shards(outputs, self.num_samples), gather_shards(labels, self.num_samples)

    def evaluate(self) -> Evaluation:
        return Evaluation()


def classification_predictions(logits: torch.Tensor, class_counts: Sequence[int], logit_adjust_tau: float = 0.0,
                               scores: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Predicted classes: argmax of the loss's inference scores, after post-hoc logit adjustment if asked."""
    if logit_adjust_tau:
        logits = logit_adjust(logits, class_counts, logit_adjust_tau)
    return (scores(logits) if scores is not None else logits).argmax(dim=1)


class ClassificationEvaluator(OutputsEvaluator):
    """Top-1 overall / many / medium / few (Kang et al.'s groups) of a split's logits."""

    def __init__(self, num_samples: int, ctx: EvalContext) -> None:
        super().__init__(num_samples)
        self.ctx = ctx

    def evaluate(self) -> Evaluation:
        c = self.ctx
        logits, labels = self.outputs()
        preds = classification_predictions(logits, c.class_counts, c.logit_adjust_tau, c.scores)
        return Evaluation(accuracy_report(preds.numpy(), labels.numpy(), c.class_counts, c.many_threshold,
                                          c.few_threshold))
